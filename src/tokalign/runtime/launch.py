"""Launchers: how a validated config becomes training processes, and who owns them.

The parent (the `tokalign train` process, one per node) holds the run directory's lock
(node 0's; the others of a multi-node job join it: tokalign.runtime.nodes),
writes the resolved config to `<run_dir>/resolved.yaml` once (node 0), and then either trains in the
same process (`local`) or spawns one worker per device with `accelerate launch`, `torchrun`
or `deepspeed`, each running `python -m tokalign.runtime.worker <run_dir>/resolved.yaml`: ranks never
compose a config or create a directory of their own.

The parent owns its workers: they run in its process group, SIGTERM to the parent is passed
on to them, and if the parent dies (even by SIGKILL) the spawner gets SIGTERM through the
kernel's parent-death signal and every worker gets it from its own; so no worker outlives a
launch, and the run-dir lock stays held until the last of them has exited. A preemption
(SIGUSR2) is the workers' to act on: they checkpoint, exit, and only then does the parent
hand over to the scheduler's requeue.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from tokalign.artifacts.files import atomic_text
from tokalign.artifacts.rundir import check_unused, claim, die_with_parent, update_record
from tokalign.artifacts.tracking import check_logger, say
from tokalign.cluster import preemption
from tokalign.cluster.distributed import deepspeed_config
from tokalign.config import option, world_size
from tokalign.data import mixture
from tokalign.errors import DataError, LaunchError, ModelError
from tokalign.modeling import quantization
from tokalign.runtime import nodes
from tokalign.runtime.nodes import rendezvous

NODES_HOSTFILE = "deepspeed_hostfile"


def worker_command(cfg: DictConfig, config_path: Path, addr: str, port: int) -> list[str]:
    """The command that starts this node's workers on the resolved config."""
    la = cfg.launcher
    runner, n = option(la.runner), world_size(la)
    worker = ["-m", "tokalign.runtime.worker", str(config_path)]
    if runner == "torchrun":
        return [
            sys.executable,
            "-m",
            "torch.distributed.run",
            f"--nproc_per_node={la.num_gpus}",
            f"--nnodes={la.num_nodes}",
            f"--node_rank={la.node_rank}",
            f"--master_addr={addr}",
            f"--master_port={port}",
            *worker,
        ]
    if runner == "deepspeed":
        cmd = [
            sys.executable,  # the `deepspeed` script of this environment, found without PATH
            "-m",
            "deepspeed.launcher.runner",
            "--no_local_rank",
            f"--num_gpus={la.num_gpus}",
            f"--num_nodes={la.num_nodes}",
            f"--master_addr={addr}",
            f"--master_port={port}",
        ]
        if la.hostfile:
            cmd.append(f"--hostfile={la.hostfile}")
        elif la.num_nodes > 1:  # every node starts its own: the hostfile only counts the nodes' workers
            hostfile = config_path.parent / NODES_HOSTFILE
            cmd += [f"--hostfile={hostfile}", "--no_ssh", f"--node_rank={la.node_rank}"]
        return [*cmd, "--module", "tokalign.runtime.worker", str(config_path)]
    precision = {"fp32": "no"}.get(option(cfg.trainer.precision), option(cfg.trainer.precision))
    cmd = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        f"--num_processes={n}",
        f"--num_machines={la.num_nodes}",
        f"--machine_rank={la.node_rank}",
        f"--main_process_ip={addr}",
        f"--main_process_port={port}",
        f"--mixed_precision={precision}",
    ]
    if la.name == "deepspeed":
        cmd += ["--use_deepspeed", f"--deepspeed_config_file={config_path.parent / 'deepspeed.json'}"]
        if la.num_nodes > 1:
            cmd.append("--deepspeed_multinode_launcher=standard")
    else:
        # --multi_gpu is accelerate's switch for any multi-process DDP, on CPUs too;
        # `--cpu --num_processes N` would start a single process.
        cmd.append("--multi_gpu")
    return [*cmd, *worker]


def nodes_hostfile(la: DictConfig) -> str:
    """DeepSpeed's runner takes the job's shape from a hostfile even when each node starts itself
    (`--no_ssh`); the names are only labels then."""
    return "".join(f"node{i} slots={la.num_gpus}\n" for i in range(la.num_nodes))


def write_resolved(cfg: DictConfig) -> Path:
    run_dir = Path(cfg.output_dir)
    return atomic_text(run_dir / "resolved.yaml", OmegaConf.to_yaml(cfg))


def _spawner_setup() -> None:
    """In the spawner's process: die with this one, and leave SIGUSR2 to the workers (they
    checkpoint on it; the spawner's default action would end them all first)."""
    die_with_parent()
    signal.signal(signal.SIGUSR2, signal.SIG_IGN)


