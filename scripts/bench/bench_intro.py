"""Cost of an InTRO training step against a GRPO step: median time per optimizer step and peak memory.

Variants, same model, prompts, G, completion length, batch and steps (toy_math, exact-match reward):
  grpo    method=grpo: TRL's GRPOTrainer, generation + reward + one policy forward/backward per step
  intro   method=intro: the same generation and reward, then the policy forward/backward on x ⊕ z,
          a no-grad forward of the same weights on the answer-conditioned x⊕y ⊕ z, and n = 5
          candidates per token drawn and scored (the paper's sampled mode)

Each variant is the trainer `tokalign train method=<variant>` builds (benchlib.measure_run), on a
copy of the model saved with ``min_new_tokens = max_new_tokens`` (bench_ppo.prepare_models), so
every completion has the same length on both sides. A step is a whole GRPO step: generation,
rewards, loss and optimizer step. Every (round, variant) runs in a fresh subprocess, the variants
interleaved (scripts/bench/benchlib.py: step time, peak memory, summary).

    python scripts/bench/bench_intro.py [--rounds 3] [--steps 20] [--batch 16] [--group 4] [--length 16] [--size bench|tiny]

Writes scripts/results/bench_intro.json and prints a table and the intro/grpo ratio. Not a test:
timings vary by machine.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import benchlib
from bench_ppo import compose_overrides, prepare_models

VARIANTS = ("grpo", "intro")
RESULTS = Path(__file__).resolve().parents[1] / "results" / "bench_intro.json"


def grpo_items(work: Path, size: str, steps: int, batch: int, group: int, length: int) -> list[str]:
    """Overrides of a GRPO-family run on toy_math in `work`: the `size` model forced to generate `length`
    tokens, G = `group`, `batch` completions per step (the method or arm goes first)."""
    cache = os.environ.get("TOKALIGN_CACHE", "~/.cache/tokalign")
    policy, _ = prepare_models(work, cache, length, benchlib.bench_model(size))
    return [
        "dataset=toy_math",
        f"model.path={policy}",
        f"method.num_generations={group}",
        f"method.max_completion_length={length}",
        f"trainer.per_device_batch_size={batch}",
        f"trainer.max_steps={steps}",
        "logger=none",
        "eval.at_end=false",
        f"output_dir={work / 'run'}",
    ]


def child(variant: str, *, size: str, steps: int, batch: int, group: int, length: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="bench-intro-") as work:
        cfg = compose_overrides([f"method={variant}", *grpo_items(Path(work), size, steps, batch, group, length)])
        return benchlib.measure_run(cfg, variant=variant)


def options(p):
    p.add_argument("--group", type=int, default=4, help="G, completions per prompt")
    p.add_argument("--length", type=int, default=16, help="generated tokens per completion (forced)")
    p.set_defaults(batch=16, steps=20)


if __name__ == "__main__":
    benchlib.main(
        __file__,
        VARIANTS,
        child,
        RESULTS,
        baselines=("grpo",),
        options=options,
        description=__doc__.split("\n")[0],
    )
