"""T-REG: DPO regularised by self-generated token rewards (Zhou et al., ACL 2025, arXiv 2412.02685).

The frozen initial policy π_0 scores a response under a "make it better" prompt x⁺ and a "make it
worse" prompt x⁻; the contrast gives token rewards r̂_t ∈ (−½, ½) (``contrastive_token_rewards``).
T-REG adds to DPO a term that pulls the policy's token log-probs along r̂ (``treg_loss``). Its
gradient has TGDPO's form, factors 1 ± α r̂_t per token, but with the plain DPO margin inside σ.
Only the abstract was readable and no code was public; the form below follows a secondary summary.
Token rewards and reference log-probs are detached: no gradient reaches them.
"""

import warnings

import torch

from tokalign.losses.dpo import preference_terms
from tokalign.losses.masked import masked_fill_zero


def contrastive_token_rewards(
    better_logps: torch.Tensor, worse_logps: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """``r̂_t = σ(log π_0(y_t | x⁺, y_<t) − log π_0(y_t | x⁻, y_<t)) − ½``, 0 where mask is 0.

    Both inputs are (B, T) log-probs of the same response tokens, aligned by response offset
    (the two prompts differ in length). Computed as ``½ tanh(d/2)`` (the same function), which
    is exactly odd: swapping better and worse negates r̂. Detached.
    """
    difference = masked_fill_zero(better_logps - worse_logps, mask).detach()
    return 0.5 * torch.tanh(0.5 * difference)


def treg_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    token_rewards_chosen: torch.Tensor,
    token_rewards_rejected: torch.Tensor,
    chosen_mask: torch.Tensor,
    rejected_mask: torch.Tensor,
    *,
    beta: float,
    alpha: float,
    weighting: str = "adaptive",
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """DPO-REG: ``−log σ(z) + α·w·(L_REG(y_w) + L_REG(y_l))``, batch mean.

    ``z = β(Δ(y_w) − Δ(y_l))`` is DPO's margin and ``L_REG(y) = −β Σ_t r̂_t log π_θ(y_t)`` over
    the response tokens (maximising Σ_t r̂_t β log(π_θ/π_ref) without its constant π_ref part).
    ``weighting="adaptive"``: ``w = σ(−z)``, detached (DPO's own gradient scale), so
    ``∂L/∂log π_θ(y_w,t) = −βσ(−z)(1 + α r̂_w,t)`` and ``∂L/∂log π_θ(y_l,t) = βσ(−z)(1 − α r̂_l,t)``;
    ``"static"``: ``w = 1`` (their ablation). Since |r̂| < ½, α < 2 keeps every factor 1 ± α r̂
    positive; a warning is raised at α ≥ 2.
    Metrics: DPO's rewards/* (plain βΔ), ``treg/token_reward`` (mean r̂ over the valid tokens of
    both responses), ``treg/token_reward_positive_frac``, ``treg/weight`` (mean w),
    ``loss/dpo`` and ``loss/reg`` (the two parts of the loss).
    """
    if weighting not in ("adaptive", "static"):
        raise ValueError(f"unknown T-REG weighting {weighting!r}")
    if alpha >= 2:
        warnings.warn(f"T-REG alpha={alpha} >= 2 can make a token's factor 1 ± alpha·r̂ negative", stacklevel=2)
    losses, z, metrics = preference_terms(
        policy_chosen_logps,
        policy_rejected_logps,
        ref_chosen_logps,
        ref_rejected_logps,
        chosen_mask,
        rejected_mask,
        beta=beta,
    )
    rewards_chosen = masked_fill_zero(token_rewards_chosen, chosen_mask).detach()
    rewards_rejected = masked_fill_zero(token_rewards_rejected, rejected_mask).detach()
    reg_chosen = -beta * masked_fill_zero(rewards_chosen * policy_chosen_logps, chosen_mask).sum(-1)
    reg_rejected = -beta * masked_fill_zero(rewards_rejected * policy_rejected_logps, rejected_mask).sum(-1)
    weight = torch.sigmoid(-z).detach() if weighting == "adaptive" else torch.ones_like(z)
    regulariser = alpha * weight * (reg_chosen + reg_rejected)

    token_rewards = torch.cat([rewards_chosen[chosen_mask.bool()], rewards_rejected[rejected_mask.bool()]])
    count = max(token_rewards.numel(), 1)
    metrics["treg/token_reward"] = token_rewards.sum() / count
    metrics["treg/token_reward_positive_frac"] = (token_rewards > 0).to(token_rewards.dtype).sum() / count
    metrics["treg/weight"] = weight.mean()
    metrics["loss/dpo"] = losses.detach().mean()
    metrics["loss/reg"] = regulariser.detach().mean()
    return (losses + regulariser).mean(), metrics
