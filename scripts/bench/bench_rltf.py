"""Cost of an RLTF-SD step against a two-turn GRPO step: median time per optimizer step and peak memory.

Variants, both method=rltf with the same model, prompts, G, completion length, batch and steps
(toy_math, exact-match reward, toy_math's critic):
  rltf_grpo  +arm=rltf/grpo: two-turn rollouts (attempt, critique, revision of the wrong attempts)
             and multi-turn GRPO, SD and FM off (the RLTF paper's baseline row)
  rltf_sd    +arm=rltf/sd: the same, plus self-distillation: one more policy forward/backward of
             every revision as an answer to the first-turn prompt (κ rises linearly from 0, so
             the first step's κ is 0, but the forward runs from the start)

Each variant is the trainer `tokalign train +arm=<arm>` builds (benchlib.measure_run), on a copy
of the model saved with ``min_new_tokens = max_new_tokens`` (bench_ppo.prepare_models), so every
completion of both turns has the same length on both sides. A step is a whole RLTF step: both
turns' generation and rewards, the critic, the loss and the optimizer step. Rows per step (first
turn + revisions, from the trainer's usage log) are reported beside the time. Every (round,
variant) runs in a fresh subprocess, the variants interleaved (scripts/bench/benchlib.py).

    python scripts/bench/bench_rltf.py [--rounds 3] [--steps 10] [--batch 16] [--group 4] [--length 16] [--size bench|tiny]

Writes scripts/results/bench_rltf.json and prints a table and the rltf_sd/rltf_grpo ratio. Not a
test: timings vary by machine.
"""

from __future__ import annotations

import statistics
import tempfile
from pathlib import Path

import bench_intro
import benchlib
from bench_ppo import compose_overrides

VARIANTS = ("rltf_grpo", "rltf_sd")
RESULTS = Path(__file__).resolve().parents[1] / "results" / "bench_rltf.json"


def rows_per_step(trainer) -> dict:
    """RL rows per step (first-turn attempts + trained revisions), the mean over the logged steps."""
    logged = [h["usage/kept_samples"] for h in trainer.state.log_history if "usage/kept_samples" in h]
    return {"rows_per_step": statistics.mean(float(x) for x in logged)}


def child(variant: str, *, size: str, steps: int, batch: int, group: int, length: int) -> dict:
    arm = variant.replace("_", "/", 1)
    with tempfile.TemporaryDirectory(prefix="bench-rltf-") as work:
        items = bench_intro.grpo_items(Path(work), size, steps, batch, group, length)
        return benchlib.measure_run(compose_overrides([f"+arm={arm}", *items]), about=rows_per_step, variant=variant)


def options(p):
    bench_intro.options(p)
    p.set_defaults(steps=10)  # two turns: each step is about four times a GRPO step


if __name__ == "__main__":
    benchlib.main(
        __file__,
        VARIANTS,
        child,
        RESULTS,
        baselines=("rltf_grpo",),
        options=options,
        medians=("rows_per_step",),
        description=__doc__.split("\n")[0],
    )
