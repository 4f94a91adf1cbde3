"""Cost of a T-REG step against DPO: median time per optimizer step and peak memory, one run.

Variants, same model, data, batch and steps:
  dpo             TRL DPOTrainer, policy + reference forward every step (TRL's default)
  dpo_precompute  TRL DPOTrainer with precompute_ref_log_probs=True (reference sums once)
  treg            TREGTrainer, reference log-probs and token rewards r̂ precomputed (policy only per step)
  treg_online     TREGTrainer without precompute (policy, reference and the two revisions every step)

Target: treg within 1.10x of dpo_precompute (both run the policy alone per step). Every (round,
variant) runs in a fresh subprocess (scripts/bench/benchlib.py). Setup: trainer construction time,
which holds the one-off precompute (treg: cold = empty cache in round 0, warm = cache hit after).

    OMP_NUM_THREADS=1 python scripts/bench/bench_treg.py [--rounds 3] [--steps 12] [--batch 8] [--size bench|tiny]

Writes scripts/results/bench_treg.json and prints a table. Not a test: timings vary by machine.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import benchlib

VARIANTS = ("dpo", "dpo_precompute", "treg", "treg_online")
RESULTS = Path(__file__).resolve().parents[1] / "results" / "bench_treg.json"


def child(variant: str, *, size: str, steps: int, batch: int, cache: str) -> dict:
    import torch
    from omegaconf import OmegaConf
    from trl import DPOConfig, DPOTrainer

    from tokalign.config import DatasetConfig
    from tokalign.data.loading import load_split
    from tokalign.methods.treg.trainer import TREGTrainer
    from tokalign.modeling.models import load_causal_lm, load_tokenizer

    path = benchlib.bench_model(size)
    data = load_split(OmegaConf.structured(DatasetConfig(num_train=max(256, steps * batch))), "preference")
    tokenizer = load_tokenizer(path)
    torch.manual_seed(0)
    base = benchlib.rss_bytes()
    precompute = variant in ("dpo_precompute", "treg")
    args = DPOConfig(
        output_dir=tempfile.mkdtemp(),
        per_device_train_batch_size=batch,
        max_steps=steps,
        max_length=128,
        learning_rate=1e-5,
        bf16=False,
        gradient_checkpointing=False,
        report_to="none",
        save_strategy="no",
        logging_steps=steps,
        precompute_ref_log_probs=precompute,
        seed=0,
        disable_tqdm=True,
    )
    started = time.perf_counter()
    common = dict(
        args=args,
        train_dataset=data,
        processing_class=tokenizer,
        ref_model=None if precompute else load_causal_lm(path),
    )
    if variant.startswith("dpo"):
        trainer = DPOTrainer(model=load_causal_lm(path), **common)
    else:
        trainer = TREGTrainer(model=load_causal_lm(path), alpha=0.25, token_cache_dir=cache, **common)
    return benchlib.measure(trainer, base, started, variant=variant)


def options(p):
    p.add_argument("--cache", default=tempfile.mkdtemp(prefix="bench-treg-cache-"), help="r̂ cache (fresh by default)")


if __name__ == "__main__":
    benchlib.main(
        __file__,
        VARIANTS,
        child,
        RESULTS,
        baselines=("dpo", "dpo_precompute"),
        options=options,
        description=__doc__.split("\n")[0],
    )
