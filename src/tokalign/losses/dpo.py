"""DPO (Rafailov et al., 2023) and TGDPO (Zhu et al., ICML 2025) on per-token log-probs.

Both are ``-log σ(z)`` on a margin ``z`` built from token log-ratios
``Δ_t = log π_θ(y_t) − log π_ref(y_t)``; TGDPO only re-weights each token's log-ratio by
``f_t``. They share ``preference_terms``, so TGDPO with α = 0 (f ≡ 1) runs
exactly DPO's arithmetic.

Inputs are (B, T) per-token log-probs aligned with (B, T) 0/1 response masks; chosen and
rejected may have different T. Values where the mask is 0 are ignored, even NaN.
Reference and guidance log-probs are detached: no gradient ever reaches them.
Metrics are 0-dim detached tensors (batch means; no host sync — call ``.item()`` to log).
"""

import torch
import torch.nn.functional as F

from tokalign.losses.masked import masked_fill_zero


def preference_terms(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    chosen_mask: torch.Tensor,
    rejected_mask: torch.Tensor,
    *,
    beta: float,
    label_smoothing: float = 0.0,
    chosen_weights: torch.Tensor | None = None,
    rejected_weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """Per-pair losses ``−(1−ε) log σ(z) − ε log σ(−z)``, margins z and metrics.

    ``z = β (Σ_t w_t Δ_t(y_w) − Σ_t w_t Δ_t(y_l))``; weights ``None`` mean 1 (plain DPO). The
    logged rewards are always the unweighted ``βΔ(y)`` so that DPO, TGDPO and T-REG runs compare.
    """
    chosen_ratios = masked_fill_zero(policy_chosen_logps - ref_chosen_logps.detach(), chosen_mask)
    rejected_ratios = masked_fill_zero(policy_rejected_logps - ref_rejected_logps.detach(), rejected_mask)
    chosen_delta, rejected_delta = chosen_ratios.sum(-1), rejected_ratios.sum(-1)
    weighted_chosen = chosen_delta if chosen_weights is None else (chosen_weights * chosen_ratios).sum(-1)
    weighted_rejected = rejected_delta if rejected_weights is None else (rejected_weights * rejected_ratios).sum(-1)

    z = beta * (weighted_chosen - weighted_rejected)
    losses = -(1 - label_smoothing) * F.logsigmoid(z) - label_smoothing * F.logsigmoid(-z)

    chosen_rewards = (beta * chosen_delta).detach()
    rejected_rewards = (beta * rejected_delta).detach()
    metrics = {
        "rewards/chosen": chosen_rewards.mean(),
        "rewards/rejected": rejected_rewards.mean(),
        "rewards/margins": (chosen_rewards - rejected_rewards).mean(),
        "rewards/accuracies": (chosen_rewards > rejected_rewards).to(z.dtype).mean(),
    }
    return losses, z, metrics


def dpo_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    chosen_mask: torch.Tensor,
    rejected_mask: torch.Tensor,
    *,
    beta: float,
    label_smoothing: float = 0.0,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """DPO loss (Rafailov et al., 2023, Eq. 7), batch mean of ``−log σ(β(Δ(y_w) − Δ(y_l)))``.

    ``label_smoothing`` ε > 0 gives conservative DPO, ``−(1−ε) log σ(z) − ε log σ(−z)``.
    At ε = 0 this equals TRL's ``loss_type="sigmoid"`` (which ignores ``label_smoothing``).
    Metrics: rewards/chosen (= βΔ(y_w)), rewards/rejected, rewards/margins, rewards/accuracies.
    """
    losses, _, metrics = preference_terms(
        policy_chosen_logps,
        policy_rejected_logps,
        ref_chosen_logps,
        ref_rejected_logps,
        chosen_mask,
        rejected_mask,
        beta=beta,
        label_smoothing=label_smoothing,
    )
    return losses.mean(), metrics


def tgdpo_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    guidance_chosen_logps: torch.Tensor,
    guidance_rejected_logps: torch.Tensor,
    chosen_mask: torch.Tensor,
    rejected_mask: torch.Tensor,
    *,
    beta: float,
    alpha: float,
    guidance_beta: float | None = None,
    f_min: float | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """TGDPO loss (Zhu et al., ICML 2025; arXiv 2506.14574; the ``sigmoid`` form of their code).

    A guidance model π_g (a DPO checkpoint) gives the detached token reward
    ``r̂_t = β_g (log π_g(y_t) − log π_ref(y_t))``; each token's log-ratio is weighted by
    ``f_w,t = 1 + α r̂_t(y_w)`` or ``f_l,t = 1 − α r̂_t(y_l)``, and
    ``z = β Σ_t f_w,t Δ_t(y_w) − β Σ_t f_l,t Δ_t(y_l)``, loss ``−log σ(z)``.

    ``guidance_beta`` None means β (their code). ``f_min`` clamps f from below: unclamped,
    a very negative r̂(y_w) makes f_w < 0 and flips that token's gradient.
    Extra metrics, over the valid tokens of chosen and rejected together: ``f/min`` and
    ``f/mean`` of f *before* the clamp, ``f/clamped_frac`` (share of tokens the clamp raised);
    ``guidance/chosen`` and ``guidance/rejected``: batch means of Σ_t r̂_t, the guidance
    model's own DPO reward.
    """
    guidance_beta = beta if guidance_beta is None else guidance_beta
    guidance_chosen = masked_fill_zero(guidance_beta * (guidance_chosen_logps - ref_chosen_logps), chosen_mask).detach()
    guidance_rejected = masked_fill_zero(
        guidance_beta * (guidance_rejected_logps - ref_rejected_logps), rejected_mask
    ).detach()
    raw_chosen_weights = 1 + alpha * guidance_chosen
    raw_rejected_weights = 1 - alpha * guidance_rejected
    if f_min is None:
        chosen_weights, rejected_weights = raw_chosen_weights, raw_rejected_weights
    else:
        chosen_weights, rejected_weights = raw_chosen_weights.clamp(min=f_min), raw_rejected_weights.clamp(min=f_min)

    losses, _, metrics = preference_terms(
        policy_chosen_logps,
        policy_rejected_logps,
        ref_chosen_logps,
        ref_rejected_logps,
        chosen_mask,
        rejected_mask,
        beta=beta,
        chosen_weights=chosen_weights,
        rejected_weights=rejected_weights,
    )
    chosen_valid, rejected_valid = chosen_mask.bool(), rejected_mask.bool()
    raw_weights = torch.cat([raw_chosen_weights[chosen_valid], raw_rejected_weights[rejected_valid]])
    used_weights = torch.cat([chosen_weights[chosen_valid], rejected_weights[rejected_valid]])
    metrics["f/min"] = raw_weights.min()
    metrics["f/mean"] = raw_weights.mean()
    metrics["f/clamped_frac"] = (used_weights != raw_weights).to(raw_weights.dtype).mean()
    metrics["guidance/chosen"] = guidance_chosen.sum(-1).mean()
    metrics["guidance/rejected"] = guidance_rejected.sum(-1).mean()
    return losses.mean(), metrics