def _spawn(cmd: list[str], lock_fd: int, run_dir: Path, peers: nodes.Peers | None = None) -> int:
    """Run the workers' spawner as a child that dies with this process, passing SIGTERM on.

    SIGINT from a terminal and a scheduler's signals reach the workers themselves; this process
    only records them (tokalign.cluster.preemption), so a preemption waits for the workers' checkpoint
    before handing over to the scheduler's requeue. The spawner keeps the run-dir lock's
    descriptor, so the directory stays claimed while any of it runs. In a multi-node job, a peer
    node that dies (`peers`) stops this node's workers too.
    """
    proc = subprocess.Popen(cmd, pass_fds=(lock_fd,), preexec_fn=_spawner_setup)
    preemption.install()
    forwarded = False
    dead = None
    try:
        while True:
            try:
                rc = proc.wait(timeout=nodes.POLL_S)
                break
            except subprocess.TimeoutExpired:
                if forwarded:
                    continue
                dead = peers.dead() if peers is not None else None
                if preemption.requests().stop or dead:
                    proc.send_signal(signal.SIGTERM)
                    forwarded = True
        if dead:
            raise LaunchError(
                f"{dead}; this node's workers were stopped too. resume=auto on every node continues {run_dir} "
                "from its last sealed checkpoint"
            )
        request = preemption.poll(sync=lambda flags: flags)
        if request.checkpoint or rc == preemption.EXIT_PREEMPTED:
            preemption.hand_over()
        if request.stop:
            raise request.stopped("", f"resume=auto continues {run_dir} from its last sealed checkpoint")
        return rc
    finally:
        preemption.uninstall()
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _run_node(cfg: DictConfig, cmd: list[str], lock_fd: int, attempt: str | None) -> int:
    """This node's workers, start to end; in a multi-node job (`attempt`) the exit status is recorded
    in the node's lock before it is let go, which tells the other nodes whether it ended well."""
    say("launching " + " ".join(cmd))
    rc, stopped = 1, False
    try:
        rc = _spawn(cmd, lock_fd, Path(cfg.output_dir), nodes.Peers.of(cfg, attempt) if attempt else None)
    except preemption.Stopped:
        stopped = True  # at a step boundary the workers of every node agreed on: not a node lost
        raise
    finally:
        if attempt:
            stopped = stopped or rc == preemption.EXIT_PREEMPTED
            update_record(lock_fd, exit=rc, ended=time.time(), **({"stopped": True} if stopped else {}))
    return rc


def _previous_run(run_dir: Path) -> list[str]:
    return [name for name in ("summary.json", "model", "checkpoints", "metrics.jsonl") if (run_dir / name).exists()]


def _hub_problem(repo_id: str, repo_type: str) -> str | None:
    """Why a hub repository cannot be had, or None: in the local cache, or reachable, public or granted."""
    from huggingface_hub import HfApi, constants
    from huggingface_hub.errors import GatedRepoError, HFValidationError, RepositoryNotFoundError

    snapshots = Path(constants.HF_HUB_CACHE) / f"{repo_type}s--{repo_id.replace('/', '--')}" / "snapshots"
    if snapshots.is_dir() and any(snapshots.glob("*/*")):
        return None
    if constants.HF_HUB_OFFLINE:
        return (
            "is not in the local Hugging Face cache and HF_HUB_OFFLINE=1 forbids downloading it: download it where "
            "there is network (`hf download`), or pass a local copy with .path="
        )
    try:
        HfApi().auth_check(repo_id, repo_type=repo_type)
    except GatedRepoError:
        return "is gated: accept its terms on huggingface.co and log in (`hf auth login`), or pass a local copy with .path="
    except (RepositoryNotFoundError, HFValidationError):
        return "is not on the Hugging Face Hub (misspelt? a private one needs `hf auth login`)"
    except OSError as err:
        return f"cannot be reached on the Hugging Face Hub ({str(err).splitlines()[0]}); pass a local copy with .path="
    return None


def check_sources(cfg: DictConfig) -> None:
    """The model and dataset a run names can be had (a local path exists; a hub id is cached, or reachable
    and granted): one line now, not a failure in every worker later."""
    quantization.check_available(cfg.model)
    check_logger(cfg)
    path = cfg.model.get("path")
    if path and not (Path(str(path)).expanduser() / "config.json").exists():
        hint = (
            f"; a hub model is model.source=hub model.hub_id={path}"
            if not Path(str(path)).expanduser().exists()
            else ""
        )
        raise ModelError(f"model.path={path} is not a Hugging Face checkpoint directory (no config.json){hint}")
    datasets = [component for component, _ in mixture.components(cfg.dataset)] or [cfg.dataset]
    for d in datasets:
        if d.get("path") and not Path(str(d.path)).expanduser().exists():
            raise DataError(f"dataset.path={Path(str(d.path)).expanduser()} does not exist")
    wanted = []
    if not cfg.model.get("path") and option(cfg.model.source) == "hub":
        wanted.append(("model", "model", cfg.model.hub_id))
    wanted += [("dataset", "dataset", d.hub_id) for d in datasets if not d.get("path") and option(d.source) == "hub"]
    for group, repo_type, repo_id in wanted:
        problem = _hub_problem(str(repo_id), repo_type)
        if problem:
            raise LaunchError(f"{group}.hub_id={repo_id} " + problem.replace(".path=", f"{group}.path=<local copy>"))


