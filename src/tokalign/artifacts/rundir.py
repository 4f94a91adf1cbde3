"""Run directories: one writer each, no process that outlives the one that started it, and a safe way to read one.

`claim(run_dir)` takes an exclusive `flock` on `<run_dir>/.tokalign.lock` and records who
holds it (pid, host, time, and what a multi-node job adds: tokalign.runtime.nodes) for the
message a second writer gets; `read_record` tells another process whether it is held and by whom. The kernel drops the lock
when the last process holding its descriptor exits, however it exits, so a lock is never
stale; a launch passes the descriptor to its workers' spawner, which keeps the directory
claimed until the last worker is gone. `die_with_parent` arms Linux's parent-death signal.
`check_writable`, `check_unused` and `check_free` refuse a run directory before Hydra writes
anything into it: a system directory, one holding an earlier run, one in use.
`load_run_config` reads a (possibly someone else's) run directory as data: plain YAML values,
no interpolation, its cache and output paths replaced by the reader's.
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

from tokalign.artifacts.files import refuse_links_out, storage_errors
from tokalign.errors import StorageError, UserError

LOCK = ".tokalign.lock"
# Where no run belongs, even for a user allowed to write there (root, or a symlink resolving there).
SYSTEM_DIRS = ("/bin", "/boot", "/dev", "/etc", "/lib", "/lib32", "/lib64", "/libx32", "/proc", "/sbin", "/sys", "/usr")
RESULTS = ("summary.json", "model", "checkpoints", "metrics.jsonl")
_PR_SET_PDEATHSIG = 1
# Bound once here: `die_with_parent` runs between fork and exec, where loading symbols may deadlock.
_prctl = ctypes.CDLL(None, use_errno=True).prctl if sys.platform == "linux" else None


@contextlib.contextmanager
def claim(run_dir: str | os.PathLike, lock: str = LOCK, record: dict | None = None) -> Iterator[int]:
    """Hold `run_dir` for this process (and the children given the descriptor); yields the descriptor.

    `lock` names the lock file (a node of a multi-node job other than node 0 holds one of its own),
    `record` what is written into it besides who holds it (see tokalign.runtime.nodes)."""
    run_dir = Path(run_dir)
    with storage_errors(run_dir):
        run_dir.mkdir(parents=True, exist_ok=True)
        refuse_links_out(run_dir, "run dir")
        fd = os.open(run_dir / lock, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
    try:
        if not _lock(fd):
            raise UserError(
                f"run dir {run_dir} is in use by {_holder(fd)}; wait for it to finish, or choose another hydra.run.dir"
            ) from None
        record_holder(fd, os.getpid(), **(record or {}))
        yield fd
    finally:
        os.close(fd)


def _lock(fd: int, tries: int = 10) -> bool:
    """Take the exclusive lock; a few tries, since another node's launcher may be probing it (`held`)."""
    for attempt in range(tries):
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if attempt + 1 < tries:
                time.sleep(0.05)
    return False


def record_holder(fd: int, pid: int, **fields) -> None:
    """Write who holds the lock (for the message a second writer gets), replacing any earlier record."""
    text = json.dumps({"pid": pid, "host": socket.gethostname(), "since": time.time(), **fields}).encode()
    os.ftruncate(fd, 0)
    os.pwrite(fd, text, 0)


def update_record(fd: int, **fields) -> None:
    """Add `fields` to the record of a lock this process holds."""
    record = json.loads(os.pread(fd, 65536, 0) or b"{}")
    record.update(fields)
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(record).encode(), 0)


def read_record(path: str | os.PathLike) -> tuple[bool, dict | None]:
    """(whether some process holds the lock at `path`, its record: None if absent or being written)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return False, None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            held = False
            fcntl.flock(fd, fcntl.LOCK_UN)
        except BlockingIOError:
            held = True
        try:
            record = json.loads(os.pread(fd, 65536, 0))
        except ValueError:
            record = None
        return held, record if isinstance(record, dict) else None
    finally:
        os.close(fd)


def holder_text(record: dict | None) -> str:
    """'pid 12 on host (since ...)' of a lock's record."""
    try:
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(record["since"]))
        return f"pid {record['pid']} on {record['host']} (since {since})"
    except (TypeError, KeyError, ValueError, OverflowError):
        return "another process"


def _holder(fd: int) -> str:
    try:
        info = json.loads(os.pread(fd, 65536, 0) or b"{}")
    except (ValueError, OSError):
        return "another process"
    who = holder_text(info)
    if who != "another process" and info["host"] == socket.gethostname() and not _running(info["pid"]):
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


def _shown(path: Path, limit: int = 120) -> str:
    text = str(path)
    return text if len(text) <= limit else f"{text[: limit // 2]}...{text[-limit // 2 :]} ({len(text)} characters)"


def check_writable(run_dir: str | os.PathLike) -> None:
    """The run directory is not a system directory (also through a link), exists (it is created) and
    takes files; a StorageError names it otherwise."""
    path = Path(run_dir).expanduser().absolute()
    try:
        real = path.resolve()
        if str(real) == "/" or any(real.is_relative_to(d) for d in SYSTEM_DIRS):
            via = "" if real == path else f" (it resolves to {real})"
            raise StorageError(
                f"cannot use {_shown(path)} as a run directory{via}: a system directory; choose "
                "hydra.run.dir under your home or a scratch directory"
            )
        existing = next(p for p in (path, *path.parents) if p.exists())
        if not existing.is_dir():
            raise StorageError(f"cannot use {_shown(path)} as a run directory: {_shown(existing)} is a file")
        path.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=path).close()
    except StorageError:
        raise
    except OSError as err:
        raise StorageError(f"cannot use {_shown(path)} as a run directory: {err.strerror}") from None


