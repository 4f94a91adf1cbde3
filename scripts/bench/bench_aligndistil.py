"""Cost of an off-policy AlignDistil step against a DPO step: median step time and peak memory, one run.

Variants, same model, data, batch and steps:
  dpo                  TRL DPOTrainer, policy + reference forward every step (chosen and rejected)
  aligndistil          AlignDistilTrainer (variant aligndistil), policy + DPO + reverse DPO on the chosen
                       responses, the vocabulary-wide loss in chunks of --chunk positions
  aligndistil_nochunk  the same, all positions at once (chunk_size=None)

The teachers are perturbed copies of the policy (their values do not change the cost). AlignDistil
needs (positions x V) logits from three models, so the output vocabulary decides its memory: the
benchmark model's output layer is resized to --vocab rows (default 32768; the tiny tokenizer has
512 tokens, Qwen2.5 152k). Every (round, variant) runs in a fresh subprocess (scripts/bench/benchlib.py).

    OMP_NUM_THREADS=1 python scripts/bench/bench_aligndistil.py [--rounds 3] [--steps 12] [--batch 8] [--vocab 32768] [--chunk 512]

Writes scripts/results/bench_aligndistil_v<vocab>.json and prints a table. Not a test.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import benchlib

VARIANTS = ("dpo", "aligndistil", "aligndistil_nochunk")
RESULTS = Path(__file__).resolve().parents[1] / "results"


def _perturbed(path: str, seed: int):
    import torch

    from tokalign.modeling.models import load_causal_lm

    model = load_causal_lm(path)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.02 * torch.randn(p.shape, generator=gen))
    return model


def child(variant: str, *, size: str, steps: int, batch: int, vocab: int, chunk: int) -> dict:
    import torch
    from omegaconf import OmegaConf
    from trl import DPOConfig, DPOTrainer, SFTConfig

    from tokalign.config import DatasetConfig
    from tokalign.data.loading import load_split
    from tokalign.methods.aligndistil import chosen_completions
    from tokalign.methods.aligndistil.trainer import AlignDistilTrainer
    from tokalign.modeling.models import load_causal_lm, load_tokenizer

    path = benchlib.bench_model(size, vocab=vocab)
    data = load_split(OmegaConf.structured(DatasetConfig(num_train=max(256, steps * batch))), "preference")
    tokenizer = load_tokenizer(path)
    torch.manual_seed(0)
    base = benchlib.rss_bytes()
    common = dict(
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
        seed=0,
        disable_tqdm=True,
    )
    started = time.perf_counter()
    if variant == "dpo":
        trainer = DPOTrainer(
            model=load_causal_lm(path),
            ref_model=load_causal_lm(path),
            args=DPOConfig(**common),
            train_dataset=data,
            processing_class=tokenizer,
        )
    else:
        trainer = AlignDistilTrainer(
            model=load_causal_lm(path),
            args=SFTConfig(**common, completion_only_loss=True),
            train_dataset=chosen_completions(data),
            processing_class=tokenizer,
            dpo_model=_perturbed(path, 1),
            base_model=_perturbed(path, 2),
            chunk_size=chunk if variant == "aligndistil" else None,
        )
    return benchlib.measure(trainer, base, started, variant=variant, vocab=vocab)


def options(p):
    p.add_argument("--vocab", type=int, default=32768, help="output vocabulary of the benchmark model")
    p.add_argument("--chunk", type=int, default=512, help="chunk_size of the chunked variant")


def results(*, vocab: int, **_) -> Path:
    return RESULTS / f"bench_aligndistil_v{vocab}.json"


if __name__ == "__main__":
    benchlib.main(
        __file__, VARIANTS, child, results, baselines=("dpo",), options=options, description=__doc__.split("\n")[0]
    )
