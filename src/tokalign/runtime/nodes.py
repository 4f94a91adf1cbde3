"""One job, one run directory, any number of nodes: node 0 owns the directory, the others join it.

Node 0 claims `<run_dir>/.tokalign.lock` as a one-node run does and records in it the job: its
key (rendezvous address and port, number of nodes, SLURM job id), a digest of its resolved config
(`launcher.node_rank` aside) and a fresh attempt id; once `resolved.yaml` (and `deepspeed.json`)
are written it adds `ready`. Node R > 0 claims `<run_dir>/.tokalign.node<R>.lock` (one launcher
per node), waits until node 0's lock is held by the same job and ready, records the attempt it
joined, and starts its workers on node 0's `resolved.yaml`; it writes nothing else. A run
directory held by anything else (another run, a one-node run, another config) is refused with
the one line a second writer always gets.

While the workers run, each launcher watches its peers' locks (node 0 every node that joined
this attempt, the others node 0): a launcher records its exit status before it lets go of its
lock, so a lock of this attempt released without status 0 is a node that died, and the watcher stops its own
workers too. A node stopped by a signal (cancel, time limit, preemption) records that it was: the
workers of every node agree on the step to stop at, so that is no lost node. Locks are `flock`s, which a shared file system (NFS v4, Lustre, GPFS) carries
between hosts; the kernel drops them when the last process holding one exits, however it exits.
"""

from __future__ import annotations

import hashlib
import os
import re
import socket
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from tokalign.artifacts.rundir import LOCK, holder_text, read_record
from tokalign.errors import LaunchError, UserError

DEFAULT_MULTINODE_PORT = 29500


def first_host(nodelist: str) -> str:
    """The first host of a SLURM node list: "gpu[03-05,9],cpu1" -> "gpu03"."""
    m = re.match(r"([^,\[]+)(?:\[([^\]]+)\])?", nodelist.strip())
    if not m:
        raise ValueError(f"cannot read node list {nodelist!r}")
    prefix, ranges = m.groups()
    return prefix + ranges.split(",")[0].split("-")[0] if ranges else prefix


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rendezvous(la: DictConfig) -> tuple[str, int]:
    """Master address and port of this run (the same on every node)."""
    if la.num_nodes == 1:
        return la.master_addr or "127.0.0.1", la.master_port or _free_port()
    addr = la.master_addr or (first_host(la.nodelist) if la.nodelist else "")
    return addr, la.master_port or DEFAULT_MULTINODE_PORT


JOIN_TIMEOUT_S = 600.0  # how long node R waits for node 0 to claim the run directory
POLL_S = 0.5
STARTED = time.time()  # about when this process started (it is imported before any waiting)


def node_lock(rank: int) -> str:
    return LOCK if rank == 0 else f".tokalign.node{rank}.lock"


def multi_node(cfg: DictConfig) -> bool:
    return cfg.launcher.name != "local" and cfg.launcher.num_nodes > 1


def job_key(la: DictConfig) -> str:
    """What every node of one job shares and another job does not: its rendezvous and SLURM job."""
    addr, port = rendezvous(la)
    slurm = os.environ.get("SLURM_JOB_ID")
    return f"{addr}:{port} x{la.num_nodes}" + (f" slurm job {slurm}" if slurm else "")


def config_digest(cfg: DictConfig) -> str:
    """The resolved config's digest, the same on every node (only `launcher.node_rank` differs)."""
    same = OmegaConf.to_container(cfg, resolve=True)
    same["launcher"]["node_rank"] = 0
    return hashlib.sha256(OmegaConf.to_yaml(OmegaConf.create(same)).encode()).hexdigest()[:16]


def job_record(cfg: DictConfig) -> dict:
    """What node 0 records in its lock: the job, and this attempt at it."""
    return {"job": job_key(cfg.launcher), "config": config_digest(cfg), "attempt": uuid.uuid4().hex[:12]}


