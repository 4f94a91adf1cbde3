"""RTO, Reinforced Token Optimization (Zhong et al., ICML 2025, arXiv 2404.18922).

Token-level PPO whose every token also earns a DPO model's implicit reward, clipped:
r_t = clip(β₁ (log π_dpo − log π_dpo_ref)(y_t), ±c) − β₂ KL_t + [t last] β₃ clip(score, ±10)
(`tokalign.losses.rto_token_rewards`). It runs the PPO loop of `tokalign.bases.ppo` (its
declared base) with that reward and the DPO model as an extra frozen model, so every PPO knob
applies. Defaults are the authors' released script (zkshan2002/RTO,
examples/scripts/train_rto_llama_8b.sh, on OpenRLHF 0.4.4). See docs/rto.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from omegaconf import DictConfig

from tokalign.bases.contract import DataKind, Method
from tokalign.bases.ppo import config as ppo
from tokalign.config import knob, require, world_size
from tokalign.modeling.lora import is_model_dir


@dataclass
class Config(ppo.Config):
    algorithm: str = "rto"
    name: str = "rto"
    # The PPO knobs whose released values differ from PPO's defaults
    score_clip: Optional[float] = knob(10.0, gt=0, help="clip the score to ±score_clip (their code: 10)")
    kl_coef: float = knob(0.01, ge=0, help="β₂ of the per-token KL penalty (their init_kl_coef 0.01, fixed)")
    temperature: float = knob(1.0, gt=0, help="sampling temperature (their script: 1)")
    top_k: int = knob(
        0, ge=0, help="top-k sampling (0: off; their code passes top_k=None to generate: the full distribution)"
    )
    # RTO
    dpo_scale: float = knob(0.05, ge=0, help="β₁ of the dense reward β₁ (log π_dpo − log π_dpo_ref) (0: off, PPO)")
    dpo_clip: Optional[float] = knob(
        0.05, ge=0, help="clip each token's dense reward to ±dpo_clip after scaling (null or 0: none)"
    )
    score_coef: float = knob(1.0, ge=0, help="β₃: weight of the score on the last token")
    dpo_model: Optional[str] = knob(
        None, help="a DPO checkpoint (path or hub id); null: train one on this setting, cached"
    )
    dpo_beta: float = knob(0.1, gt=0, help="β of the DPO run that builds the DPO model when dpo_model is null")
    dpo_ref_model: Optional[str] = knob(
        None, help="the DPO model's own reference; null: the PPO reference (their code always used it)"
    )


def check(cfg: DictConfig) -> None:
    from tokalign.bases.dpo.dpo_models import cached_path

    ppo.check(cfg)
    m = cfg.method
    require(
        m.dpo_scale == 0
        or bool(m.dpo_model)
        or world_size(cfg.launcher) == 1
        or is_model_dir(cached_path(cfg, beta=m.dpo_beta)),
        "method.dpo_model is empty and this run has several processes: train the DPO model first (a method=dpo run "
        "of the same setting, or this run with one process) or pass method.dpo_model=<its run dir>/model",
    )


def train(run) -> dict:
    from tokalign.methods.rto.loop import fit

    return fit(run)


def view(ctx):
    from tokalign.methods.rto.view import rto_view

    return rto_view(ctx)


METHOD = Method(
    name="rto",
    config=Config,
    data=DataKind.prompt,
    train=train,
    check=check,
    view=view,
    description="RTO (Zhong et al., ICML 2025): PPO with a DPO model's dense token rewards",
    lora=True,
)
