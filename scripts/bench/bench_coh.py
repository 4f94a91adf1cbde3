"""Cost of a Chain of Hindsight step against an SFT step: median time per optimizer step, peak memory and
tokens per step.

Variants, same model, dataset (toy_pref), rows per step and steps:
  sft   method=sft: TRL's SFTTrainer on the task's prompt/completion rows, loss on the completion
  coh   method=coh: one chain per preference pair (prompt, marker, output, marker, output; orders
        p, n, pn, np), loss on the outputs, plus λ = 1.5 × the LM loss of a batch of pretraining
        rows (the task's notes) in a second forward, and the forgetful causal mask (0–5% of keys)

Equal rows per step, not equal tokens: a chain holds up to two outputs and CoH adds the pretraining
batch, so the tokens each step runs through the model (non-pad: training rows, plus CoH's
pretraining rows) and the tokens that carry loss are reported beside the time, as the mean over
each trainer's prepared rows times the batch. Each variant is the trainer `tokalign train
method=<variant>` builds (benchlib.measure_run). Every (round, variant) runs in a fresh subprocess,
the variants interleaved (scripts/bench/benchlib.py: step time, peak memory, summary).

    python scripts/bench/bench_coh.py [--rounds 3] [--steps 20] [--batch 16] [--size bench|tiny]

Writes scripts/results/bench_coh.json and prints a table and the coh/sft ratio. Not a test: timings
vary by machine.
"""

from __future__ import annotations

import statistics
import tempfile
from pathlib import Path

import benchlib
from bench_ppo import compose_overrides

VARIANTS = ("sft", "coh")
RESULTS = Path(__file__).resolve().parents[1] / "results" / "bench_coh.json"


def tokens_per_step(trainer) -> dict:
    """Mean tokens per step through the model and with loss: a batch of the trainer's prepared rows, plus
    (CoH with λ > 0) a batch of its pretraining rows, every token of which but the first is trained."""
    batch = trainer.args.per_device_train_batch_size
    rows = trainer.train_dataset
    pretrain = [len(r["input_ids"]) for r in getattr(trainer, "pretrain", [])]
    forward = statistics.mean(len(x) for x in rows["input_ids"]) + (statistics.mean(pretrain) if pretrain else 0)
    trained = statistics.mean(sum(t != -100 for t in x) for x in rows["labels"]) + (
        statistics.mean(pretrain) - 1 if pretrain else 0
    )
    return {"tokens_per_step": batch * forward, "trained_tokens_per_step": batch * trained}


def child(variant: str, *, size: str, steps: int, batch: int) -> dict:
    # CoH's trainer module holds its own `run_trainer` binding; SFT calls the one in tokalign.bases.trl
    binds = ("tokalign.bases.trl", "tokalign.methods.coh.trainer")
    with tempfile.TemporaryDirectory(prefix="bench-coh-") as work:
        cfg = compose_overrides(
            [
                f"method={variant}",
                "dataset=toy_pref",
                f"model.path={benchlib.bench_model(size)}",
                f"trainer.per_device_batch_size={batch}",
                f"trainer.max_steps={steps}",
                "logger=none",
                "eval.at_end=false",
                f"output_dir={work}/run",
            ]
        )
        return benchlib.measure_run(cfg, binds=binds, about=tokens_per_step, variant=variant)


def options(p):
    p.set_defaults(batch=16, steps=20)


if __name__ == "__main__":
    benchlib.main(
        __file__,
        VARIANTS,
        child,
        RESULTS,
        baselines=("sft",),
        options=options,
        medians=("tokens_per_step", "trained_tokens_per_step"),
        description=__doc__.split("\n")[0],
    )