def _in_use(run_dir: Path, record: dict | None, why: str = "") -> UserError:
    return UserError(
        f"run dir {run_dir} is in use by {holder_text(record)}{why}; wait for it to finish, or choose another "
        "hydra.run.dir"
    )


def check_joinable(run_dir: Path, cfg: DictConfig, same_config: bool = True) -> dict | None:
    """Node 0's record if it holds `run_dir` for this job; None if nobody holds it; a one-line error if
    another run does (`same_config=False`: by its job key alone, for a config not resolved yet)."""
    held, record = read_record(run_dir / LOCK)
    if not held or record is None:
        return None
    if "job" not in record:
        raise _in_use(run_dir, record)
    if record["job"] != job_key(cfg.launcher):
        raise _in_use(run_dir, record, f", node 0 of another job ({record['job']}, not {job_key(cfg.launcher)})")
    if same_config and record.get("config") != config_digest(cfg):
        raise _in_use(run_dir, record, ", node 0 of the same rendezvous with another config")
    return record


def wait_for_node0(run_dir: Path, cfg: DictConfig, say, timeout: float = JOIN_TIMEOUT_S) -> dict:
    """Node 0's record once it holds `run_dir` for this job and has written resolved.yaml; node 0 of
    an attempt that ends before that ends this node's wait."""
    deadline = time.monotonic() + timeout
    seen: set[str] = set()
    said = False
    while True:
        record = check_joinable(run_dir, cfg)
        if record is not None:
            seen.add(record.get("attempt", ""))
            if record.get("ready"):
                return record
        else:
            held, last = read_record(run_dir / LOCK)
            if not held and last and _ended_attempt_of(last, cfg, seen):
                status = f"exit status {last['exit']}" if "exit" in last else "killed"
                raise LaunchError(
                    f"node 0 of this job ({holder_text(last)}) ended ({status}) before this node joined; "
                    "its output says why"
                )
        if time.monotonic() > deadline:
            raise LaunchError(
                f"node 0 of this job ({job_key(cfg.launcher)}) did not start in {run_dir} within {timeout:.0f} s: "
                "start the same command with launcher.node_rank=0"
            )
        if not said:
            say(f"waiting for node 0 of this job ({job_key(cfg.launcher)}) to claim {run_dir}")
            said = True
        time.sleep(POLL_S)


def _ended_attempt_of(record: dict, cfg: DictConfig, seen: set[str]) -> bool:
    """Whether node 0's last attempt, now over, was the one this node came to join: seen running, or
    of this job and ended after this process started."""
    if record.get("attempt") in seen:
        return True
    same = record.get("job") == job_key(cfg.launcher) and record.get("config") == config_digest(cfg)
    return same and record.get("ended", 0) >= STARTED


@dataclass
class Peers:
    """The other nodes' launchers, as their locks show them; `dead()` names one that ended badly.
    A node's lock names the attempt it joined: one that names this attempt and is let go has ended."""

    run_dir: Path
    attempt: str
    ranks: list[int]

    @classmethod
    def of(cls, cfg: DictConfig, attempt: str) -> Peers:
        la = cfg.launcher
        ranks = list(range(1, la.num_nodes)) if la.node_rank == 0 else [0]
        return cls(Path(cfg.output_dir), attempt, ranks)

    def dead(self) -> str | None:
        for rank in list(self.ranks):
            held, record = read_record(self.run_dir / node_lock(rank))
            if held or record is None or record.get("attempt") != self.attempt:
                continue  # running, not (yet) of this attempt, or its record being written
            if record.get("exit") == 0 or record.get("stopped"):
                self.ranks.remove(rank)  # finished its share, or stopped at the step every node stops at
                continue
            status = f"exit status {record['exit']}" if "exit" in record else "killed"
            return f"node {rank} of this job ({holder_text(record)}) ended ({status})"
        return None
