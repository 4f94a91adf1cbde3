"""Where metrics go: the run's own `metrics.jsonl` (always) and a W&B run (logger=wandb) or TensorBoard
event files in `<run_dir>/tensorboard/` (logger=tensorboard).

W&B is started through the real library: online when the user is logged in or asks for it,
otherwise offline, which still writes a syncable `wandb/offline-run-*` directory into the
run directory (`wandb sync <dir>` uploads it later). The W&B run id is kept in the run
directory so that a resumed run continues the same W&B run. `attempts.json` records when each
attempt (first run, resumes after a kill or a requeue) started and last logged, so that the
summary's times add up over attempts.

What a run says goes through the `tokalign` logger (`say`): to the console as `tokalign: ...` and
to `<run_dir>/tokalign.log` (`log_file`). `quiet()` silences the libraries' lines a user would
have to learn to ignore, unless `-v` (TOKALIGN_VERBOSE=1) asks for them.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import secrets
import string
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from tokalign.artifacts.files import append_line, atomic_text, finite, strict_json
from tokalign.config import option

LOG = logging.getLogger("tokalign")
VERBOSE_ENV = "TOKALIGN_VERBOSE"

# Library lines that say nothing about this run: (logger or warning category, start of the message).
_NOISE_WARNINGS = (
    (FutureWarning, r"`(is_)?gradient_checkpointing` is deprecated"),  # transformers' rename, read by TRL
    (UserWarning, r"'pin_memory' argument is set as true but no accelerator is found"),
)
_NOISE_LOGS = {
    "DeepSpeed": ("Setting accelerator to CPU",),  # said at import on every machine without a GPU
}


def say(message: str, level: int = logging.INFO) -> None:
    """One line of the run's own: on the console and in the run's tokalign.log."""
    LOG.log(level, message)


@contextlib.contextmanager
def stage(what: str, done: str = "done") -> Iterator[None]:
    """A wait the user sees coming: what it does before it starts, and how long it took once done
    (the progress bars inside it give the ETA)."""
    say(f"{what} ...")
    started = time.time()
    yield
    say(f"{what}: {done} in {time.time() - started:.0f} s")


def progress(total: int, desc: str, unit: str = "it", disable: bool = False):
    """A progress bar with an ETA, in the style of the training bar (tqdm), gone once finished."""
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit=unit, disable=disable, leave=False, dynamic_ncols=True)


def verbose() -> bool:
    return os.environ.get(VERBOSE_ENV, "") not in ("", "0", "false")


class _Console(logging.StreamHandler):
    """stdout as it is when a line is said (not when the handler was made: a test's capture, a redirect)."""

    @property
    def stream(self):
        return sys.stdout

    @stream.setter
    def stream(self, _value) -> None:
        pass


class _Drop(logging.Filter):
    def __init__(self, starts: tuple[str, ...]):
        super().__init__()
        self.starts = starts

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.getMessage()).startswith(self.starts)


def quiet() -> None:
    """The console shows tokalign's own lines (`tokalign: ...`); known library noise is dropped unless verbose."""
    import warnings

    if not any(isinstance(h, _Console) for h in LOG.handlers):
        console = _Console()
        console.setFormatter(logging.Formatter("tokalign: %(message)s"))
        LOG.addHandler(console)
        # one voice per run: a worker of rank > 0 says only what goes wrong
        LOG.setLevel(
            logging.WARNING if int(os.environ.get("RANK", "0")) else logging.DEBUG if verbose() else logging.INFO
        )
        LOG.propagate = False
    if verbose():
        return
    for category, message in _NOISE_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category)
    for name, starts in _NOISE_LOGS.items():
        logger = logging.getLogger(name)  # a filter set before the library makes its logger stays on it
        if not any(isinstance(f, _Drop) for f in logger.filters):
            logger.addFilter(_Drop(starts))


