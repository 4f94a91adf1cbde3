"""RTO: PPO with dense DPO token rewards (Zhong et al., ICML 2025, arXiv 2404.18922).

RTO is token-level PPO whose per-token reward adds a DPO model's implicit reward
β₁ log(π_dpo/π_ref) to the usual KL penalty and sequence score, so only the reward vector is
new: ``rto_token_rewards`` feeds ``macro_gae`` (token segments), ``ppo_policy_loss`` and
``ppo_value_loss`` unchanged. Follows the authors' code (zkshan2002/RTO,
``openrlhf/trainer/ppo_utils/experience_maker.py`` and ``openrlhf/models/utils.py``) except
where noted in ``rto_token_rewards``.
"""

import torch

from tokalign.losses.masked import masked_fill_zero, masked_mean
from tokalign.losses.ppo import kl_penalty_rewards


def rto_token_rewards(
    old_logps: torch.Tensor,
    ref_logps: torch.Tensor,
    dpo_logps: torch.Tensor,
    scores: torch.Tensor,
    mask: torch.Tensor,
    *,
    kl_coef: float = 0.01,
    dpo_scale: float = 0.05,
    dpo_clip: float | None = 0.05,
    score_coef: float = 1.0,
    score_clip: float | None = 10.0,
    dpo_ref_logps: torch.Tensor | None = None,
    kl_estimator: str = "k1",
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """(B, T) RTO rewards ``r_t = d_t − β₂ KL_t + [t = last valid token] β₃ clip(s, ±score_clip)``.

    ``d_t = clip(β₁ (log π_dpo(y_t) − log π_dpo_ref(y_t)), −c, c)`` with β₁ = ``dpo_scale``,
    c = ``dpo_clip`` (applied after scaling; None or 0: no clip) and π_dpo_ref =
    ``dpo_ref_logps`` (None: ``ref_logps``; their code always used the PPO reference).
    ``KL_t`` and the score placement are ``kl_penalty_rewards``'s (β₂ = ``kl_coef``, k1 on π_old
    by default). ``dpo_scale=0`` switches the DPO term off; negative coefficients are errors
    (their code silently read a scale ≤ 0 as 1 and a KL coefficient ≤ 0 as 0). An empty
    response gets no score (their code put it on the last padding column) and is counted.
    Rewards are detached, 0 where mask is 0.
    Metrics: ``rto/dpo_reward`` (mean d_t over valid tokens), ``rto/dpo_return`` (batch mean of
    Σ_t d_t), ``rto/dpo_clipfrac`` (share of valid tokens the clip changed), ``rto/kl`` (mean
    log π_old − log π_ref), ``rto/score`` (mean clipped score of non-empty responses),
    ``rto/empty_responses`` (their count).
    """
    for name, value in (("kl_coef", kl_coef), ("dpo_scale", dpo_scale), ("score_coef", score_coef)):
        if value < 0:
            raise ValueError(f"{name} must be >= 0, got {value}")
    for name, limit in (("dpo_clip", dpo_clip), ("score_clip", score_clip)):
        if limit is not None and limit < 0:
            raise ValueError(f"{name} must be >= 0 or None, got {limit}")
    valid = mask.bool()
    nonempty = valid.any(-1)
    scores = scores.detach()
    if score_clip is not None:
        scores = scores.clamp(-score_clip, score_clip)
    rewards = kl_penalty_rewards(
        old_logps.detach(), ref_logps.detach(), mask, score_coef * scores, kl_coef=kl_coef, estimator=kl_estimator
    )

    dpo_ref_logps = ref_logps if dpo_ref_logps is None else dpo_ref_logps
    raw = masked_fill_zero(dpo_scale * (dpo_logps - dpo_ref_logps), valid).detach()
    dpo_rewards = raw.clamp(-dpo_clip, dpo_clip) if dpo_clip else raw
    if dpo_scale:
        rewards = rewards + dpo_rewards

    metrics = {
        "rto/dpo_reward": masked_mean(dpo_rewards, valid),
        "rto/dpo_return": dpo_rewards.sum(-1).mean(),
        "rto/dpo_clipfrac": masked_mean((dpo_rewards != raw).to(raw.dtype), valid),
        "rto/kl": masked_mean(masked_fill_zero(old_logps - ref_logps, valid), valid).detach(),
        "rto/score": masked_mean(scores, nonempty),
        "rto/empty_responses": (~nonempty).sum().to(rewards.dtype),
    }
    return rewards.detach(), metrics
