"""InTRO: In-Token Rationality Optimization (Zhu et al., AAAI 2026, arXiv 2511.09865).

The policy p_t = π_θ(·|x, z<t) is corrected, token by token, towards its answer-conditioned self
q_t = π_θ(·|x⊕y, z<t) (the same weights, the gold answer y appended to the question): Eq. 7
maximises ``1/(|z|·n) Σ_t Σ_i w_t^i log p_t(c_t^i)`` with ``w = q/p`` clipped to [0, w_max],
over n candidates per position (``c_t^1`` the sampled token z_t, the others drawn from p_t), on
the rationales whose final answer is right. The weights and the posterior are fixed proposals:
detached. No public code; the tokalign form and its reading are in docs/methods.md (InTRO).
"""

from __future__ import annotations

import math

import torch

from tokalign.losses.masked import masked_fill_zero


def _float(x: torch.Tensor) -> torch.Tensor:
    """At least float32: bf16 log-ratios are too coarse for w = exp(log q − log p)."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def intro_candidates(
    policy_logits: torch.Tensor,
    tokens: torch.Tensor,
    mask: torch.Tensor,
    *,
    num_candidates: int = 5,
    temperature: float = 1.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """(B, T, n) candidate ids (Alg. 1): ``[..., 0]`` is the response token, the n − 1 others i.i.d.

    draws with replacement from ``softmax(policy_logits / τ)`` at each valid position (duplicates
    kept). Positions where ``mask`` is 0 repeat the response token and draw nothing, so NaN logits
    there never reach the sampler. Draws follow the valid positions in row-major order, so the same
    ``generator`` state gives the same candidates. Detached.
    """
    if num_candidates < 1:
        raise ValueError(f"num_candidates must be >= 1, got {num_candidates}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    candidates = tokens.unsqueeze(-1).repeat(1, 1, num_candidates)
    valid = mask.bool()
    if num_candidates == 1 or not valid.any():
        return candidates
    probs = torch.softmax(_float(policy_logits.detach()[valid]) / temperature, -1)
    draws = torch.multinomial(probs, num_candidates - 1, replacement=True, generator=generator)
    candidates[..., 1:][valid] = draws.to(candidates.dtype)
    return candidates


def _row_weights(mask: torch.Tensor, n: int, dtype: torch.dtype) -> tuple[torch.Tensor, int]:
    """(B,) weights 1/(|K|·T_b·n) for kept rows (any valid token), 0 for the others; and |K|."""
    counts = mask.bool().sum(-1)
    kept = counts > 0
    num_kept = int(kept.sum())
    weights = torch.where(kept, 1 / (max(num_kept, 1) * counts.clamp(min=1).to(dtype) * n), 0)
    return weights, num_kept


def intro_loss(
    policy_logps: torch.Tensor,
    posterior_logps: torch.Tensor,
    mask: torch.Tensor,
    *,
    w_max: float = 200.0,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Eq. 7, minimised: ``L = −(1/|K|) Σ_{b∈K} 1/(T_b·n) Σ_t Σ_i sg[w_t^i] log p_t(c_t^i)``.

    ``policy_logps`` (with grad) and ``posterior_logps`` are (B, T, n) log-probs of the candidates
    (``intro_candidates``) under p and q; ``w = min(exp(log q − log p), w_max)`` (Eq. 6 per token,
    clipped as the paper does), detached, so ``∂L/∂log p_t(c_t^i) = −w_t^i / (|K|·T_b·n)``. K are
    the rows with any valid token (wrong answers come with an all-zero mask and add nothing);
    values where ``mask`` is 0 are ignored, even NaN.
    Metrics (over valid positions and candidates): ``intro/w_mean``, ``intro/w_max``,
    ``intro/clip_frac`` (share of raw ratios above w_max), ``intro/kept_rows`` and
    ``intro/log_ratio_sampled`` (mean log q − log p of the sampled token, ``[..., 0]``).
    """
    if w_max <= 0:
        raise ValueError(f"w_max must be > 0, got {w_max}")
    valid = mask.bool()
    n = policy_logps.shape[-1]
    valid_n = valid.unsqueeze(-1).expand_as(policy_logps)
    log_p = masked_fill_zero(_float(policy_logps), valid_n)
    log_ratio = masked_fill_zero(_float(posterior_logps).detach() - log_p.detach(), valid_n)
    weights = log_ratio.exp().clamp(max=w_max)
    rows, num_kept = _row_weights(mask, n, log_p.dtype)
    loss = -(rows[:, None, None] * masked_fill_zero(weights * log_p, valid_n)).sum()
    selected = weights[valid_n]
    metrics = {
        "intro/w_mean": selected.mean() if selected.numel() else log_p.new_zeros(()),
        "intro/w_max": selected.max() if selected.numel() else log_p.new_zeros(()),
        "intro/clip_frac": (log_ratio[valid_n] > math.log(w_max)).to(log_p.dtype).mean()
        if selected.numel()
        else log_p.new_zeros(()),
        "intro/kept_rows": torch.tensor(float(num_kept)),
        "intro/log_ratio_sampled": log_ratio[..., 0][valid].mean() if valid.any() else log_p.new_zeros(()),
    }
    return loss, {key: value.detach() for key, value in metrics.items()}


