"""AlignDistil: RLHF as token-level distillation (Zhang et al., ACL 2025, arXiv 2503.02832).

With DPO's token reward in the KL-regularised RLHF objective, the optimal policy at each
position is a closed-form teacher π*_t built from the logits of a DPO model and a base model
(the reference, or a reverse DPO model trained with chosen and rejected swapped); RLHF becomes
reverse-KL distillation of π*_t into π_θ over the whole vocabulary. Follows the authors'
trainers (songmzhang/AlignDistil, ``OpenRLHF/openrlhf/trainer/aligndistil_trainer.py`` and
``aligndistil_offpolicy_trainer.py``) except where noted in ``aligndistil_loss``.
"""

from typing import Any

import torch
import torch.nn.functional as F

VARIANTS = ("basic", "contrast", "aligndistil", "adaptive")


def _log_softmax(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Log-softmax in at least float32 (bf16 log-ratios are too noisy)."""
    return torch.log_softmax(logits.to(torch.promote_types(logits.dtype, torch.float32)) / temperature, -1)


def _position_terms(
    policy_logits: torch.Tensor,
    dpo_logits: torch.Tensor,
    base_logits: torch.Tensor,
    *,
    variant: str,
    beta0: float,
    beta: float,
    tvd_scale: float,
    eps: float,
    temperature: float,
) -> tuple[torch.Tensor, ...]:
    """(N, V) logits → KL(π_θ ‖ π*), α, β_t (each (N,)), and log π_θ, log π* (each (N, V))."""
    dpo, base = _log_softmax(dpo_logits), _log_softmax(base_logits)
    if variant in ("aligndistil", "adaptive"):
        alpha = tvd_scale * (dpo.exp() - base.exp()).abs().sum(-1) + eps
        beta_t = beta0 / alpha
    else:
        alpha = dpo.new_full(dpo.shape[:-1], beta0 / beta)
        beta_t = dpo.new_full(dpo.shape[:-1], beta)
    anchor = base if variant in ("basic", "adaptive") else dpo  # mix towards, or extrapolate from, π_dpo
    teacher = _log_softmax(anchor + alpha.unsqueeze(-1) * (dpo - base), temperature)
    student = _log_softmax(policy_logits, temperature)
    kl = (student.exp() * (student - teacher)).sum(-1)
    return kl, alpha, beta_t, student, teacher


class _ChunkedDistillation(torch.autograd.Function):
    """Σ_n w_n β_n KL_n over positions, chunk by chunk, with the logits' gradient in closed form.

    ``∂(β KL)/∂z = (β/τ) p ⊙ (log p − log π* − KL)`` is written into one buffer the size of the
    policy logits during the forward pass, so no (chunk × V) activation outlives its chunk.
    """

    @staticmethod
    def forward(ctx, policy, dpo, base, rows, columns, weights, chunk_size, settings, differentiate):
        gradient = torch.zeros_like(policy) if differentiate else None
        loss, parts = weights.new_zeros(()), []
        for start in range(0, len(rows), chunk_size):
            index = rows[start : start + chunk_size], columns[start : start + chunk_size]
            kl, alpha, beta_t, student, teacher = _position_terms(*(x[index] for x in (policy, dpo, base)), **settings)
            scale = weights[start : start + chunk_size] * beta_t
            loss = loss + (scale * kl).sum()
            parts.append(torch.stack([kl, alpha, beta_t]))
            if gradient is not None:
                chunk_gradient = student.exp() * (student - teacher - kl.unsqueeze(-1))
                gradient[index] = (scale.unsqueeze(-1) / settings["temperature"] * chunk_gradient).to(gradient.dtype)
        ctx.save_for_backward(gradient)
        return loss, torch.cat(parts, -1) if parts else weights.new_zeros(3, 0)

    @staticmethod
    def backward(ctx, grad_loss, grad_parts):
        (gradient,) = ctx.saved_tensors
        return (None if gradient is None else grad_loss * gradient), *([None] * 8)


def aligndistil_loss(
    policy_logits: torch.Tensor,
    dpo_logits: torch.Tensor,
    base_logits: torch.Tensor,
    mask: torch.Tensor,
    *,
    beta0: float = 0.1,
    variant: str = "aligndistil",
    beta: float | None = None,
    tvd_scale: float = 10.0,
    eps: float = 1e-3,
    temperature: float = 1.0,
    length_norm: bool = True,
    chunk_size: int | None = None,
    shift_positions: bool = False,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """``L = (1/B) Σ_b (1/|y_b|) Σ_t β_t · KL(π_θ(·|s_t) ‖ π*_t)`` over each row's valid positions.

    Logits (or log-probs: a per-position constant changes nothing) are (B, T, V), position t
    being the distribution that predicts response token t; all three share the vocabulary.
    With ``z`` the log-softmax of a model's logits at a position, the teacher is
    ``π*_t = softmax((z_anchor + α_t (z_dpo − z_base)) / τ)``:

    - ``basic`` (Thm 1): base = π_ref, anchor = base, α = β₀/β: π* ∝ exp((β₀/β) z_dpo + (1 − β₀/β) z_ref);
      β_t = β (``beta`` None means β₀, so π* = π_dpo).
    - ``contrast``: base = reverse DPO, anchor = π_dpo, α = β₀/β; β_t = β.
    - ``aligndistil`` (Eq. 16–17): base = reverse DPO, anchor = π_dpo,
      ``α_t = tvd_scale · ‖π_dpo − π_base‖₁ + eps`` (the L1 sum, as their code), β_t = β₀/α_t.
    - ``adaptive`` (their ablation): base = π_ref, anchor = base, α_t as above, β_t = β₀/α_t.

    α_t comes from the untempered distributions; τ = ``temperature`` divides both the teacher's
    and the student's logits (their on-policy trainer; the off-policy one leaves the student
    untempered: the same at their τ = 1). ``length_norm=False`` sums over positions instead of
    averaging; rows with no valid position add 0 (their code divides 0 by 0). The loss is the
    batch mean over all B rows; multiply by their ``kd_coef`` outside if wanted.
    ``chunk_size`` (None: all positions at once, plain autograd) processes that many valid
    positions at a time and writes the policy logits' gradient in closed form as it goes, so
    the float32 working memory is O(chunk_size × V) plus one gradient the size of the logits,
    instead of several (B·T × V) activations kept for the backward pass.
    ``shift_positions=True`` reproduces the authors' off-by-one: each row's kept positions move
    one later (their distributions predict y_2 … y_{L+1}); a row whose last token fills the
    last column then keeps L − 1 positions, as their on-policy trainer does. The frozen
    models' logits are detached.
    Metrics (over valid positions): ``aligndistil/alpha_{mean,min,max}``,
    ``aligndistil/beta_{mean,min,max}`` (β_t) and ``aligndistil/kl`` (mean KL(π_θ ‖ π*_t)).
    """
    if variant not in VARIANTS:
        raise ValueError(f"unknown AlignDistil variant {variant!r}")
    if chunk_size is not None and chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    beta = beta0 if beta is None else beta
    if beta <= 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    valid = mask.bool()
    if shift_positions:
        valid = F.pad(valid[:, :-1], (1, 0))
    dtype = torch.promote_types(policy_logits.dtype, torch.float32)
    counts = valid.sum(-1).to(dtype)
    row_weights = 1 / (len(counts) * (counts.clamp(min=1) if length_norm else torch.ones_like(counts)))
    rows, columns = valid.nonzero(as_tuple=True)
    logits = (policy_logits, dpo_logits.detach(), base_logits.detach())
    settings: dict[str, Any] = dict(
        variant=variant, beta0=beta0, beta=beta, tvd_scale=tvd_scale, eps=eps, temperature=temperature
    )

    if chunk_size is None:  # plain autograd
        kl, alpha, beta_t, _, _ = _position_terms(*(x[rows, columns] for x in logits), **settings)
        loss = (row_weights[rows] * beta_t * kl).sum()
        values = torch.stack([kl, alpha, beta_t]).detach()
    else:
        differentiate = torch.is_grad_enabled() and policy_logits.requires_grad
        loss, values = _ChunkedDistillation.apply(
            *logits, rows, columns, row_weights[rows], chunk_size, settings, differentiate
        )
    kl, alpha, beta_t = values if values.shape[-1] else loss.new_zeros(3, 1).detach()
    metrics = {"aligndistil/kl": kl.mean()}
    for name, values in (("alpha", alpha), ("beta", beta_t)):
        metrics[f"aligndistil/{name}_mean"] = values.mean()
        metrics[f"aligndistil/{name}_min"] = values.min()
        metrics[f"aligndistil/{name}_max"] = values.max()
    return loss, metrics
