"""Masked reductions shared by the losses.

Per-token tensors may hold anything (even NaN or inf) where the mask is 0. Selecting with
``torch.where`` instead of multiplying by the mask keeps such values out of both the forward
value (``0 * nan`` is ``nan``) and the gradient.
"""

import torch


def masked_fill_zero(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``x`` where ``mask`` is set, exactly 0 elsewhere."""
    return torch.where(mask.bool(), x, 0)


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean of ``x`` over the positions where ``mask`` is set (0 where there are none)."""
    mask = mask.bool()
    return masked_fill_zero(x, mask).sum(dim=dim) / mask.sum(dim=dim).clamp(min=1)
