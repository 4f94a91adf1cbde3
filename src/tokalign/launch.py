"""Launchers: how a validated config becomes training processes.

The parent (the `tokalign train` process, one per node) composes and resolves the config
once and writes it to `<run_dir>/resolved.yaml`. `local` then trains in the same process;
`ddp` and `deepspeed` spawn one worker per device with `accelerate launch`, `torchrun` or
`deepspeed`, each running `python -m tokalign.worker <run_dir>/resolved.yaml`: ranks never
compose a config or create a directory of their own.

DeepSpeed's JSON is built here from `cfg.trainer` + `cfg.launcher` (written to
`<run_dir>/deepspeed.json` for the record) and handed to the HF Trainer as
`TrainingArguments.deepspeed`, so batch size, accumulation, clipping, precision and learning
rate are the trainer's own numbers and the Trainer checks them against the world size.
"""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import sys
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, Optional

from omegaconf import DictConfig, OmegaConf

from tokalign.checkpoint import write_text_atomic
from tokalign.config import option


class LaunchError(RuntimeError):
    """The worker processes failed; their output above says why."""


class Runner(str, Enum):
    accelerate = "accelerate"
    torchrun = "torchrun"
    deepspeed = "deepspeed"


class Offload(str, Enum):
    none = "none"
    cpu = "cpu"
    nvme = "nvme"


@dataclass
class LocalLauncher:
    name: str = "local"


@dataclass
class DDPLauncher:
    name: str = "ddp"
    runner: Runner = Runner.accelerate
    num_gpus: int = 1  # worker processes per node: one per GPU (CPU processes on a machine without GPUs)
    num_nodes: int = 1
    node_rank: int = 0
    master_addr: Optional[str] = None  # None: this host on one node, else the first host of `nodelist`
    master_port: int = 0  # 0: a free port (one node only)
    nodelist: Optional[str] = None  # SLURM-style host list, e.g. "gpu[01-04]"
    backend: str = "auto"  # auto: nccl with GPUs, gloo without


@dataclass
class DeepSpeedLauncher(DDPLauncher):
    name: str = "deepspeed"
    zero_stage: int = 2
    offload_optimizer: Offload = Offload.none
    offload_param: Offload = Offload.none  # ZeRO-3 only
    nvme_path: str = "/local_nvme"
    hostfile: Optional[str] = None  # runner=deepspeed: start every node from this one over ssh/pdsh
    config: dict[str, Any] = field(default_factory=dict)  # merged last into the generated JSON


LAUNCHERS = {"local": LocalLauncher, "ddp": DDPLauncher, "deepspeed": DeepSpeedLauncher}
DEFAULT_MULTINODE_PORT = 29500


def launcher_schema(name: str):
    from tokalign.config import ConfigError

    if name not in LAUNCHERS:
        raise ConfigError(f"unknown launcher {name!r}; available: {', '.join(sorted(LAUNCHERS))}")
    return LAUNCHERS[name]


def world_size(launcher: DictConfig) -> int:
    return 1 if launcher.name == "local" else launcher.num_gpus * launcher.num_nodes


def check(cfg: DictConfig) -> None:
    """Combinations the schema's types cannot rule out."""
    from tokalign.config import ConfigError

    la = cfg.launcher
    if la.name == "local":
        return
    runner, off_opt, off_par = option(la.runner), "none", "none"
    if la.num_gpus < 1 or la.num_nodes < 1 or not 0 <= la.node_rank < la.num_nodes:
        raise ConfigError(f"launcher: need num_gpus >= 1, num_nodes >= 1, 0 <= node_rank < num_nodes; got {la.num_gpus}, {la.num_nodes}, {la.node_rank}")
    if la.name == "ddp" and runner == "deepspeed":
        raise ConfigError("launcher=ddp runs with runner=accelerate or runner=torchrun; use launcher=deepspeed for DeepSpeed")
    if la.name == "deepspeed":
        off_opt, off_par = option(la.offload_optimizer), option(la.offload_param)
        if la.zero_stage not in (0, 1, 2, 3):
            raise ConfigError(f"launcher.zero_stage must be 0, 1, 2 or 3, got {la.zero_stage}")
        if off_par != "none" and la.zero_stage != 3:
            raise ConfigError("launcher.offload_param needs launcher.zero_stage=3")
        if off_opt != "none" and la.zero_stage == 0:
            raise ConfigError("launcher.offload_optimizer needs launcher.zero_stage >= 1")
        if la.hostfile and runner != "deepspeed":
            raise ConfigError("launcher.hostfile is read by the deepspeed runner: add launcher.runner=deepspeed")
    if la.num_nodes > 1 and not (la.master_addr or la.nodelist or la.get("hostfile")):
        raise ConfigError("a multi-node run needs launcher.master_addr, launcher.nodelist (SLURM sets it) or launcher.hostfile")


