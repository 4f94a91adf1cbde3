"""Checkpoints of the PPO loop: accelerate's state (models, optimizers, schedulers, every rank's
RNG) plus the loop's own state (the step and the per-iteration history the summary reads)."""

from __future__ import annotations

import json
from pathlib import Path

from tokalign.artifacts.checkpoint import rotate, save_checkpoint_dir, seal
from tokalign.artifacts.files import strict_json

STATE = "ppo_state.json"


def save_checkpoint(accelerator, root: Path, step: int, history: list[dict], keep: int) -> None:
    """One process: written aside and moved into place. Several: every rank writes its part in
    place (accelerate saves each rank's RNG), then rank 0 seals the directory."""
    dest = root / f"checkpoint-{step}"

    def write(path: Path) -> None:
        accelerator.save_state(str(path))
        if accelerator.is_main_process:
            (path / STATE).write_text(strict_json({"global_step": step, "history": history}))

    if accelerator.num_processes == 1:
        save_checkpoint_dir(dest, write)
    else:
        write(dest)
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            seal(dest)
    if accelerator.is_main_process:
        rotate(root, keep)


def load_checkpoint(accelerator, path: Path) -> tuple[int, list[dict]]:
    """Restore a checkpoint chosen by `Run.resume_checkpoint`; returns its step and history."""
    accelerator.load_state(str(path))
    state = json.loads((path / STATE).read_text())
    return int(state["global_step"]), list(state["history"])
