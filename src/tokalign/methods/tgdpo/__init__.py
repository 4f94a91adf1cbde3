"""TGDPO (Zhu et al., ICML 2025): DPO whose tokens are weighted by a guidance model's token rewards.

The loss is `tokalign.losses.tgdpo_loss`, the trainer `trainer.TGDPOTrainer`, the guidance a
DPO checkpoint (`method.dpo_model`, or one built on demand and cached when empty).
See docs/tgdpo.md and docs/methods.md.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Optional

from tokalign.bases.contract import DataKind, Method, MethodConfig
from tokalign.config import knob


@dataclass
class Config(MethodConfig):
    algorithm: str = "tgdpo"
    name: str = "tgdpo"
    beta: float = knob(0.1, gt=0, help="DPO's KL coefficient (their 8B recipe: 0.1)")
    alpha: float = knob(0.5, ge=0, help="strength of the token weights f = 1 ± α r̂ (paper: 0.5; ablation 0.5/1/2)")
    guidance_beta: Optional[float] = knob(
        None, gt=0, help="β_g in r̂ = β_g (log π_g − log π_ref); null: beta (their code)"
    )
    f_min: Optional[float] = knob(None, help="clamp token weights f >= f_min; null: unclamped (their code)")
    dpo_model: Optional[str] = knob(
        None, help="the guidance: a DPO checkpoint (path or hub id); null: train one on this setting, cached"
    )
    guidance_model: Optional[str] = knob(None, help="deprecated: use dpo_model")
    precompute: bool = knob(
        True,
        help="reference + guidance per-token log-probs once per dataset (all processes; "
        "ZeRO-3: sharded weights), cached on disk",
    )


def guidance_beta(m) -> float:
    return m.guidance_beta if m.guidance_beta is not None else m.beta


def dpo_model(m) -> str | None:
    """The configured guidance checkpoint; the old spelling `guidance_model` still works, with a warning."""
    if m.guidance_model and not m.dpo_model:
        warnings.warn("method.guidance_model is deprecated: write method.dpo_model", FutureWarning, stacklevel=2)
        return str(m.guidance_model)
    return str(m.dpo_model) if m.dpo_model else None


def guidance_path(run) -> str:
    from tokalign.bases.dpo.dpo_models import dpo_model_path

    m = run.cfg.method
    return dpo_model(m) or str(dpo_model_path(run, beta=guidance_beta(m), knob="method.dpo_model"))


def train(run) -> dict:
    from tokalign.bases.dpo.dpo_models import load_frozen
    from tokalign.bases.dpo.token_level import train_token_dpo
    from tokalign.methods.tgdpo.trainer import TGDPOTrainer

    m = run.cfg.method
    path = guidance_path(run)  # may train it first (one process)
    return train_token_dpo(
        run,
        TGDPOTrainer,
        lambda: dict(
            guidance_model=load_frozen(run, path, "guidance model"),
            alpha=m.alpha,
            guidance_beta=m.guidance_beta,
            f_min=m.f_min,
        ),
    )


def view(ctx):
    from tokalign.methods.tgdpo.view import tgdpo_view

    return tgdpo_view(ctx)


METHOD = Method(
    name="tgdpo",
    config=Config,
    data=DataKind.preference,
    train=train,
    view=view,
    description="TGDPO (Zhu et al., ICML 2025): token-weighted DPO guided by a DPO model's token rewards",
    lora=True,
)