def deepspeed_config(cfg: DictConfig) -> dict[str, Any]:
    """The DeepSpeed JSON for this run, every number taken from the config."""
    t, la = cfg.trainer, cfg.launcher
    precision = option(t.precision)
    zero: dict[str, Any] = {"stage": la.zero_stage, "overlap_comm": False, "contiguous_gradients": True}
    for key, device in (("offload_optimizer", option(la.offload_optimizer)), ("offload_param", option(la.offload_param))):
        if device != "none":
            zero[key] = {"device": device, "pin_memory": True, **({"nvme_path": la.nvme_path} if device == "nvme" else {})}
    if la.zero_stage == 3:
        zero["stage3_gather_16bit_weights_on_model_save"] = True
    # No train_batch_size: DeepSpeed derives it (micro x accumulation x world size), and the HF
    # Trainer checks it against a world size of 1 before the process group is known.
    ds: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": t.per_device_batch_size,
        "gradient_accumulation_steps": t.gradient_accumulation_steps,
        "gradient_clipping": t.max_grad_norm,
        "zero_optimization": zero,
        "bf16": {"enabled": precision == "bf16"},
        "fp16": {"enabled": precision == "fp16", "loss_scale": 0, "initial_scale_power": 16},
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }
    if option(la.offload_optimizer) != "none":
        # An offloaded optimizer steps on the CPU: DeepSpeed's own (compiled) AdamW. Otherwise
        # the HF Trainer's torch optimizer is used and no DeepSpeed op is compiled.
        ds["optimizer"] = {"type": "AdamW", "params": {
            "lr": t.learning_rate, "weight_decay": t.weight_decay, "betas": [0.9, 0.999], "eps": 1e-8,
        }}
    return _merge(ds, OmegaConf.to_container(la.config, resolve=True) if isinstance(la.config, DictConfig) else dict(la.config))


def _merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for k, v in extra.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


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


def worker_command(cfg: DictConfig, config_path: Path, addr: str, port: int) -> list[str]:
    """The command that starts this node's workers on the resolved config."""
    la = cfg.launcher
    runner, n = option(la.runner), world_size(la)
    worker = ["-m", "tokalign.worker", str(config_path)]
    if runner == "torchrun":
        return [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={la.num_gpus}", f"--nnodes={la.num_nodes}",
                f"--node_rank={la.node_rank}", f"--master_addr={addr}", f"--master_port={port}", *worker]
    if runner == "deepspeed":
        cmd = [shutil.which("deepspeed") or "deepspeed", "--no_local_rank", f"--num_gpus={la.num_gpus}",
               f"--num_nodes={la.num_nodes}", f"--master_addr={addr}", f"--master_port={port}"]
        if la.hostfile:
            cmd.append(f"--hostfile={la.hostfile}")
        elif la.num_nodes > 1:
            cmd += ["--no_ssh", f"--node_rank={la.node_rank}"]
        return [*cmd, "--module", "tokalign.worker", str(config_path)]
    precision = {"fp32": "no"}.get(option(cfg.trainer.precision), option(cfg.trainer.precision))
    cmd = [sys.executable, "-m", "accelerate.commands.launch", f"--num_processes={n}", f"--num_machines={la.num_nodes}",
           f"--machine_rank={la.node_rank}", f"--main_process_ip={addr}", f"--main_process_port={port}",
           f"--mixed_precision={precision}"]
    if la.name == "deepspeed":
        cmd += ["--use_deepspeed", f"--deepspeed_config_file={config_path.parent / 'deepspeed.json'}"]
        if la.num_nodes > 1:
            cmd.append("--deepspeed_multinode_launcher=standard")
    else:
        # --multi_gpu is accelerate's switch for any multi-process DDP, on CPUs too;
        # `--cpu --num_processes N` would start a single process.
        cmd.append("--multi_gpu")
    return [*cmd, *worker]


def write_resolved(cfg: DictConfig) -> Path:
    run_dir = Path(cfg.output_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    return write_text_atomic(run_dir / "resolved.yaml", OmegaConf.to_yaml(cfg))


def launch(cfg: DictConfig) -> dict:
    """Run a validated, resolved config with its launcher; returns the final metrics."""
    check(cfg)
    config_path = write_resolved(cfg)
    if cfg.launcher.name == "local":
        from tokalign.run import run_training

        return run_training(cfg)
    if cfg.launcher.name == "deepspeed":
        write_text_atomic(config_path.parent / "deepspeed.json", json.dumps(deepspeed_config(cfg), indent=2))
    if cfg.launcher.name == "ddp" and world_size(cfg.launcher) == 1:
        cmd = [sys.executable, "-m", "tokalign.worker", str(config_path)]  # nothing to synchronise
    else:
        cmd = worker_command(cfg, config_path, *rendezvous(cfg.launcher))
    print("tokalign: launching", " ".join(cmd), flush=True)
    rc = subprocess.run(cmd).returncode
    if rc != 0:
        raise LaunchError(f"launcher={cfg.launcher.name}: workers exited with status {rc} (run dir {config_path.parent})")
    summary = config_path.parent / "summary.json"
    return json.loads(summary.read_text()) if summary.exists() else {}
