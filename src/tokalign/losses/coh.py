"""Chain of Hindsight (Liu, Sferrazza, Abbeel; arXiv 2302.02676, ICLR 2024).

CoH fine-tunes on chains "prompt, feedback marker, output, marker, output…": a language-model
loss on the model outputs only (Eq. 2, the feedback markers carry none), plus a pretraining
language-model term weighted by λ (Eq. 3), with forgetful causal masking (a few past tokens
hidden from each query) against copying the positive output from the negative one. Building the
chains is text-side work (``tokalign.data.hindsight``); here are the loss on gathered per-token
log-probs and the attention mask.
"""

import torch

from tokalign.losses.masked import masked_mean


def _example_mean_nll(logps: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over rows that have a valid token of each row's mean −log p over its valid tokens."""
    valid = mask.bool()
    per_row = -masked_mean(logps, valid, dim=-1)
    return masked_mean(per_row, valid.any(-1))


def coh_loss(
    policy_logps: torch.Tensor,
    loss_mask: torch.Tensor,
    *,
    pretrain_logps: torch.Tensor | None = None,
    pretrain_mask: torch.Tensor | None = None,
    pretrain_weight: float = 1.5,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """``L = L_F + λ L_P`` (Eq. 3 as a loss to minimise; λ = ``pretrain_weight``, App. B: 1.5).

    ``L_F`` is Eq. 2: −log p of the tokens with ``loss_mask`` 1 (every model output and the EOS
    after it; prompt, markers and padding 0 and ignored even when NaN), averaged per example over
    its tokens and then over the examples that have any (the authors' code averages per packed
    1024-token chunk instead, which lets packing decide an example's weight). ``L_P`` is the same
    mean over ``pretrain_logps`` (B_P, T_P) under ``pretrain_mask``; None: no pretraining term.
    Metrics: ``loss/feedback``, ``loss/pretrain`` (0 without pretraining rows).
    """
    if pretrain_weight < 0:
        raise ValueError(f"pretrain_weight must be >= 0, got {pretrain_weight}")
    if (pretrain_logps is None) != (pretrain_mask is None):
        raise ValueError("pretrain_logps and pretrain_mask come together")
    feedback = _example_mean_nll(policy_logps, loss_mask)
    loss = feedback
    pretrain = torch.zeros_like(feedback)
    if pretrain_logps is not None and pretrain_mask is not None:
        pretrain = _example_mean_nll(pretrain_logps, pretrain_mask)
        loss = feedback + pretrain_weight * pretrain
    return loss, {"loss/feedback": feedback.detach(), "loss/pretrain": pretrain.detach()}


def forgetful_causal_mask(
    batch_size: int,
    seq_len: int,
    *,
    min_ratio: float = 0.0,
    max_ratio: float = 0.05,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Forgetful causal masking (§3.2 "randomly mask 0–5% of past tokens"), bool (B, 1, T, T).

    As the authors' code does (``coh/gptj.py``, ``coh/llama.py``): each row draws
    ``r ~ U[min_ratio, max_ratio]``, then query i keeps key j ≤ i iff ``u_ij ≥ r`` with
    ``u ~ U[0, 1)`` drawn per (row, i, j); key 0 is always kept, and the diagonal may be dropped
    too. True means "may attend". ``max_ratio = 0`` gives exactly the causal mask; draws come
    from ``generator`` (the ratios first, then u), so a seed reproduces the mask.
    """
    if not 0 <= min_ratio <= max_ratio < 1:
        raise ValueError(f"need 0 <= min_ratio <= max_ratio < 1, got {min_ratio}, {max_ratio}")
    ratios = min_ratio + (max_ratio - min_ratio) * torch.rand(batch_size, generator=generator, device=device)
    u = torch.rand(batch_size, seq_len, seq_len, generator=generator, device=device)
    causal = torch.ones(seq_len, seq_len, dtype=torch.bool, device=device).tril()
    keep = u >= ratios.view(-1, 1, 1)
    keep[:, :, 0] = True
    return (keep & causal).unsqueeze(1)
