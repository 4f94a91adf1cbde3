"""SLURM sweeps (`hydra/launcher=slurm`): hydra-submitit-launcher with defaults that fit the node.

The plain plugin submits one array of identical jobs, asks for what its YAML says and waits on
`sacct` without looking at why a job is pending. This launcher, per sweep point:

- derives the request from the point's own launcher: CPUs per task = workers x threads per
  worker, GPUs only on partitions whose nodes have GPUs (sinfo's GRES), memory = workers x
  `mem_gb_per_worker`, the automatic values capped at what a node of the partition has;
  points that need different resources go in separate arrays;
- names the run directory by the point's overrides, not by its job number, so resubmitting any
  subset of points (with resume=auto) continues exactly those runs; a point that already
  finished (summary.json, resume=auto) is not submitted again;
- requeues a preempted or timed-out job with resume=auto, whatever the first attempt said;
- while waiting, fails the sweep with one line when a job is pending for a reason that never
  clears (PartitionConfig, ...), and reports failed points in one line each.

Hydra instantiates launchers only from the `hydra_plugins` namespace: `hydra_plugins.tokalign_slurm`
names this class there.
"""

from __future__ import annotations

import fnmatch
import json
import logging
import os
import re
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

from hydra.core.config_store import ConfigStore
from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus, run_job, setup_globals
from omegaconf import DictConfig, OmegaConf, open_dict

from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf, SlurmQueueConf
from hydra_plugins.hydra_submitit_launcher.submitit_launcher import BaseSubmititLauncher
from tokalign.app.sweep import POINT_EXCLUDE, point_name

log = logging.getLogger(__name__)

# Pending reasons that never clear by waiting (squeue's %r); shell-style patterns.
NEVER_START = [
    "PartitionConfig",
    "PartitionNodeLimit",
    "PartitionTimeLimit",
    "ReqNodeNotAvail",
    "BadConstraints",
    "InvalidAccount",
    "InvalidQOS",
    "DependencyNeverSatisfied",
    "QOSMax*PerJob*",
    "AssocMax*PerJob*",
]
_OWN_KNOBS = ("threads_per_worker", "mem_gb_per_worker", "never_start", "poll_s", "point_exclude")


@dataclass
class SlurmConf(SlurmQueueConf):
    """hydra/launcher=slurm: submitit's SLURM knobs, the request ones automatic when null."""

    _target_: str = "hydra_plugins.tokalign_slurm.SlurmLauncher"
    nodes: Optional[int] = None  # null: launcher.num_nodes
    cpus_per_task: Optional[int] = None  # null: workers x threads_per_worker, at most a node's CPUs
    gpus_per_node: Optional[int] = None  # null: workers where the partition's nodes have GPUs, else none
    mem_gb: Optional[int] = None  # null: workers x mem_gb_per_worker, at most a node's memory
    threads_per_worker: int = 1  # torch threads per worker process (OMP_NUM_THREADS in the job)
    mem_gb_per_worker: int = 8
    timeout_min: int = 240
    max_num_timeout: int = 3  # requeues after a time-out or preemption
    array_parallelism: int = 64
    never_start: list[str] = field(default_factory=lambda: list(NEVER_START))
    poll_s: float = 15.0  # seconds between looks at the queue while waiting
    point_exclude: list[str] = field(default_factory=lambda: list(POINT_EXCLUDE))


ConfigStore.instance().store(group="hydra/launcher", name="tokalign_slurm", node=SlurmConf, provider="tokalign")


# ---------------------------------------------------------------------------------------------
# Sweep points


def with_resume_auto(overrides: Sequence[str]) -> list[str]:
    return [o for o in overrides if not re.match(r"^\+*resume=", o)] + ["resume=auto"]


# ---------------------------------------------------------------------------------------------
# What a partition's nodes offer, and what a point asks for


