"""Token-level PPO pieces (Schulman et al., 2017) as used by RLHF, and their macro-action form.

Losses are normalised as a masked mean over all valid tokens of the batch (1/N Σ over the
N valid tokens), the same for every level, so token-level and macro-action runs compare.
Metrics are 0-dim detached tensors.
"""

import torch

from tokalign.losses.macro import (
    macro_gae,
    segment_broadcast,
    segment_macro_actions,
    segment_sum,
)
from tokalign.losses.masked import masked_fill_zero, masked_mean


def kl_penalty_rewards(
    logps_old: torch.Tensor,
    logps_ref: torch.Tensor,
    mask: torch.Tensor,
    score: torch.Tensor,
    *,
    kl_coef: float,
    estimator: str = "k1",
) -> torch.Tensor:
    """Per-token RLHF reward ``r_t = −kl_coef · KL_t`` plus ``score`` at each row's last valid token.

    ``k1``: ``KL_t = log π_old − log π_ref``; ``k3``: ``exp(−k1) − 1 + k1`` (Schulman's
    non-negative, unbiased estimator of KL(π_old ‖ π_ref)). The score (B,) lands on the last
    *valid* token (EOS), never on padding, whatever the padding side; 0 where mask is 0.
    """
    valid = mask.bool()
    log_ratio = masked_fill_zero(logps_old - logps_ref, valid)
    if estimator == "k1":
        kl = log_ratio
    elif estimator == "k3":
        kl = torch.expm1(-log_ratio) + log_ratio
    else:
        raise ValueError(f"unknown KL estimator {estimator!r}")
    last = valid & (valid.cumsum(-1) == valid.sum(-1, keepdim=True))
    return -kl_coef * kl + torch.where(last, score.unsqueeze(-1).to(kl.dtype), 0)


def gae(
    rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, *, gamma: float = 1.0, lam: float = 0.95
) -> tuple[torch.Tensor, torch.Tensor]:
    """Token-level GAE: ``macro_gae`` with every token its own segment (one code path)."""
    return macro_gae(rewards, values, mask, segment_macro_actions(mask, "fixed", n=1), gamma=gamma, lam=lam)


def whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True) -> torch.Tensor:
    """Whiten ``x`` over its valid tokens (mean, unbiased variance, as TRL's ``masked_whiten``).

    With ``shift_mean=False`` the mean is added back (rescaling only). 0 where mask is 0.
    """
    valid = mask.bool()
    mean = masked_mean(x, valid)
    centred = masked_fill_zero(x - mean, valid)
    variance = (centred**2).sum() / (valid.sum() - 1).clamp(min=1)
    whitened = centred * torch.rsqrt(variance + 1e-8)
    return masked_fill_zero(whitened if shift_mean else whitened + mean, valid)


def ppo_policy_loss(
    logps: torch.Tensor,
    old_logps: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    clip_eps: float = 0.2,
    segment_ids: torch.Tensor | None = None,
    level: str = "token",
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Clipped PPO policy loss (Schulman et al., 2017, Eq. 7), masked mean over valid tokens.

    ``level="token"`` (MA-RLHF's code): per token ``max(−Â ρ_t, −Â clip(ρ_t, 1±ε))``,
    ``ρ_t = π_θ/π_old``. ``level="segment"`` (GSPO-like option): each macro action S_k uses its
    joint ratio ``ρ_k = Π_{t∈S_k} ρ_t`` (the product, not the geometric mean) and counts once:
    the loss is ``(1/N) Σ_k max(−Â_k ρ_k, −Â_k clip(ρ_k, 1±ε))``, so at θ = θ_old both levels
    have gradient ``−(1/N) Σ_t Â_t ∇log π_t``, and singleton segments give the token level
    exactly. Metrics: ``policy/clipfrac`` (share of tokens whose ratio is clipped) and
    ``policy/approx_kl`` (mean of ½(log ρ_t)² over tokens).
    """
    valid = mask.bool()
    token_log_ratio = masked_fill_zero(logps - old_logps.detach(), valid)
    advantages = masked_fill_zero(advantages.detach(), valid)
    share: float | torch.Tensor
    if level == "token":
        log_ratio, share = token_log_ratio, 1.0
    elif level == "segment":
        if segment_ids is None:
            raise ValueError("level='segment' needs segment_ids")
        log_ratio = segment_broadcast(segment_sum(token_log_ratio, segment_ids), segment_ids)
        sizes = segment_sum(valid.to(log_ratio.dtype), segment_ids)
        share = 1 / segment_broadcast(sizes, segment_ids).clamp(min=1)  # spreads a segment's loss over its tokens
    else:
        raise ValueError(f"unknown policy-loss level {level!r}")

    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1 - clip_eps, 1 + clip_eps)
    loss = masked_mean(torch.maximum(unclipped, clipped) * share, valid)
    metrics = {
        "policy/clipfrac": masked_mean((clipped > unclipped).to(ratio.dtype), valid).detach(),
        "policy/approx_kl": masked_mean(0.5 * token_log_ratio.detach() ** 2, valid),
    }
    return loss, metrics


def ppo_value_loss(
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    *,
    clip_eps_value: float = 0.2,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Clipped critic loss ``½ max((V − Ĝ)², (clip(V, V_old ± ε_v) − Ĝ)²)``, masked mean over tokens.

    Metric: ``value/clipfrac`` (share of tokens where the clipped error is the larger).
    """
    valid = mask.bool()
    values = masked_fill_zero(values, valid)
    old_values = masked_fill_zero(old_values.detach(), valid)
    returns = masked_fill_zero(returns.detach(), valid)
    clipped_values = old_values + (values - old_values).clamp(-clip_eps_value, clip_eps_value)
    error = (values - returns) ** 2
    clipped_error = (clipped_values - returns) ** 2
    loss = 0.5 * masked_mean(torch.maximum(error, clipped_error), valid)
    return loss, {"value/clipfrac": masked_mean((clipped_error > error).to(error.dtype), valid).detach()}