def _position_terms(
    policy_logits: torch.Tensor, posterior_logits: torch.Tensor, tokens: torch.Tensor, n: int, w_max: float
) -> tuple[torch.Tensor, ...]:
    """(N, V) logits and (N,) tokens → per-position loss, the sampled token's weight a = w(z)/n,
    the added candidates' weights c = ((n−1)/n)·min(q, w_max·p) (N, V), p (N, V), the raw log q − log p of z."""
    log_p = torch.log_softmax(_float(policy_logits), -1)
    log_q = torch.log_softmax(_float(posterior_logits.detach()), -1)
    p = log_p.detach().exp()
    log_p_token = log_p.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    log_ratio = log_q.gather(-1, tokens.unsqueeze(-1)).squeeze(-1) - log_p_token.detach()
    sampled = log_ratio.exp().clamp(max=w_max) / n
    added = (n - 1) / n * torch.minimum(log_q.exp(), w_max * p)
    loss = -(sampled * log_p_token + (added * log_p).sum(-1))
    return loss, sampled, added, p, log_ratio


class _ChunkedExpected(torch.autograd.Function):
    """Σ_positions weight · loss, chunk by chunk, with the policy logits' gradient in closed form.

    Per position ``∂/∂z = (a + Σ_v c_v)·p − c − a·onehot(z)``, written into one buffer the size of
    the policy logits during the forward pass, so no (chunk × V) activation outlives its chunk.
    """

    @staticmethod
    def forward(ctx, policy, posterior, rows, columns, tokens, weights, n, w_max, chunk_size, differentiate):
        gradient = torch.zeros_like(policy) if differentiate else None
        loss, parts = weights.new_zeros(()), []
        for start in range(0, len(rows), chunk_size):
            index = rows[start : start + chunk_size], columns[start : start + chunk_size]
            scale = weights[start : start + chunk_size]
            terms, sampled, added, p, log_ratio = _position_terms(
                policy[index], posterior[index], tokens[index], n, w_max
            )
            loss = loss + (scale * terms).sum()
            parts.append(torch.stack([sampled * n, log_ratio]))
            if gradient is not None:
                chunk = (sampled + added.sum(-1)).unsqueeze(-1) * p - added
                chunk.scatter_add_(-1, tokens[index].unsqueeze(-1), -sampled.unsqueeze(-1))
                gradient[index] = (scale.unsqueeze(-1) * chunk).to(gradient.dtype)
        ctx.save_for_backward(gradient)
        return loss, torch.cat(parts, -1) if parts else weights.new_zeros(2, 0)

    @staticmethod
    def backward(ctx, grad_loss, grad_parts):
        (gradient,) = ctx.saved_tensors
        return (None if gradient is None else grad_loss * gradient), *([None] * 9)


def intro_expected_loss(
    policy_logits: torch.Tensor,
    posterior_logits: torch.Tensor,
    tokens: torch.Tensor,
    mask: torch.Tensor,
    *,
    num_candidates: int = 5,
    w_max: float = 200.0,
    chunk_size: int | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """``intro_loss`` with the n − 1 added candidates' share taken exactly over the vocabulary.

    Per valid position: ``−(1/n) w(z_t) log p(z_t) − ((n−1)/n) Σ_v min(q(v), w_max·p(v)) log p(v)``
    (the expectation of Eq. 7's added terms under c ~ p_t), weighted 1/(|K|·T_b) as in
    ``intro_loss``. Unclipped, the second term is ((n−1)/n)·H(q_t, p_t): forward-KL distillation of
    the answer-conditioned model into the policy, with logit gradient ((n−1)/n)(p − q)/(|K|·T_b).
    Logits are (B, T, V), position t predicting ``tokens[:, t]``; a per-position constant changes
    nothing. The posterior and the weight ``min(q, w_max·p)`` are detached. ``chunk_size`` (None:
    all valid positions at once, plain autograd) processes that many positions at a time and writes
    the policy logits' gradient in closed form, so the float32 working memory is O(chunk × V).
    Metrics: ``intro/w_mean``, ``intro/w_max``, ``intro/clip_frac`` and
    ``intro/log_ratio_sampled`` of the sampled token, ``intro/kept_rows``.
    """
    if num_candidates < 1:
        raise ValueError(f"num_candidates must be >= 1, got {num_candidates}")
    if w_max <= 0:
        raise ValueError(f"w_max must be > 0, got {w_max}")
    if chunk_size is not None and chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    valid = mask.bool()
    dtype = torch.promote_types(policy_logits.dtype, torch.float32)
    row_weights, num_kept = _row_weights(mask, 1, dtype)
    rows, columns = valid.nonzero(as_tuple=True)
    weights = row_weights[rows]
    tokens = torch.where(valid, tokens, 0)
    if chunk_size is None:
        terms, sampled, _, _, log_ratio = _position_terms(
            policy_logits[rows, columns], posterior_logits[rows, columns], tokens[rows, columns], num_candidates, w_max
        )
        loss = (weights * terms).sum()
        parts = torch.stack([sampled * num_candidates, log_ratio]).detach()
    else:
        differentiate = torch.is_grad_enabled() and policy_logits.requires_grad
        loss, parts = _ChunkedExpected.apply(
            policy_logits,
            posterior_logits.detach(),
            rows,
            columns,
            tokens,
            weights,
            num_candidates,
            w_max,
            chunk_size,
            differentiate,
        )
    w, log_ratio = parts if parts.shape[-1] else loss.new_zeros(2, 1).detach()
    metrics = {
        "intro/w_mean": w.mean(),
        "intro/w_max": w.max(),
        "intro/clip_frac": (log_ratio > math.log(w_max)).to(w.dtype).mean(),
        "intro/kept_rows": torch.tensor(float(num_kept)),
        "intro/log_ratio_sampled": log_ratio.mean(),
    }
    return loss, {key: value.detach() for key, value in metrics.items()}