def earlier_run(run_dir: str | os.PathLike) -> list[str]:
    """What an earlier run left in `run_dir` (results a new run would mix with)."""
    return [name for name in RESULTS if (Path(run_dir) / name).exists()]


def check_unused(run_dir: str | os.PathLike) -> None:
    """A fresh run (resume=never) refuses a directory holding an earlier run's results."""
    earlier = earlier_run(run_dir)
    if earlier:
        raise UserError(
            f"{run_dir} holds an earlier run ({', '.join(earlier)}): pass resume=auto to continue it, "
            "or choose another hydra.run.dir"
        )


def check_free(run_dir: str | os.PathLike) -> None:
    """Refuse a run directory another process holds, without creating or changing anything in it."""
    try:
        fd = os.open(Path(run_dir) / LOCK, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return  # no lock yet (or a link, which claim() refuses)
    try:
        if not _lock(fd, tries=3):
            raise UserError(
                f"run dir {run_dir} is in use by {_holder(fd)}; wait for it to finish, or choose another hydra.run.dir"
            )
    finally:
        os.close(fd)


def die_with_parent(signum: int = signal.SIGTERM) -> None:
    """Have the kernel send `signum` to this process when its parent dies (Linux; a no-op elsewhere)."""
    if _prctl is None:
        return
    parent = os.getppid()
    _prctl(_PR_SET_PDEATHSIG, int(signum))
    if os.getppid() != parent:  # the parent died before the signal was armed
        os.kill(os.getpid(), signum)


def read_config(path: str | os.PathLike) -> DictConfig:
    """A YAML mapping of plain values (a run directory's): an interpolation (`${...}`), which would
    read the environment or other files when used, is refused; so is anything but a mapping."""
    import yaml

    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
        raise UserError(f"{path} is not readable YAML ({str(err).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise UserError(f"{path} is not a YAML mapping of config keys")
    key = _interpolation(data)
    if key is not None:
        raise UserError(f"{path}: {key} holds an interpolation (${{...}}); a run directory's config holds plain values")
    return OmegaConf.create(data)


def _interpolation(node, where: str = "") -> str | None:
    """The first key whose value would be interpolated by OmegaConf."""
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for k, v in items:
        key = f"{where}[{k}]" if isinstance(node, list) else f"{where}.{k}" if where else str(k)
        if isinstance(v, str) and "${" in v:
            return key
        found = _interpolation(v, key)
        if found:
            return found
    return None


def reader_cache() -> str:
    """This user's cache (TOKALIGN_CACHE or ~/.cache/tokalign): a run directory never picks where we write."""
    return os.path.expanduser(os.environ.get("TOKALIGN_CACHE") or "~/.cache/tokalign")


def load_run_config(
    run_dir: str | os.PathLike, *, trust_remote_code: bool = False, trust_run_code: bool = False
) -> DictConfig:
    """A run's resolved config read as data: `model.trust_remote_code` set by the reader, never by the
    directory; `output_dir` is the directory read, and `cache_dir` the reader's own unless the reader
    trusts the run (`trust_run_code`: the command line said so, or this process trained it)."""
    path = Path(run_dir) / "resolved.yaml"
    if not path.exists():
        raise UserError(f"{run_dir} is not a run directory (no resolved.yaml)")
    cfg = read_config(path)
    if not isinstance(cfg.get("model"), DictConfig) or not isinstance(cfg.get("method"), DictConfig):
        raise UserError(f"{path} is not a tokalign run config (no model or method section)")
    if cfg.model.get("trust_remote_code") and not trust_remote_code:
        print(
            f"tokalign: {run_dir} was trained with model.trust_remote_code=true; its model code runs here only "
            "with trust_remote_code=true on this command line",
            file=sys.stderr,
        )
    cfg.model.trust_remote_code = trust_remote_code
    cfg.output_dir = str(run_dir)
    if not trust_run_code:
        cfg.cache_dir = reader_cache()
    return cfg


PICKLES = ("*.bin", "*.pt", "*.pth", "*.pkl", "*.pickle", "*.ckpt")


def finished_model(run_dir: str | os.PathLike) -> Path:
    """`<run_dir>/model` when it holds a finished model to read: safetensors weights (tokalign writes no
    other kind; a pickle there is never loaded) that are all finite."""
    from tokalign.artifacts.checkpoint import non_finite
    from tokalign.errors import DivergenceError

    model = Path(run_dir) / "model"
    if not ((model / "config.json").is_file() or (model / "adapter_config.json").is_file()):
        raise UserError(f"{model} holds no finished model (was the run completed?)")
    pickled = sorted(f.name for pattern in PICKLES for f in model.glob(pattern))
    if pickled:
        raise UserError(
            f"{model} holds pickled files ({', '.join(pickled)}), which can run code when loaded; "
            "tokalign writes safetensors and loads no pickle from a run directory"
        )
    if not any(model.glob("*.safetensors")):
        raise UserError(f"{model} holds no safetensors weights")
    problem = non_finite(model)
    if problem:
        raise DivergenceError(
            f"{model} holds non-finite weights ({problem}); it is not evaluated or continued: "
            "remove model/ and train.json, then resume=auto continues from the last sealed checkpoint"
        )
    return model