def quiet_imports() -> None:
    """Import, with WANDB_MODE unset, what prints about it at import ("Running in WANDB offline mode",
    transformers' W&B integration, imported by TRL whatever the logger): W&B says what it does itself."""
    if verbose() or "WANDB_MODE" not in os.environ or "transformers.integrations.integration_utils" in sys.modules:
        return
    mode = os.environ.pop("WANDB_MODE")
    try:
        import transformers.integrations.integration_utils  # noqa: F401
    finally:
        os.environ["WANDB_MODE"] = mode


@contextlib.contextmanager
def log_file(run_dir: Path) -> Iterator[None]:
    """The run's own lines also go to <run_dir>/tokalign.log (appended: a resumed run continues it)."""
    handler = logging.FileHandler(Path(run_dir) / "tokalign.log")
    if LOG.getEffectiveLevel() > logging.INFO:  # used as a library, without quiet()
        LOG.setLevel(logging.INFO)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    LOG.addHandler(handler)
    try:
        yield
    finally:
        LOG.removeHandler(handler)
        handler.close()


def _logged_in() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    netrc = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    return netrc.exists() and "api.wandb.ai" in netrc.read_text(errors="ignore")


def wandb_mode(requested: str) -> str:
    if requested != "auto":
        return requested
    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"]
    return "online" if _logged_in() else "offline"


def _new_run_id() -> str:
    alphabet = string.ascii_lowercase + string.digits
    return "".join(secrets.choice(alphabet) for _ in range(8))


def uses_tensorboard(cfg: DictConfig) -> bool:
    """logger=tensorboard, or logger.tensorboard=true beside W&B."""
    return option(cfg.logger.name) == "tensorboard" or bool(cfg.logger.get("tensorboard"))


def check_logger(cfg: DictConfig) -> None:
    """TensorBoard event files need the tensorboard package (torch writes them with it)."""
    import importlib.util

    from tokalign.errors import ConfigError

    if uses_tensorboard(cfg) and importlib.util.find_spec("tensorboard") is None:
        raise ConfigError("logger=tensorboard needs the tensorboard package: pip install 'tokalign[tensorboard]'")


class _TensorBoard:
    """Event files under <run_dir>/tensorboard/, opened at the first log. A resumed run purges the steps after
    its checkpoint (TensorBoard's purge_step), as metrics.jsonl forgets them."""

    def __init__(self, log_dir: Path):
        self.log_dir, self.purge_step, self.writer = log_dir, None, None

    def log(self, row: dict[str, Any], step: int) -> None:
        if self.writer is None:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(self.log_dir), purge_step=self.purge_step)
        for key, value in row.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                self.writer.add_scalar(key, value, global_step=step)
        self.writer.flush()  # a killed run keeps what it logged

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


