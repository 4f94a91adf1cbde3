"""TGDPO (Zhu et al., ICML 2025): DPO whose tokens are weighted by a guidance model's token rewards.

The loss is `tokalign.losses.tgdpo_loss` (METHODS.md §2), the trainer
`tokalign.trainers.tgdpo.TGDPOTrainer`, the guidance model `tokalign.guidance.load_guidance`
(a DPO checkpoint, built on demand when `guidance_model` is empty). See docs/tgdpo.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from tokalign.methods.common import peft_config, run_trainer, trl_args

DATA_KIND = "preference"


@dataclass
class Config:
    name: str = "tgdpo"
    beta: float = 0.1
    alpha: float = 0.5
    guidance_beta: Optional[float] = None  # None: beta (their code)
    f_min: Optional[float] = None  # None: f unclamped (their code)
    guidance_model: Optional[str] = None  # path or hub id; None: a DPO run of this setting, cached
    precompute: bool = True  # reference + guidance per-token log-probs once per dataset, cached


def train(run) -> dict:
    from trl import DPOConfig

    from tokalign.guidance import load_guidance
    from tokalign.trainers.tgdpo import TGDPOTrainer

    m = run.cfg.method
    guidance = load_guidance(run)
    lora = run.cfg.model.lora.enabled
    trainer = TGDPOTrainer(
        model=run.load_policy(),
        ref_model=None if lora or m.precompute else run.load_policy(),
        args=DPOConfig(**trl_args(run, beta=m.beta, precompute_ref_log_probs=m.precompute)),
        train_dataset=run.train_data,
        processing_class=run.tokenizer,
        peft_config=peft_config(run),
        guidance_model=guidance,
        alpha=m.alpha,
        guidance_beta=m.guidance_beta,
        f_min=m.f_min,
        token_cache_dir=Path(run.cfg.cache_dir).expanduser() / "token_logps",
    )
    return run_trainer(run, trainer)
