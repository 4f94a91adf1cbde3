"""Checkpoints that are either complete or absent, and provably the ones that were written.

A checkpoint written by one process goes through `files.atomic_dir`. Checkpoints written in
place (the HF Trainer's, one shard per rank under DeepSpeed) are sealed once every rank has
finished: a manifest of every file with its size and SHA-256, signed with an HMAC under a key
private to the user (`~/.config/tokalign/seal.key`, made on first use). Only a checkpoint
whose files still match their sizes counts (`is_complete`, cheap, for listing); the one chosen
for a resume must also match its hashes and signature (`verify`), so a truncated file, or one
planted or rewritten by someone else in a shared run directory, is never loaded (resuming
unpickles optimizer and RNG states, which can run code).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import secrets
import shutil
from pathlib import Path

from tokalign.artifacts.files import atomic_dir, atomic_text, clean_temporaries

_STEP = re.compile(r"^checkpoint-(\d+)$")
SEAL = "checkpoint_complete.json"


def _sha256(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _files(path: Path) -> list[Path]:
    return [f for f in sorted(path.rglob("*")) if f.is_file() and f.name != SEAL]


def _key_path() -> Path:
    return Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config") / "tokalign" / "seal.key"


def _key(create: bool) -> bytes | None:
    path = _key_path()
    if create and not path.exists():  # whole or absent: a concurrent first run never reads it half-written
        atomic_text(path, secrets.token_hex(32), replace=False)
    return path.read_text().strip().encode() if path.exists() else None


def _signature(files: dict, key: bytes) -> str:
    return hmac.new(key, json.dumps(files, sort_keys=True).encode(), "sha256").hexdigest()


def seal(path: str | os.PathLike) -> Path:
    """Mark a checkpoint directory complete: call once every file in it is written."""
    path = Path(path)
    files = {str(f.relative_to(path)): {"size": f.stat().st_size, "sha256": _sha256(f)} for f in _files(path)}
    return atomic_text(
        path / SEAL, json.dumps({"files": files, "hmac": _signature(files, _key(create=True))}, indent=0)
    )


def _manifest(path: Path) -> dict | None:
    """The sealed files (name -> size, hash), or None when there is no readable seal."""
    try:
        seal_data = json.loads((path / SEAL).read_text())
    except (OSError, ValueError):
        return None
    files = seal_data.get("files") if isinstance(seal_data, dict) else None
    return files if isinstance(files, dict) else None


def is_complete(path: str | os.PathLike) -> bool:
    """Sealed, and every file the seal lists is still there with its size."""
    path = Path(path)
    manifest = _manifest(path)
    try:
        return manifest is not None and all((path / n).stat().st_size == e["size"] for n, e in manifest.items())
    except (OSError, KeyError, TypeError):
        return False


def verify(path: str | os.PathLike) -> str | None:
    """None when every file matches its sealed size and hash and no file was added; else what differs."""
    path = Path(path)
    manifest = _manifest(path)
    if manifest is None:
        return "no seal"
    key = _key(create=False)
    signature = json.loads((path / SEAL).read_text()).get("hmac", "")
    if key is None or not hmac.compare_digest(signature, _signature(manifest, key)):
        return (
            f"its seal was not made with this account's key ({_key_path()}): it may have been written or changed "
            "by someone else; copy the key of the account that trained it to resume it"
        )
    present = {str(f.relative_to(path)) for f in _files(path)}
    if present != set(manifest):
        return f"files added or missing: {sorted(present ^ set(manifest))}"
    for name, entry in manifest.items():
        if not isinstance(entry, dict) or _sha256(path / name) != entry.get("sha256"):
            return f"{name} does not match its sealed hash"
    return None


def non_finite(path: str | os.PathLike) -> str | None:
    """Which saved weights (safetensors, under `path`) hold NaN or inf, if any."""
    import torch
    from safetensors import safe_open

    for file in sorted(Path(path).rglob("*.safetensors")):
        with safe_open(str(file), framework="pt") as f:
            for name in f.keys():
                if not torch.isfinite(f.get_tensor(name)).all():
                    return f"{file.name}: {name} is not finite"
    return None


def step_of(path: str | os.PathLike) -> int:
    return int(_STEP.match(Path(path).name).group(1))


def _checkpoints(root: Path) -> list[Path]:
    return sorted((p for p in root.iterdir() if _STEP.match(p.name)), key=step_of) if root.is_dir() else []


def complete_checkpoints(root: str | os.PathLike) -> list[Path]:
    """`checkpoint-N` directories holding a finished save, oldest first."""
    return [p for p in _checkpoints(Path(root)) if is_complete(p)]


def discard_incomplete(root: str | os.PathLike) -> list[Path]:
    """Delete what a killed run left half-written: unsealed `checkpoint-N` dirs and temporaries."""
    root = Path(root)
    bad = [p for p in _checkpoints(root) if not is_complete(p)]
    for p in bad:
        shutil.rmtree(p, ignore_errors=True)
    return bad + clean_temporaries(root, "checkpoint-")


def latest_checkpoint(root: str | os.PathLike) -> Path | None:
    done = complete_checkpoints(root)
    return done[-1] if done else None


def rotate(root: str | os.PathLike, keep: int) -> None:
    """Delete all but the newest `keep` complete checkpoints."""
    done = complete_checkpoints(root)
    for old in done[: max(0, len(done) - keep)]:
        shutil.rmtree(old, ignore_errors=True)


def save_checkpoint_dir(dest: str | os.PathLike, write) -> Path:
    """A checkpoint written by one process: written aside, sealed, moved into place."""

    def sealed(tmp: Path) -> None:
        write(tmp)
        seal(tmp)

    return atomic_dir(dest, sealed)


def save_pretrained_atomic(model, tokenizer, dest: str | os.PathLike, state_dict=None) -> Path:
    """`state_dict`: weights gathered from shards (ZeRO-3) when the module holds only its own."""

    def write(tmp: Path) -> None:
        model.save_pretrained(tmp, safe_serialization=True, state_dict=state_dict)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)

    return atomic_dir(dest, write)