class Tracker:
    """Logs scalars to metrics.jsonl and W&B or TensorBoard with the same keys and step."""

    def __init__(self, cfg: DictConfig, run_dir: Path, rank: int = 0):
        self.run_dir = Path(run_dir)
        self.rank = rank
        self.metrics_path = self.run_dir / "metrics.jsonl"
        self.attempts_path = self.run_dir / "attempts.json"
        self.wandb_run = None
        self.tensorboard = _TensorBoard(self.run_dir / "tensorboard") if rank == 0 and uses_tensorboard(cfg) else None
        self.started = time.time()
        self.attempts = self._read_attempts() if rank == 0 else []
        self.previous_wall_s = sum(a["last"] - a["started"] for a in self.attempts)
        if rank == 0:
            self.attempts.append({"started": self.started, "last": self.started})
            self._write_attempts()
        if rank == 0 and option(cfg.logger.name) == "wandb":
            self.wandb_run = self._start_wandb(cfg)

    def _read_attempts(self) -> list[dict]:
        try:
            return [a for a in json.loads(self.attempts_path.read_text()) if {"started", "last"} <= set(a)]
        except (OSError, ValueError, TypeError):
            return []

    def _write_attempts(self) -> None:
        self.attempts[-1]["last"] = time.time()
        atomic_text(self.attempts_path, strict_json(self.attempts))

    def _start_wandb(self, cfg: DictConfig):
        import wandb

        id_file = self.run_dir / "wandb_id.txt"
        run_id = id_file.read_text().strip() if id_file.exists() else _new_run_id()
        atomic_text(id_file, run_id)
        settings = dict(
            project=cfg.logger.project,
            entity=cfg.logger.entity,
            group=cfg.logger.group,
            job_type=cfg.logger.job_type,
            name=cfg.run_name,
            tags=list(cfg.tags),
            config=OmegaConf.to_container(cfg, resolve=True, enum_to_str=True),
            dir=str(self.run_dir),
            mode=wandb_mode(option(cfg.logger.mode)),
            id=run_id,
            resume="allow",
        )
        return wandb.init(**settings)

    def log(self, metrics: dict[str, Any], step: int) -> None:
        if self.rank != 0:
            return
        row = finite(dict(metrics))
        append_line(
            self.metrics_path, strict_json({"step": step, "time": round(time.time() - self.started, 3), **row}) + "\n"
        )
        self._write_attempts()
        if self.wandb_run is not None:
            self.wandb_run.log(row, step=step)
        if self.tensorboard is not None:
            self.tensorboard.log(row, step)

    def rewind(self, step: int) -> None:
        """Forget rows logged after `step` (a resumed run replays them from its checkpoint).

        W&B keeps the same run id; it ignores the replayed steps it already has.
        """
        if self.tensorboard is not None:
            self.tensorboard.purge_step = step + 1
        if self.rank != 0 or not self.metrics_path.exists():
            return
        kept = [row for row in read_metrics(self.run_dir) if row.get("step", math.inf) <= step]
        atomic_text(self.metrics_path, "".join(strict_json(row) + "\n" for row in kept))

    def log_table(self, key: str, columns: list[str], rows: list[list[Any]], step: int) -> None:
        if self.wandb_run is not None:
            import wandb

            self.wandb_run.log({key: wandb.Table(columns=columns, data=rows)}, step=step)

    def summary(self, metrics: dict[str, Any]) -> None:
        if self.wandb_run is not None:
            self.wandb_run.summary.update(finite(dict(metrics)))

    @property
    def wandb_dir(self) -> str | None:
        return None if self.wandb_run is None else str(Path(self.wandb_run.dir).parent)

    def finish(self) -> None:
        if self.tensorboard is not None:
            self.tensorboard.close()
        if self.wandb_run is not None:
            self.wandb_run.finish()
            self.wandb_run = None


def resume_wandb(cfg: DictConfig, run_dir: Path):
    """The run's own W&B run, resumed by the id it keeps (for a later `eval` or `inspect`), or None without one.

    Online only when this user's own W&B settings say so: a run directory's config never sends anything."""
    id_file = Path(run_dir) / "wandb_id.txt"
    if option(cfg.logger.name) != "wandb" or not id_file.exists():
        return None
    import wandb

    return wandb.init(
        project=cfg.logger.project,
        entity=cfg.logger.entity,
        id=id_file.read_text().strip(),
        resume="allow",
        dir=str(run_dir),
        mode=wandb_mode("auto"),
    )


def read_metrics(run_dir: str | os.PathLike) -> list[dict]:
    """The rows of a run's metrics.jsonl; a line cut short (a kill, or a writer mid-line) or damaged is skipped."""
    path = Path(run_dir) / "metrics.jsonl"
    rows = []
    for line in path.read_bytes().splitlines() if path.exists() else []:
        try:
            row = json.loads(line)
        except ValueError:  # UnicodeDecodeError included
            continue
        if isinstance(row, dict):
            rows.append(row)
    return rows


def unreadable_line(run_dir: str | os.PathLike) -> int | None:
    """The number of the first line of metrics.jsonl that is not UTF-8 text (a damaged file), if any."""
    path = Path(run_dir) / "metrics.jsonl"
    for number, line in enumerate(path.read_bytes().splitlines() if path.exists() else [], 1):
        try:
            line.decode("utf-8")
        except UnicodeDecodeError:
            return number
    return None
