"""Cost of a TGDPO step against DPO: median time per optimizer step and peak memory, one run.

Variants, same model, data, batch and steps:
  dpo             TRL DPOTrainer, policy + reference forward every step (TRL's default)
  dpo_precompute  TRL DPOTrainer with precompute_ref_log_probs=True (reference sums once)
  tgdpo           TGDPOTrainer, reference + guidance per-token log-probs precomputed (policy only per step)
  tgdpo_online    TGDPOTrainer without precompute (policy, reference and guidance every step)

Every (round, variant) runs in a fresh subprocess (scripts/bench/benchlib.py: step time, peak memory,
summary). Setup: trainer construction time, which holds the one-off precompute; the precompute
itself is timed too (tgdpo: cold = empty cache in round 0, warm = cache hit afterwards; TRL's
dpo_precompute recomputes in every fresh process).

    python scripts/bench/bench_tgdpo.py [--rounds 3] [--steps 12] [--batch 8] [--size bench|tiny]

Writes scripts/results/bench_tgdpo.json and prints a table. Not a test: timings vary by machine.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import benchlib

VARIANTS = ("dpo", "dpo_precompute", "tgdpo", "tgdpo_online")
RESULTS = Path(__file__).resolve().parents[1] / "results" / "bench_tgdpo.json"


def child(variant: str, *, size: str, steps: int, batch: int, cache: str) -> dict:
    import torch
    from omegaconf import OmegaConf
    from trl import DPOConfig, DPOTrainer

    from tokalign.config import DatasetConfig
    from tokalign.data.loading import load_split
    from tokalign.methods.tgdpo.trainer import TGDPOTrainer
    from tokalign.modeling.models import load_causal_lm, load_tokenizer

    path = benchlib.bench_model(size)
    data = load_split(OmegaConf.structured(DatasetConfig(num_train=max(256, steps * batch))), "preference")
    tokenizer = load_tokenizer(path)
    torch.manual_seed(0)
    base = benchlib.rss_bytes()
    precompute = variant in ("dpo_precompute", "tgdpo")
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
    cls = DPOTrainer if variant.startswith("dpo") else TGDPOTrainer
    precompute_s, original = [], cls._precompute_ref_logps

    def timed_precompute(self, *a, **kw):
        t = time.perf_counter()
        out = original(self, *a, **kw)
        precompute_s.append(time.perf_counter() - t)
        return out

    cls._precompute_ref_logps = timed_precompute
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
        trainer = TGDPOTrainer(
            model=load_causal_lm(path), guidance_model=load_causal_lm(path), alpha=0.5, token_cache_dir=cache, **common
        )
    return benchlib.measure(
        trainer, base, started, variant=variant, precompute_s=sum(precompute_s) if precompute else None
    )


def options(p):
    p.add_argument(
        "--cache", default=tempfile.mkdtemp(prefix="bench-tgdpo-cache-"), help="token cache (fresh by default)"
    )


if __name__ == "__main__":
    benchlib.main(
        __file__,
        VARIANTS,
        child,
        RESULTS,
        baselines=("dpo", "dpo_precompute"),
        options=options,
        once=("precompute_s",),
        description=__doc__.split("\n")[0],
    )