@dataclass
class Partition:
    """The largest node of a partition, from sinfo (None: unknown)."""

    name: Optional[str] = None
    cpus: Optional[int] = None
    mem_mb: Optional[int] = None
    gres: str = "(null)"
    nodes: Optional[int] = None

    @property
    def has_gpus(self) -> bool:
        return "gpu" in self.gres

    def describe(self) -> str:
        if self.cpus is None:
            return "partition limits unknown (sinfo gave nothing)"
        return (
            f"partition {self.name} has {self.nodes} node(s) with at most {self.cpus} CPUs, "
            f"{self.mem_mb} MB, GRES {self.gres}"
        )


def _int(text: str) -> Optional[int]:
    m = re.match(r"\d+", text.strip())
    return int(m.group()) if m else None


def read_sinfo(text: str, partition: Optional[str]) -> Partition:
    """`sinfo -h -o %P|%c|%m|%G|%D` lines -> the named (or default, `*`) partition's largest node."""
    wanted = set(partition.split(",")) if partition else None
    rows = []
    for line in text.splitlines():
        parts = line.split("|")
        if len(parts) != 5:
            continue
        name = parts[0].strip()
        default = name.endswith("*")
        name = name.rstrip("*")
        if (wanted and name in wanted) or (not wanted and default):
            rows.append((name, *parts[1:]))
    if not rows:
        return Partition(name=partition)
    cpus = [c for c in (_int(r[1]) for r in rows) if c is not None]
    mems = [m for m in (_int(r[2]) for r in rows) if m is not None]
    gres = sorted({r[3].strip() for r in rows if r[3].strip() not in ("", "(null)")})
    return Partition(
        name=",".join(sorted({r[0] for r in rows})),
        cpus=max(cpus) if cpus else None,
        mem_mb=max(mems) if mems else None,
        gres=",".join(gres) or "(null)",
        nodes=sum(_int(r[4]) or 0 for r in rows),
    )


def query_partition(partition: Optional[str]) -> Partition:
    cmd = ["sinfo", "-h", "-o", "%P|%c|%m|%G|%D"] + (["-p", partition] if partition else [])
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return Partition(name=partition)
    return read_sinfo(out, partition)


@dataclass(frozen=True)
class Request:
    """One job's resources; `threads` is what each worker gets (OMP_NUM_THREADS)."""

    nodes: int
    cpus_per_task: int
    gpus_per_node: int
    mem_gb: int
    threads: int

    def describe(self) -> str:
        gpus = f"{self.gpus_per_node} GPUs" if self.gpus_per_node else "no GPUs"
        return f"{self.nodes} node(s) x {self.cpus_per_task} CPUs, {self.mem_gb} GB, {gpus}"

    def sbatch_params(self) -> dict[str, Any]:
        return {
            "nodes": self.nodes,
            "cpus_per_task": self.cpus_per_task,
            "mem_gb": self.mem_gb,
            "gpus_per_node": self.gpus_per_node or None,
        }


def workers_of(launcher: DictConfig) -> tuple[int, int]:
    """(worker processes per node, nodes) of a run's launcher (`launcher=local`: one process)."""
    if launcher.get("name", "local") == "local":
        return 1, 1
    return int(launcher.get("num_gpus", 1)), int(launcher.get("num_nodes", 1))


