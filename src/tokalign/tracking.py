"""Where metrics go: the run's own `metrics.jsonl` (always) and a W&B run (unless logger=none).

W&B is started through the real library: online when the user is logged in or asks for it,
otherwise offline, which still writes a syncable `wandb/offline-run-*` directory into the
run directory (`wandb sync <dir>` uploads it later). The W&B run id is kept in the run
directory so that a resumed run continues the same W&B run. `attempts.json` records when each
attempt (first run, resumes after a kill or a requeue) started and last logged, so that the
summary's times add up over attempts.
"""

from __future__ import annotations

import json
import math
import os
import secrets
import string
import time
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from tokalign.config import option
from tokalign.files import append_line, atomic_text


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


def _scalar(v: Any) -> Any:
    if hasattr(v, "item") and getattr(v, "numel", lambda: 1)() == 1:
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    return v


class Tracker:
    """Logs scalars to metrics.jsonl and W&B with the same keys and step."""

    def __init__(self, cfg: DictConfig, run_dir: Path, rank: int = 0):
        self.run_dir = Path(run_dir)
        self.rank = rank
        self.metrics_path = self.run_dir / "metrics.jsonl"
        self.attempts_path = self.run_dir / "attempts.json"
        self.wandb_run = None
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
        atomic_text(self.attempts_path, json.dumps(self.attempts))

    def _start_wandb(self, cfg: DictConfig):
        import wandb

        id_file = self.run_dir / "wandb_id.txt"
        run_id = id_file.read_text().strip() if id_file.exists() else _new_run_id()
        atomic_text(id_file, run_id)
        settings = dict(
            project=cfg.logger.project, entity=cfg.logger.entity, group=cfg.logger.group, job_type=cfg.logger.job_type,
            name=cfg.run_name, tags=list(cfg.tags), config=OmegaConf.to_container(cfg, resolve=True, enum_to_str=True),
            dir=str(self.run_dir), mode=wandb_mode(option(cfg.logger.mode)), id=run_id, resume="allow",
        )
        return wandb.init(**settings)

    def log(self, metrics: dict[str, Any], step: int) -> None:
        if self.rank != 0:
            return
        row = {k: _scalar(v) for k, v in metrics.items()}
        append_line(self.metrics_path, json.dumps({"step": step, "time": round(time.time() - self.started, 3), **row}) + "\n")
        self._write_attempts()
        if self.wandb_run is not None:
            self.wandb_run.log(row, step=step)

    def rewind(self, step: int) -> None:
        """Forget rows logged after `step` (a resumed run replays them from its checkpoint).

        W&B keeps the same run id; it ignores the replayed steps it already has.
        """
        if self.rank != 0 or not self.metrics_path.exists():
            return
        kept = [row for row in read_metrics(self.run_dir) if row.get("step", math.inf) <= step]
        atomic_text(self.metrics_path, "".join(json.dumps(row) + "\n" for row in kept))

    def log_table(self, key: str, columns: list[str], rows: list[list[Any]], step: int) -> None:
        if self.wandb_run is not None:
            import wandb

            self.wandb_run.log({key: wandb.Table(columns=columns, data=rows)}, step=step)

    def summary(self, metrics: dict[str, Any]) -> None:
        if self.wandb_run is not None:
            self.wandb_run.summary.update({k: _scalar(v) for k, v in metrics.items()})

    @property
    def wandb_dir(self) -> str | None:
        return None if self.wandb_run is None else str(Path(self.wandb_run.dir).parent)

    def finish(self) -> None:
        if self.wandb_run is not None:
            self.wandb_run.finish()
            self.wandb_run = None


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
