"""RTO's token view: PPO's (advantages, rewards, values) with the DPO model's dense reward d_t beside them."""

from __future__ import annotations

import torch

from tokalign.bases.dpo.dpo_models import cached_path
from tokalign.bases.ppo.scoring import Scored
from tokalign.bases.ppo.view import macro_view
from tokalign.bases.views import ViewContext
from tokalign.errors import ConfigError
from tokalign.losses import rto_token_rewards
from tokalign.methods.rto import Config
from tokalign.methods.rto.loop import rto_rewards
from tokalign.modeling.lora import is_model_dir

LEGEND = (
    "Colour: the dense DPO reward d_t = clip(β₁ (log π_dpo − log π_ref), ±c) of each token; reward r_t = d_t − "
    "β₂ KL_t (+ the score on the last token); advantage Â_t from GAE over those rewards."
)


def dense_reward(s: Scored, mask: torch.Tensor, m) -> dict[str, torch.Tensor]:
    """d_t alone: RTO's reward with the KL and score terms off."""
    d, _ = rto_token_rewards(
        s.old_logps,
        s.logps["ref"],
        s.logps.get("dpo", s.logps["ref"]),
        s.scores,
        mask,
        kl_coef=0.0,
        dpo_scale=m.dpo_scale,
        dpo_clip=m.dpo_clip,
        score_coef=0.0,
        dpo_ref_logps=s.logps.get("dpo_ref"),
    )
    return {"dpo_reward": d}


def dpo_models(ctx: ViewContext) -> dict:
    m = ctx.cfg.method
    if m.dpo_scale == 0:
        return {}
    path = m.dpo_model or cached_path(ctx.cfg, beta=m.dpo_beta)
    if not m.dpo_model and not is_model_dir(path):
        raise ConfigError(f"the run's DPO model is not in the cache ({path}); pass its path as method.dpo_model")
    frozen = {"dpo": ctx.load(path)}
    if m.dpo_ref_model:
        frozen["dpo_ref"] = ctx.load(m.dpo_ref_model)
    return frozen


def rto_view(ctx: ViewContext):
    frozen = dpo_models(ctx)
    return macro_view(
        ctx,
        schema=Config,
        frozen=frozen,
        token_rewards=rto_rewards,
        extra_values=dense_reward,
        color="dpo_reward",
        legend=LEGEND,
    )