def launch(cfg: DictConfig, hydra_files: dict[str, str] | None = None) -> dict:
    """Run a validated, resolved config with its launcher; returns the final metrics.

    With resume=auto a finished run (summary.json) is left as it is; with resume=never a
    directory holding an earlier run's results is refused rather than mixed with a new one.
    The model and dataset are checked first (check_sources), before anything is spawned.
    Only then is anything written: Hydra's record of the run (`hydra_files`, written into
    `<run_dir>/.hydra/` here rather than by Hydra, which would write before these checks), then
    resolved.yaml. Node R > 0 of a multi-node job writes none of these: it joins node 0's run
    directory (tokalign.runtime.nodes).
    """
    check_sources(cfg)
    run_dir = Path(cfg.output_dir)
    if nodes.multi_node(cfg) and cfg.launcher.node_rank > 0:
        return _join(cfg)
    record = nodes.job_record(cfg) if nodes.multi_node(cfg) else None
    with claim(run_dir, record=record) as lock_fd:
        try:
            summary = run_dir / "summary.json"
            if option(cfg.resume) == "auto" and summary.exists():
                say(f"{run_dir} already finished (summary.json); nothing to do")
                if record:
                    update_record(lock_fd, exit=0, ended=time.time())
                return json.loads(summary.read_text())
            if option(cfg.resume) == "never":
                check_unused(run_dir)
            for name, text in (hydra_files or {}).items():
                atomic_text(run_dir / ".hydra" / name, text)
            config_path = write_resolved(cfg)
            if cfg.launcher.name == "local":
                from tokalign.runtime.run import run_training

                return run_training(cfg)
            if cfg.launcher.name == "deepspeed":
                atomic_text(run_dir / "deepspeed.json", json.dumps(deepspeed_config(cfg), indent=2))
                if option(cfg.launcher.runner) == "deepspeed" and nodes.multi_node(cfg) and not cfg.launcher.hostfile:
                    atomic_text(run_dir / NODES_HOSTFILE, nodes_hostfile(cfg.launcher))
            if cfg.launcher.name == "ddp" and world_size(cfg.launcher) == 1:
                cmd = [sys.executable, "-m", "tokalign.runtime.worker", str(config_path)]  # nothing to synchronise
            else:
                cmd = worker_command(cfg, config_path, *rendezvous(cfg.launcher))
            if record:
                update_record(lock_fd, ready=True)  # the other nodes may start their workers on resolved.yaml
        except BaseException:
            if record:  # node 0 failed before its workers started: the other nodes stop waiting
                update_record(lock_fd, exit=1, ended=time.time())
            raise
        rc = _run_node(cfg, cmd, lock_fd, record and record["attempt"])
    if rc != 0:
        raise LaunchError(f"launcher={cfg.launcher.name}: workers exited with status {rc} (run dir {run_dir})")
    return json.loads(summary.read_text()) if summary.exists() else {}


def _join(cfg: DictConfig) -> dict:
    """Node R > 0: once node 0 holds the run directory for this job, start this node's workers on its
    resolved.yaml; returns {} (node 0 reports the run's metrics)."""
    run_dir, rank = Path(cfg.output_dir), cfg.launcher.node_rank
    with claim(run_dir, lock=nodes.node_lock(rank), record={"node": rank}) as lock_fd:
        if option(cfg.resume) == "auto" and (run_dir / "summary.json").exists():
            say(f"{run_dir} already finished (summary.json); nothing to do")
            return {}
        node0 = nodes.wait_for_node0(run_dir, cfg, say)
        update_record(lock_fd, job=node0["job"], attempt=node0["attempt"])
        say(f"node {rank} joins the job of pid {node0['pid']} on {node0['host']} ({node0['job']}) in {run_dir}")
        cmd = worker_command(cfg, run_dir / "resolved.yaml", *rendezvous(cfg.launcher))
        rc = _run_node(cfg, cmd, lock_fd, node0["attempt"])
    if rc != 0:
        raise LaunchError(
            f"launcher={cfg.launcher.name}: node {rank}'s workers exited with status {rc} (run dir {run_dir})"
        )
    say(f"node {rank}: done; node 0 writes the run's results in {run_dir}")
    return {}