def request_for(launcher: DictConfig, knobs: dict[str, Any], part: Partition) -> Request:
    """Explicit knobs as given; null ones from the workers, capped at the partition's node."""
    workers, nodes = workers_of(launcher)
    cpus = knobs.get("cpus_per_task")
    if cpus is None:
        cpus = workers * int(knobs.get("threads_per_worker") or 1)
        cpus = min(cpus, part.cpus) if part.cpus else cpus
    gpus = knobs.get("gpus_per_node")
    if gpus is None:
        gpus = workers if part.has_gpus else 0
    mem = knobs.get("mem_gb")
    if mem is None:
        mem = workers * int(knobs.get("mem_gb_per_worker") or 8)
        mem = min(mem, max(1, part.mem_mb // 1024)) if part.mem_mb else mem
    return Request(
        nodes=int(knobs.get("nodes") or nodes),
        cpus_per_task=max(1, int(cpus)),
        gpus_per_node=int(gpus),
        mem_gb=int(mem),
        threads=max(1, int(cpus) // workers),
    )


def never_starts(reason: str, patterns: Sequence[str]) -> Optional[str]:
    """The reason's code (`ReqNodeNotAvail, UnavailableNodes:x` -> `ReqNodeNotAvail`) if it never clears."""
    code = re.split(r"[,\s]", reason.strip(), maxsplit=1)[0].strip("()")
    return code if code and any(fnmatch.fnmatchcase(code, p) for p in patterns) else None


def queue(user: Optional[str] = None) -> Optional[dict[str, tuple[str, str]]]:
    """{job id: (state, reason)} of the user's jobs, array tasks one by one; None if squeue failed."""
    cmd = ["squeue", "-h", "-r", "-o", "%i|%T|%r", "-u", user or str(os.getuid())]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    rows = (line.split("|", 2) for line in out.splitlines())
    return {r[0].strip(): (r[1].strip(), r[2].strip()) for r in rows if len(r) == 3}


# ---------------------------------------------------------------------------------------------
# The launcher


@dataclass
class Point:
    index: int
    overrides: list[str]
    name: str
    run_dir: Path
    request: Optional[Request] = None
    job: Any = None
    result: Optional[JobReturn] = None
    failure: Optional[str] = None


def _check_point(p: Point, cfg: DictConfig) -> None:
    """Every point's config is validated before any job is submitted: one line for the first bad one."""
    from tokalign.app.compose import validate
    from tokalign.errors import UserError

    run_cfg = OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"])
    with open_dict(run_cfg):
        run_cfg.output_dir = str(p.run_dir)  # Hydra resolves it inside the job
        if run_cfg.launcher.get("num_nodes", 1) > 1 and not OmegaConf.select(run_cfg, "launcher.nodelist"):
            run_cfg.launcher.nodelist = "slurm-job-nodes"  # SLURM sets SLURM_JOB_NODELIST inside the job
    try:
        validate(run_cfg)
    except UserError as err:
        sys.exit(f"tokalign: error: sweep point {p.name}: {err} (nothing was submitted)")


class TokalignSlurmLauncher(BaseSubmititLauncher):
    _EXECUTOR = "slurm"

    def __init__(self, **params: Any) -> None:
        own = {k: params.pop(k) for k in _OWN_KNOBS if k in params}
        super().__init__(**params)
        own = {k: OmegaConf.to_container(v) if OmegaConf.is_config(v) else v for k, v in own.items()}
        self.threads_per_worker = int(own.get("threads_per_worker", 1))
        self.mem_gb_per_worker = int(own.get("mem_gb_per_worker", 8))
        self.never_start = list(own.get("never_start", NEVER_START))
        self.poll_s = float(own.get("poll_s", 15.0))
        self.point_exclude = list(own.get("point_exclude", POINT_EXCLUDE))

    # -- in the job ------------------------------------------------------------------------

    def __call__(
        self, sweep_overrides: list[str], job_dir_key: str, job_num: int, job_id: str, singleton_state: dict
    ) -> JobReturn:
        import submitit

        Singleton.set_state(singleton_state)
        setup_globals()
        cfg = self.hydra_context.config_loader.load_sweep_config(self.config, list(sweep_overrides))
        with open_dict(cfg.hydra):
            cfg.hydra.job.id = submitit.JobEnvironment().job_id
            cfg.hydra.job.num = job_num
            cfg.hydra.sweep.subdir = point_name(sweep_overrides, self.point_exclude)
        ret = run_job(
            hydra_context=self.hydra_context,
            task_function=self.task_function,
            config=cfg,
            job_dir_key=job_dir_key,
            job_subdir_key="hydra.sweep.subdir",
        )
        if ret.status == JobStatus.FAILED:  # the pickled exception loses its traceback: log it here
            err = ret._return_value
            traceback.print_exception(type(err), err, err.__traceback__, file=sys.stderr)
        return ret

    def checkpoint(self, sweep_overrides: list[str], *args: Any) -> Any:
        """On time-out or preemption submitit requeues this: the same point, continuing its checkpoints."""
        import submitit

        return submitit.helpers.DelayedSubmission(self, with_resume_auto(sweep_overrides), *args)

    # -- at submission ---------------------------------------------------------------------

    def _knobs(self) -> dict[str, Any]:
        return {
            "threads_per_worker": self.threads_per_worker,
            "mem_gb_per_worker": self.mem_gb_per_worker,
            **{k: self.params.get(k) for k in ("nodes", "cpus_per_task", "gpus_per_node", "mem_gb")},
        }

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        part = query_partition(self.params.get("partition"))
        points = []
        for i, overrides in enumerate(job_overrides):
            name = point_name(overrides, self.point_exclude)
            points.append(Point(initial_job_idx + i, list(overrides), name, sweep_dir / name))
        names = [p.name for p in points]
        for p in points:
            if names.count(p.name) > 1:
                sys.exit(
                    f"tokalign: two sweep points share the run directory {p.name!r}: "
                    f"their only difference is in hydra.launcher.point_exclude ({', '.join(self.point_exclude)})"
                )
        log.info(f"Submitit 'slurm' sweep output dir : {sweep_dir}")
        todo = []
        for p in points:
            cfg = self.hydra_context.config_loader.load_sweep_config(self.config, p.overrides)
            _check_point(p, cfg)
            summary = p.run_dir / "summary.json"
            resume = cfg.get("resume", "never")
            if summary.exists() and getattr(resume, "value", resume) == "auto":
                p.result = _finished(p, summary)
                log.info(f"\t#{p.index} : {p.name} finished already, left as it is ({summary})")
                continue
            if summary.exists():
                log.warning(
                    f"\t#{p.index} : {p.name} finished already; resume=never trains it again from scratch "
                    "(resume=auto leaves it as it is)"
                )
            p.request = request_for(cfg.launcher, self._knobs(), part)
            todo.append(p)
        if todo:
            self._submit(todo, part)
            self._wait(todo, part)
        failed = [p for p in points if p.failure]
        for p in failed:
            print(f"tokalign: point {p.name} failed: {p.failure}", file=sys.stderr)
        if failed:
            sys.exit(
                f"tokalign: {len(failed)} of {len(points)} points failed; the others are in {sweep_dir}. "
                f"Resubmit the same command with resume=auto hydra.sweep.dir={sweep_dir} to continue them "
                "(finished points are left as they are)"
            )
        return [p.result for p in points]

    def _submit(self, todo: list[Point], part: Partition) -> None:
        """One array per distinct request."""
        import submitit

        executor = submitit.AutoExecutor(
            cluster="slurm",
            folder=self.params["submitit_folder"],
            slurm_max_num_timeout=self.params.get("max_num_timeout", 0),
        )
        for request in dict.fromkeys(p.request for p in todo):
            group = [p for p in todo if p.request == request]
            executor.update_parameters(**self._sbatch_params(request))
            args = [
                (p.overrides, "hydra.sweep.dir", p.index, f"job_id_for_{p.index}", Singleton.get_state()) for p in group
            ]
            try:
                jobs = executor.map_array(self, *zip(*args))
            except Exception as err:  # sbatch refused: the request cannot be met at all
                sys.exit(
                    f"tokalign: sbatch refused {len(group)} job(s) asking {request.describe()}: "
                    f"{_sbatch_error(err)}; {part.describe()}"
                )
            for p, job in zip(group, jobs):
                p.job = job
                log.info(f"\t#{p.index} : {p.name} -> job {job.job_id} ({request.describe()})")

    def _sbatch_params(self, request: Request) -> dict[str, Any]:
        skip = {"submitit_folder", "max_num_timeout", "nodes", "cpus_per_task", "gpus_per_node", "mem_gb", "setup"}
        params = {k: v for k, v in self.params.items() if k not in skip}
        # Every worker gets its share of the task's CPUs; Slurm 22.05-23.02's srun does not
        # inherit --cpus-per-task from the batch script unless SRUN_CPUS_PER_TASK says it.
        setup = [
            f"export OMP_NUM_THREADS={request.threads}",
            "export SRUN_CPUS_PER_TASK=$SLURM_CPUS_PER_TASK",
            *(self.params.get("setup") or []),
        ]
        params.update(request.sbatch_params(), setup=setup)
        base = set(BaseQueueConf.__dataclass_fields__)  # submitit's shared names; the rest are slurm_*
        return {k if k in base else f"slurm_{k}": v for k, v in params.items() if v is not None}

    # -- waiting ---------------------------------------------------------------------------

    def _wait(self, points: list[Point], part: Partition) -> None:
        """Until every job is done; a job pending for a never-clearing reason on two looks in a row
        fails the sweep at once (its jobs that cannot start are cancelled)."""
        from submitit.slurm.slurm import SlurmJob

        live = {p.job.job_id: p for p in points}
        suspect: dict[str, str] = {}
        gone: dict[str, int] = {}
        delay, next_look = 1.0, time.time() + 1.0
        while live:
            time.sleep(1.0)
            for jid, p in list(live.items()):  # a result file is cheap to look for: every second
                if p.job.paths.result_pickle.exists():
                    self._collect(p)
                    del live[jid]
            if not live or time.time() < next_look:
                continue
            delay = min(delay * 2, self.poll_s)
            next_look = time.time() + delay
            SlurmJob.watcher.update()
            jobs = queue()
            for jid, p in list(live.items()):
                if SlurmJob.watcher.is_done(jid, mode="cache"):
                    self._collect(p)
                    del live[jid]
                elif jobs is not None and jid not in jobs:  # left the queue without a result (no accounting)
                    gone[jid] = gone.get(jid, 0) + 1
                    if gone[jid] >= 3:
                        self._collect(p)
                        del live[jid]
            if jobs is None:
                continue
            never = {
                jid: code
                for jid in live
                if jobs.get(jid, ("", ""))[0] == "PENDING"
                for code in [never_starts(jobs[jid][1], self.never_start)]
                if code
            }
            confirmed = {jid: code for jid, code in never.items() if suspect.get(jid) == code}
            suspect = never
            if confirmed:
                subprocess.run(["scancel", *confirmed], capture_output=True)
                jid, code = next(iter(confirmed.items()))
                p = live[jid]
                more = (
                    f" (and {len(confirmed) - 1} more job(s) of this sweep, cancelled too)"
                    if len(confirmed) > 1
                    else ""
                )
                rest = len(live) - len(confirmed)
                sys.exit(
                    f"tokalign: SLURM job {jid} (point {p.name}) can never start ({code}): it asks "
                    f"{p.request.describe()}; {part.describe()}. Set hydra.launcher.cpus_per_task / mem_gb / "
                    f"gpus_per_node / nodes / partition to fit{more}"
                    + (f"; {rest} other job(s) keep running" if rest else "")
                )

    def _collect(self, p: Point) -> None:
        job = p.job
        if job.paths.result_pickle.exists():
            try:
                ret = job.results()[0]
            except Exception as err:  # the job's own code raised outside the task
                p.failure = f"{type(err).__name__}: {_last_line(str(err))} (log {job.paths.stderr})"
                return
            if ret.status == JobStatus.FAILED:
                err = ret._return_value
                p.failure = f"{type(err).__name__}: {_last_line(str(err))} (log {job.paths.stderr})"
            p.result = ret
            return
        state = job.watcher.get_state(job.job_id, mode="cache")
        if state == "COMPLETED":  # the result file may reach a shared file system late
            for _ in range(30):
                if job.paths.result_pickle.exists():
                    return self._collect(p)
                time.sleep(1)
        p.failure = (
            f"job {job.job_id} ended {state} without a result; {p.run_dir} keeps its last sealed "
            f"checkpoint (log {job.paths.stderr})"
        )


def _finished(p: Point, summary: Path) -> JobReturn:
    ret = JobReturn(overrides=p.overrides, working_dir=str(p.run_dir), status=JobStatus.COMPLETED)
    ret.return_value = json.loads(summary.read_text())
    return ret


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "(no message)"


def _sbatch_error(err: Exception) -> str:
    lines = [line for line in str(err).splitlines() if "error:" in line]
    return " / ".join(line.split("error:", 1)[1].strip() for line in lines) or _last_line(str(err))
