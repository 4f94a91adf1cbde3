"""Run directories: one writer each, no process that outlives the one that started it, and a safe way to read one.

`claim(run_dir)` takes an exclusive `flock` on `<run_dir>/.tokalign.lock` and records who
holds it (pid, host, time) for the message a second writer gets. The kernel drops the lock
when the last process holding its descriptor exits, however it exits, so a lock is never
stale; a launch passes the descriptor to its workers' spawner, which keeps the directory
claimed until the last worker is gone. `die_with_parent` arms Linux's parent-death signal.
`load_run_config` reads a (possibly someone else's) run directory without running its code.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import json
import os
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from tokalign.artifacts.files import storage_errors
from tokalign.errors import StorageError, UserError

LOCK = ".tokalign.lock"
_PR_SET_PDEATHSIG = 1
# Bound once here: `die_with_parent` runs between fork and exec, where loading symbols may deadlock.
_prctl = ctypes.CDLL(None, use_errno=True).prctl if sys.platform == "linux" else None


@contextlib.contextmanager
def claim(run_dir: str | os.PathLike) -> Iterator[int]:
    """Hold `run_dir` for this process (and the children given the descriptor); yields the descriptor."""
    run_dir = Path(run_dir)
    with storage_errors(run_dir):
        run_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(run_dir / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UserError(f"run dir {run_dir} is in use by {_holder(fd)}; wait for it to finish, or choose "
                            "another hydra.run.dir") from None
        record_holder(fd, os.getpid())
        yield fd
    finally:
        os.close(fd)


def record_holder(fd: int, pid: int) -> None:
    """Write who holds the lock (for the message a second writer gets), replacing any earlier record."""
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps({"pid": pid, "host": socket.gethostname(), "since": time.time()}).encode(), 0)


def _holder(fd: int) -> str:
    try:
        info = json.loads(os.pread(fd, 4096, 0) or b"{}")
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(info["since"]))
        who = f"pid {info['pid']} on {info['host']} (since {since})"
    except (ValueError, KeyError, OSError):
        return "another process"
    if info["host"] == socket.gethostname() and not _running(info["pid"]):
        who += ", which has ended; its workers are still stopping"
    return who


def _running(pid: int) -> bool:
    """Whether `pid` exists on this host (a launcher killed alone leaves its workers the lock)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


def check_writable(run_dir: str | os.PathLike) -> None:
    """The run directory exists (it is created) and takes files; a StorageError names it otherwise."""
    path = Path(run_dir).expanduser().absolute()
    existing = next(p for p in (path, *path.parents) if p.exists())
    if not existing.is_dir():
        raise StorageError(f"cannot use {path} as a run directory: {existing} is a file")
    try:
        path.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=path).close()
    except OSError as err:
        raise StorageError(f"cannot use {path} as a run directory: {err.strerror}") from None


def die_with_parent(signum: int = signal.SIGTERM) -> None:
    """Have the kernel send `signum` to this process when its parent dies (Linux; a no-op elsewhere)."""
    if _prctl is None:
        return
    parent = os.getppid()
    _prctl(_PR_SET_PDEATHSIG, int(signum))
    if os.getppid() != parent:  # the parent died before the signal was armed
        os.kill(os.getpid(), signum)


def load_run_config(run_dir: str | os.PathLike, *, trust_remote_code: bool = False) -> DictConfig:
    """A run's resolved config, with `model.trust_remote_code` set by the reader, never by the directory."""
    path = Path(run_dir) / "resolved.yaml"
    if not path.exists():
        raise UserError(f"{run_dir} is not a run directory (no resolved.yaml)")
    cfg = OmegaConf.load(path)
    if cfg.model.get("trust_remote_code") and not trust_remote_code:
        print(f"tokalign: {run_dir} was trained with model.trust_remote_code=true; its model code runs here only "
              "with trust_remote_code=true on this command line", file=sys.stderr)
    cfg.model.trust_remote_code = trust_remote_code
    return cfg
