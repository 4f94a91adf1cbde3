"""The lent GPU machine's run, rehearsed on CPU: the wheelhouse `make gpu-wheels` builds, an
environment holding only what that machine's image holds (scripts/gpu/image.txt), and
`scripts/gpu/gpu_check.sh --tiny` run in it to the end, offline but for the wheelhouse.

This machine installs no torch 2.11 short of a CUDA build of several GB, so the image's torch is
replaced by the torch of the environment running the tests (pip takes it from its cache); all else
is the image's, transformers 5.17 among it. The image's Python is 3.12; here the wheelhouse is built
a second time, from the same pins, for the Python running the tests. The environment is kept in
the test cache, keyed by its contents.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest
import torch

from tests.test_gpu_check import check_tiny_report

GPU = Path(__file__).resolve().parents[1] / "scripts" / "gpu"

pytestmark = pytest.mark.slow


def image_python(cache_dir: Path) -> Path:
    """The interpreter of a virtual environment holding image.txt, torch replaced by this one's."""
    here_torch = f"torch=={torch.__version__.split('+')[0]}"
    lines = [
        here_torch if line.startswith("torch==") else line
        for line in (GPU / "image.txt").read_text().splitlines()
        if "==" in line
    ]
    lines.append(f"pip=={version('pip')}")  # the image has a pip: gpu_check.sh installs with it
    key = hashlib.sha256(f"{sys.version_info[:2]}\n{chr(10).join(lines)}".encode()).hexdigest()[:12]
    env = cache_dir / f"gpu-image-{key}"
    python = env / "bin" / "python"
    if (env / ".ready").exists():
        return python
    shutil.rmtree(env, ignore_errors=True)
    subprocess.run([sys._base_executable, "-m", "venv", "--without-pip", str(env)], check=True)
    (env / "image.txt").write_text("\n".join(lines) + "\n")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(python),
            "install",
            "-q",
            "--no-deps",
            "--no-compile",
            "--disable-pip-version-check",
            "-r",
            str(env / "image.txt"),
        ],
        check=True,
    )
    (env / ".ready").touch()
    return python


def build_wheelhouse(dest: Path, python_version: str) -> str:
    done = subprocess.run(
        [sys.executable, str(GPU / "wheelhouse.py"), "build", "--dest", str(dest), "--python-version", python_version],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    return done.stdout.splitlines()[-1]


def test_gpu_check_sh_runs_to_the_end_in_the_images_environment(tmp_path, cache_dir):
    summary = build_wheelhouse(tmp_path / "whl312", "3.12")  # what `make gpu-wheels` sends: at most 60 MiB
    assert "(CPython 3.12, limit 60 MiB)" in summary
    here = f"{sys.version_info.major}.{sys.version_info.minor}"
    wheels = tmp_path / "whl312" if here == "3.12" else tmp_path / f"whl{here}"
    if here != "3.12":
        build_wheelhouse(wheels, here)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env |= {
        "PYTHON": str(image_python(cache_dir)),
        "WHEELS": str(wheels),
        "OUT": str(tmp_path / "out"),
        "TOKALIGN_CACHE": str(cache_dir),
    }
    # a loaded machine may take the toy run past the GPU run's 420 s: it must still run every section
    done = subprocess.run(
        [str(GPU / "gpu_check.sh"), "--tiny", "--budget", "3600"], env=env, capture_output=True, text=True, timeout=1800
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-4000:]
    assert "pip check" not in output, output  # the wheelhouse completes the image: no requirement unmet
    assert "gpu-check: pydantic 2.14.4 from the image" in output  # if-absent: the image's own is kept
    report = json.loads((tmp_path / "out" / "gpu_check.json").read_text())
    assert report["environment"]["transformers"] == "5.17.0" and report["environment"]["accelerate"] == "1.15.0"
    check_tiny_report(report, (tmp_path / "out" / "gpu_check.md").read_text())
