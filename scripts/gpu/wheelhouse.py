"""The wheelhouse the lent GPU machine installs (it has no network): build it here, use it there.

    python scripts/gpu/wheelhouse.py build [--dest .whl] [--python-version 3.12]   # `make gpu-wheels`
    python scripts/gpu/wheelhouse.py select .whl     # there: the wheels to install (gpu_check.sh)
    python scripts/gpu/wheelhouse.py imports         # there: import what the check needs, print versions

`build` downloads the pinned wheels of wheelhouse.txt for CPython <version> manylinux x86-64,
builds the sdist-only ones and tokalign itself here (pure Python wheels), stamps the wheelhouse
with a hash of the tree's tokalign sources (so a run never measures a stale wheel) and prints
the total size; over 60 MiB it fails, since only 64 MiB travel with a command. `build` runs
under the project's environment (DeepSpeed's setup.py imports torch); `select` and `imports`
under the image's Python, with nothing but the standard library before the wheels are in.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import re
import subprocess
import sys
import tempfile
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
PINS = HERE / "wheelhouse.txt"
LIMIT_MIB = 60
STAMP = "SOURCE"
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64", "any")
# What the check imports, in the order a failure is most telling; tokalign last (it imports the rest).
MODULES = (
    "torch",
    "transformers",
    "accelerate",
    "peft",
    "tokenizers",
    "safetensors",
    "datasets",
    "trl",
    "omegaconf",
    "hydra",
    "deepspeed",
    "wandb",
    "math_verify",
    "tokalign",
    "tokalign.cli",
)


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pins() -> list[tuple[str, str, set[str]]]:
    """(name, version, flags) of every line of wheelhouse.txt."""
    rows = []
    for line in PINS.read_text().splitlines():
        words = line.split("#", 1)[0].split()
        if words:
            name, ver = words[0].split("==")
            rows.append((name, ver, set(words[1:])))
    return rows


def wheel_name(path: Path) -> str:
    return canonical(path.name.split("-")[0])


def source_stamp() -> str:
    """A hash of what goes into tokalign's wheel: its sources, its configs, its metadata."""
    h = hashlib.sha256()
    files = [
        ROOT / "pyproject.toml",
        *sorted(p for d in ("src", "conf") for p in (ROOT / d).rglob("*") if p.is_file() and not _ignored(p)),
    ]
    for path in files:
        h.update(str(path.relative_to(ROOT)).encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()


def _ignored(path: Path) -> bool:
    """Files git ignores never travel: byte code, build metadata."""
    return any(part == "__pycache__" or part.endswith(".egg-info") for part in path.parts)


def pip(*args: str, env: dict | None = None) -> None:
    subprocess.run([sys.executable, "-m", "pip", *args], check=True, env=env)


def build(dest: Path, python_version: str) -> int:
    import os
    import shutil

    rows = pins()
    binary = [f"{n}=={v}" for n, v, flags in rows if "sdist" not in flags]
    sdist = [f"{n}=={v}" for n, v, flags in rows if "sdist" in flags]
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    platforms = [arg for p in PLATFORMS for arg in ("--platform", p)]
    pip(
        "download",
        "-q",
        "--no-deps",
        "--only-binary=:all:",
        "--python-version",
        python_version,
        "--implementation",
        "cp",
        *platforms,
        "-d",
        str(dest),
        *binary,
    )
    with tempfile.TemporaryDirectory() as tmp:
        # sdist-only packages and tokalign: built here; pure Python, so any CPython takes them
        pip(
            "wheel",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            tmp,
            *sdist,
            env=dict(os.environ, DS_BUILD_OPS="0"),
        )
        pip("wheel", "-q", "--no-deps", "-w", tmp, str(ROOT))
        for wheel in Path(tmp).glob("*.whl"):
            if not wheel.name.endswith("-py3-none-any.whl"):
                raise SystemExit(f"wheelhouse: {wheel.name} was built with compiled parts; it would not run there")
            shutil.move(str(wheel), dest / wheel.name)
    (dest / STAMP).write_text(source_stamp() + "\n")
    wheels = sorted(dest.glob("*.whl"))
    have = {wheel_name(w) for w in wheels}
    missing = [n for n, _, _ in rows if canonical(n) not in have] + ([] if "tokalign" in have else ["tokalign"])
    if missing:
        raise SystemExit(f"wheelhouse: no wheel for {', '.join(missing)}")
    total = sum(w.stat().st_size for w in wheels)
    for w in wheels:
        print(f"{w.stat().st_size / 2**20:7.2f} MiB  {w.name}")
    print(
        f"wheelhouse: {len(wheels)} wheels, {total / 2**20:.1f} MiB in {dest} (CPython {python_version}, limit {LIMIT_MIB} MiB)"
    )
    return 0 if total <= LIMIT_MIB * 2**20 else 1


def select(dest: Path) -> int:
    """The wheels to install: all but an `if-absent` one whose package the image already holds."""
    if not (dest / STAMP).is_file():
        print(f"gpu-check: no wheelhouse at {dest}: run `make gpu-wheels` and send .whl along", file=sys.stderr)
        return 2
    if (dest / STAMP).read_text().strip() != source_stamp():
        print(
            f"gpu-check: {dest} was built from other tokalign sources than this tree's: run `make gpu-wheels` again",
            file=sys.stderr,
        )
        return 2
    optional = {canonical(n) for n, _, flags in pins() if "if-absent" in flags}
    for wheel in sorted(dest.glob("*.whl")):
        name = wheel_name(wheel)
        if name in optional and _installed(name):
            print(f"gpu-check: {name} {_installed(name)} from the image (wheelhouse's not installed)", file=sys.stderr)
            continue
        print(wheel)
    return 0


def _installed(name: str) -> str | None:
    try:
        return version(name)
    except PackageNotFoundError:
        return None


def imports(site: str | None) -> int:
    """Import each module; print its version and where it comes from; the first failure ends it."""
    for module in MODULES:
        try:
            mod = importlib.import_module(module)
        except Exception as err:  # noqa: BLE001 - any import failure ends the check, named
            print(f"gpu-check: cannot import {module}: {type(err).__name__}: {err}", file=sys.stderr)
            return 3
        origin = str(Path(getattr(mod, "__file__", "") or "?").resolve())
        where = "wheelhouse" if site and origin.startswith(str(Path(site).resolve())) else "image"
        if "." not in module:
            print(f"  {module:13s} {getattr(mod, '__version__', '') or _installed(module) or '?':22s} {where}")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build")
    b.add_argument("--dest", default=str(ROOT / ".whl"))
    b.add_argument("--python-version", default="3.12", help="the CPython the wheels are for (the lent image's)")
    s = sub.add_parser("select")
    s.add_argument("dest")
    i = sub.add_parser("imports")
    i.add_argument("--site", default=None, help="where the wheelhouse was installed")
    a = p.parse_args(argv)
    if a.command == "build":
        return build(Path(a.dest), a.python_version)
    if a.command == "select":
        return select(Path(a.dest))
    return imports(a.site)


if __name__ == "__main__":
    sys.exit(main())
