"""One training process under a multi-process launcher: `python -m tokalign.runtime.worker <run_dir>/resolved.yaml`.

It loads the config its parent resolved (never composes one), joins the process group the
spawner describes in the environment (RANK, WORLD_SIZE, MASTER_ADDR, ...), trains its share
and leaves the group. Rank 0 alone writes files, logs and evaluates (see tokalign.runtime.run). It
dies with its spawner (parent-death signal), so a killed launch leaves no worker behind.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from tokalign.artifacts.rundir import die_with_parent
from tokalign.cluster import preemption
from tokalign.cluster.distributed import backend
from tokalign.errors import UserError


def join(launcher) -> None:
    """Start the process group before any model is built: ZeRO-3 partitions weights at load time."""
    import torch.distributed as dist

    if int(os.environ.get("WORLD_SIZE", "1")) == 1 and launcher.name != "deepspeed":
        return
    if launcher.name == "deepspeed":
        import deepspeed
        from accelerate import PartialState

        deepspeed.init_distributed(dist_backend=backend(launcher.backend), auto_mpi_discovery=False)
        # The HF Trainer would set up accelerate's state without a backend, which on CPUs
        # counts a single process; configured here, the training arguments reuse it
        # (accelerator_config.use_configured_state, see tokalign.bases.trl.trl_args).
        os.environ["ACCELERATE_USE_DEEPSPEED"] = "true"
        PartialState(backend=backend(launcher.backend))
    elif not dist.is_initialized():
        dist.init_process_group(backend=backend(launcher.backend))


def main(argv: list[str] | None = None) -> None:
    import torch.distributed as dist
    from omegaconf import OmegaConf

    from tokalign.app.compose import validate
    from tokalign.artifacts.tracking import quiet
    from tokalign.runtime.run import run_training

    die_with_parent()
    quiet()
    preemption.install()  # a scheduler's signal during start-up waits for the first step boundary
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        sys.exit("usage: python -m tokalign.runtime.worker <run_dir>/resolved.yaml")
    rank = int(os.environ.get("RANK", "0"))
    try:
        cfg = validate(OmegaConf.load(Path(argv[0])))
        join(cfg.launcher)
        run_training(cfg, rank=rank)
    except UserError as err:
        print(f"tokalign: error (rank {rank}): {err}", file=sys.stderr)
        sys.exit(2)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    # Everything is written and W&B finished. Interpreter teardown would still destroy objects the
    # distributed libraries keep (a gloo group held by accelerate's state) in no set order, which
    # now and then aborts a finished worker ("terminate called without an active exception").
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
