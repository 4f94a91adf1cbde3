"""Files and directories that are either complete or absent, and disk errors said plainly.

Everything tokalign puts into a run directory, a table directory or the cache is written into
a temporary sibling (created exclusively) and moved into place with one `os.replace`, so a
killed process never leaves a half-written file where a reader looks, and a symbolic link
planted at that name is replaced, never written through. Appends and the lock refuse a link
(O_NOFOLLOW), and `links_out` finds a link inside a directory that leads out of it. A full
disk, a read-only path or a link becomes a `StorageError` naming the path, not an error from
deep inside a serializer.
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from tokalign.errors import StorageError

_STORAGE_ERRNOS = {
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EACCES: "permission denied",
    errno.EROFS: "read-only file system",
    errno.EPERM: "not permitted",
    errno.ELOOP: "it is a symbolic link, and tokalign writes no file through a link",
    errno.ENAMETOOLONG: "a file name there is longer than the file system allows",
}


def _storage_error(err: BaseException) -> str | None:
    """What a disk-full or permission failure is, also when a library wrapped it in a RuntimeError."""
    if isinstance(err, OSError) and err.errno in _STORAGE_ERRNOS:
        return _STORAGE_ERRNOS[err.errno]
    text = str(err)
    if "unexpected pos" in text or "No space left" in text:  # torch's zip writer on a full disk
        return _STORAGE_ERRNOS[errno.ENOSPC]
    return None


@contextlib.contextmanager
def storage_errors(path: str | os.PathLike) -> Iterator[None]:
    """Turn disk-full and permission errors while writing `path` into one clear StorageError."""
    try:
        yield
    except StorageError:
        raise
    except (OSError, RuntimeError) as err:
        what = _storage_error(err)
        if what is None:
            raise
        raise StorageError(f"cannot write {path}: {what}") from err


def atomic_dir(dest: str | os.PathLike, write: Callable[[Path], None], *, replace: bool = True) -> Path:
    """Call `write(tmp_dir)`, then move tmp_dir to `dest`.

    `replace=True` swaps out an existing `dest` (a newer final model); `replace=False` keeps
    it (a cache entry another process published first) and discards this copy.
    """
    dest = Path(dest)
    with storage_errors(dest):
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}-", dir=dest.parent))
        try:
            write(tmp)
            if dest.exists() and not replace:
                shutil.rmtree(tmp, ignore_errors=True)
                return dest
            old = None
            if dest.exists():
                old = dest.with_name(f".{dest.name}-old-{os.getpid()}")
                os.replace(dest, old)
            try:
                os.replace(tmp, dest)
            except OSError:
                if replace or not dest.exists():
                    raise
                shutil.rmtree(tmp, ignore_errors=True)  # a concurrent writer won the race
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return dest


def finite(value: Any) -> Any:
    """`value` with every non-finite float (and one-element tensor) made None, containers included."""
    if hasattr(value, "item") and getattr(value, "numel", lambda: 1)() == 1:
        value = value.item()
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    return value


def strict_json(value: Any, **kwargs: Any) -> str:
    """JSON that strict readers accept: no NaN or Infinity tokens (a missing or non-finite value is null)."""
    return json.dumps(finite(value), allow_nan=False, **kwargs)


def atomic_text(path: str | os.PathLike, text: str, *, replace: bool = True) -> Path:
    """Write a text file (mode 0600) through a temporary sibling and one rename.

    `replace=False` publishes it with a hard link instead, which fails if `path` exists: the
    first of several concurrent writers wins and the others keep its file.
    """
    return atomic_bytes(path, text.encode(), replace=replace)


def atomic_bytes(path: str | os.PathLike, data: bytes, *, replace: bool = True) -> Path:
    """`atomic_text` for bytes (a plot, a CSV written elsewhere first)."""
    path = Path(path)
    with storage_errors(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}-", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            if replace:
                os.replace(tmp, path)
            else:
                with contextlib.suppress(FileExistsError):
                    os.link(tmp, path)
        finally:
            Path(tmp).unlink(missing_ok=True)
    return path


def append_line(path: str | os.PathLike, line: str) -> None:
    """Append one line to a log-like file, creating it; a symbolic link there is refused, not followed."""
    with storage_errors(path):
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o644)
        with os.fdopen(fd, "a") as f:
            f.write(line)


def links_out(root: str | os.PathLike) -> Path | None:
    """The first symbolic link under `root` whose target lies outside it (links within it are harmless).

    `wandb/` is W&B's own (its logs link to the user's W&B cache): tokalign writes nothing there."""
    root = Path(root)
    if not root.is_dir() or root.is_symlink():
        return None
    real = root.resolve()
    for parent, dirs, files in os.walk(root):
        if Path(parent) == root and "wandb" in dirs:
            dirs.remove("wandb")
            if Path(root, "wandb").is_symlink() and not Path(root, "wandb").resolve().is_relative_to(real):
                return Path(root, "wandb")
        for name in sorted(dirs + files):
            entry = Path(parent, name)
            if entry.is_symlink() and not entry.resolve().is_relative_to(real):
                return entry
    return None


def refuse_links_out(root: str | os.PathLike, what: str) -> None:
    """A StorageError naming the first link under `root` that leads out of it, if any."""
    link = links_out(root)
    if link is not None:
        raise StorageError(
            f"{what} {root}: {link} is a symbolic link to {os.readlink(link)}, outside it; tokalign "
            "writes nothing through a link out of its directory: remove the link"
        )


def clean_temporaries(root: str | os.PathLike, prefix: str) -> list[Path]:
    """Remove the hidden `.<prefix>*` siblings a killed writer left in `root`; returns them."""
    root = Path(root)
    left = sorted(root.glob(f".{prefix}*")) if root.is_dir() else []
    for p in left:
        shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
    return left
