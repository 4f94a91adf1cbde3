"""Checkpoints that are either complete or absent.

Everything is written into a temporary sibling directory and moved into place with one
`os.replace`, so a killed run never leaves a half-written model where a reader looks.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from pathlib import Path

_STEP = re.compile(r"checkpoint-(\d+)$")
# The HF Trainer writes trainer_state.json after the weights, optimizer and RNG state.
COMPLETE_MARKER = "trainer_state.json"


def save_atomic(dest: str | os.PathLike, write) -> Path:
    """Call `write(tmp_dir)`, then swap tmp_dir into `dest` (replacing an older one)."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}-", dir=dest.parent))
    try:
        write(tmp)
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


def save_pretrained_atomic(model, tokenizer, dest: str | os.PathLike) -> Path:
    def write(tmp: Path) -> None:
        model.save_pretrained(tmp, safe_serialization=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)

    return save_atomic(dest, write)


def complete_checkpoints(root: str | os.PathLike) -> list[Path]:
    """`checkpoint-N` directories holding a finished save, oldest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := _STEP.search(p.name)) and (p / COMPLETE_MARKER).exists()]
    return [p for _, p in sorted(found)]


def latest_checkpoint(root: str | os.PathLike) -> Path | None:
    done = complete_checkpoints(root)
    return done[-1] if done else None
