"""Checkpoints that are either complete or absent.

Everything is written into a temporary sibling directory and moved into place with one
`os.replace`, so a killed run never leaves a half-written model where a reader looks.
Checkpoints written in place (the HF Trainer's, one shard per rank under DeepSpeed) are
sealed once every rank has finished: a manifest of every file and its size. Only a
checkpoint whose manifest still matches its files counts, so one killed mid-write or
half-deleted by rotation is never resumed from.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from pathlib import Path

_STEP = re.compile(r"checkpoint-(\d+)$")
# The trainer's own state file (global step, log history), in HF Trainer's name.
COMPLETE_MARKER = "trainer_state.json"
SEAL = "checkpoint_complete.json"


def save_atomic(dest: str | os.PathLike, write) -> Path:
    """Call `write(tmp_dir)`, then swap tmp_dir into `dest` (replacing an older one)."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}-", dir=dest.parent))
    try:
        write(tmp)
        if _STEP.search(dest.name):
            seal(tmp)
        old = None
        if dest.exists():
            old = dest.with_name(f".{dest.name}-old-{os.getpid()}")
            os.replace(dest, old)
        os.replace(tmp, dest)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}-", dir=path.parent)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)
    return path


def save_pretrained_atomic(model, tokenizer, dest: str | os.PathLike, state_dict=None) -> Path:
    """`state_dict`: weights gathered from shards (ZeRO-3) when the module holds only its own."""

    def write(tmp: Path) -> None:
        model.save_pretrained(tmp, safe_serialization=True, state_dict=state_dict)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)

    return save_atomic(dest, write)


def _files(path: Path) -> dict[str, int]:
    return {str(f.relative_to(path)): f.stat().st_size for f in sorted(path.rglob("*")) if f.is_file() and f.name != SEAL}


def seal(path: str | os.PathLike) -> Path:
    """Mark a checkpoint directory complete: call once every file in it is written."""
    path = Path(path)
    return write_text_atomic(path / SEAL, json.dumps(_files(path), indent=0))


def is_complete(path: str | os.PathLike) -> bool:
    """Sealed, and every file the seal lists is still there with its size."""
    path = Path(path)
    try:
        manifest = json.loads((path / SEAL).read_text())
        return all((path / name).stat().st_size == size for name, size in manifest.items())
    except (OSError, ValueError):
        return False


def step_of(path: str | os.PathLike) -> int:
    return int(_STEP.search(Path(path).name).group(1))


def _checkpoints(root: Path) -> list[Path]:
    return sorted((p for p in root.iterdir() if _STEP.search(p.name)), key=step_of) if root.is_dir() else []


def complete_checkpoints(root: str | os.PathLike) -> list[Path]:
    """`checkpoint-N` directories holding a finished save, oldest first."""
    return [p for p in _checkpoints(Path(root)) if is_complete(p)]


def discard_incomplete(root: str | os.PathLike) -> list[Path]:
    """Delete `checkpoint-N` directories a killed run left unfinished; returns them."""
    bad = [p for p in _checkpoints(Path(root)) if not is_complete(p)]
    for p in bad:
        shutil.rmtree(p, ignore_errors=True)
    return bad


def latest_checkpoint(root: str | os.PathLike) -> Path | None:
    done = complete_checkpoints(root)
    return done[-1] if done else None
