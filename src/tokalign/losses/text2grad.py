"""Text2Grad: PPO on span-level rewards from natural-language critiques (Wang et al., arXiv 2505.22338).

A critic's good and poor spans become token labels δ_t ∈ {−1, 0, +1} (the alignment of spans to
tokens is text-side work, in the method package); the reward of every response token is
``r_t = w_t δ_t − β_KL KL_t`` (the paper's ``r_t = δ_t + r_t^KL``), with no sequence score, and
PPO's ``gae``, ``whiten``, ``ppo_policy_loss`` and ``ppo_value_loss`` run on it unchanged. The
length weight w_t and the clause-restarting GAE are the authors' code's
(microsoft/Text2Grad, ``nl_gradiant_policy_optimization/slf5k/text2grad_trainer.py``), not the
paper's; both are options here.
"""

import torch
import torch.nn.functional as F

from tokalign.losses.masked import masked_fill_zero, masked_mean
from tokalign.losses.ppo import kl_penalty_rewards


def text2grad_length_weights(
    span_labels: torch.Tensor, mask: torch.Tensor, *, target_length: float = 48, alpha: float = 1.0
) -> torch.Tensor:
    """Their code's length weight ``λ_ℓ = 1 / (1 + exp(clip(α(ℓ − L*) − 6, −10, 6)))``, (B, T).

    ℓ counts positions from a row's first labelled valid token (ℓ = 1 there), holes in the mask
    included, as their code counts; tokens before it get weight 1. The weight lies in (0, 1], is
    non-increasing in ℓ and is ½ at ℓ = L* + 6 (their L* = 48, α = 1).
    """
    valid = mask.bool()
    labelled = valid & (masked_fill_zero(span_labels, valid) != 0)
    positions = torch.arange(mask.shape[-1], device=mask.device).expand_as(labelled)
    first = torch.where(labelled, positions, mask.shape[-1]).min(-1, keepdim=True).values
    length = (positions - first + 1).to(torch.float64)
    weights = torch.sigmoid(-(alpha * (length - target_length) - 6).clamp(-10, 6))
    dtype = span_labels.dtype if span_labels.is_floating_point() else torch.get_default_dtype()
    return torch.where(positions >= first, weights, 1.0).to(dtype)


def text2grad_token_rewards(
    span_labels: torch.Tensor,
    mask: torch.Tensor,
    *,
    kl: torch.Tensor | None = None,
    kl_coef: float = 0.0,
    length_weighting: bool = False,
    target_length: float = 48,
    alpha: float = 1.0,
    score: torch.Tensor | None = None,
    score_coef: float = 0.0,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """(B, T) Text2Grad rewards ``r_t = w_t δ_t − kl_coef · KL_t + [t = last valid] score_coef · score``.

    The paper's per-token reward (§3, "r_t = δ_t + r_t^KL"): δ = ``span_labels`` (−1 in a poor
    span, +1 in a good one, 0 elsewhere; ignored, even NaN, where mask is 0), ``kl`` a (B, T)
    per-token KL already computed by the caller (k1, k3 or the full-distribution KL; None: no
    penalty). ``w_t`` is ``text2grad_length_weights`` with ``length_weighting`` (their SLF5K code),
    1 otherwise. The paper adds no sequence score; ``score`` (B,) times ``score_coef`` on the last
    valid token is an option (the toy's "labels plus scalar" row), placed as ``kl_penalty_rewards``
    places it, so δ ≡ 0 gives PPO's KL rewards exactly. Rewards are detached, 0 where mask is 0.
    Metrics: ``text2grad/positive_share`` and ``text2grad/negative_share`` (labelled shares of
    valid tokens), ``text2grad/label_return`` (batch mean of Σ_t w_t δ_t), ``text2grad/kl``
    (mean KL_t over valid tokens).
    """
    for name, value in (("kl_coef", kl_coef), ("score_coef", score_coef), ("alpha", alpha)):
        if value < 0:
            raise ValueError(f"{name} must be >= 0, got {value}")
    valid = mask.bool()
    labels = masked_fill_zero(span_labels.detach(), valid)
    if labels.is_floating_point():
        dtype = labels.dtype
    else:  # integer labels take the KL's (or the default) floating type
        dtype = kl.dtype if kl is not None and kl.is_floating_point() else torch.get_default_dtype()
    labels = labels.to(dtype)
    kl = torch.zeros_like(labels) if kl is None else masked_fill_zero(kl.detach().to(dtype), valid)
    scores = torch.zeros(mask.shape[0], dtype=dtype, device=mask.device) if score is None else score.detach()
    rewards = kl_penalty_rewards(kl, torch.zeros_like(kl), mask, score_coef * scores, kl_coef=kl_coef)
    if length_weighting:
        labels = labels * text2grad_length_weights(labels, mask, target_length=target_length, alpha=alpha)
    rewards = rewards + labels
    metrics = {
        "text2grad/positive_share": masked_mean((labels > 0).to(dtype), valid),
        "text2grad/negative_share": masked_mean((labels < 0).to(dtype), valid),
        "text2grad/label_return": labels.sum(-1).mean(),
        "text2grad/kl": masked_mean(kl, valid),
    }
    return rewards.detach(), metrics


def clause_mask(mask: torch.Tensor, punctuation: torch.Tensor) -> torch.Tensor:
    """Their code's training mask: ``mask`` with the token *after* each valid punctuation token cleared.

    Their trainer meant to skip ``, . ? !`` tokens but cleared the log-prob position one to the
    right, so the following token loses its reward, its loss and its place in whitening; with
    ``clause_gae`` each hole also ends a GAE episode. ``punctuation`` (B, T) bool comes from the text.
    """
    valid = mask.bool()
    after = F.pad((punctuation.bool() & valid)[:, :-1], (1, 0), value=False)
    return (valid & ~after).to(mask.dtype)


def clause_gae(
    rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, *, gamma: float = 1.0, lam: float = 0.95
) -> tuple[torch.Tensor, torch.Tensor]:
    """GAE in which every hole of ``mask`` ends an episode: their code's ``lastgaelam *= mask``.

    ``δ_t = r_t + γ V_{t+1} − V_t`` with ``V_{t+1} = 0`` when position t+1 is masked, and
    ``Â_t = δ_t + γλ Â_{t+1}`` restarting from 0 after every masked position; ``Ĝ_t = Â_t + V_t``.
    On a mask without interior holes this is ``gae`` (the paper's A_t = Σ_l (γλ)^l δ_{t+l}); on
    ``clause_mask`` it confines a label's credit to its own clause. Outputs detached, 0 where mask is 0.
    """
    valid = mask.bool()
    rewards = masked_fill_zero(rewards.detach(), valid)
    values = masked_fill_zero(values.detach(), valid)
    deltas = rewards + gamma * F.pad(values[:, 1:], (0, 1)) - values
    advantages = torch.zeros_like(deltas)
    running = torch.zeros_like(deltas[:, 0])
    for t in reversed(range(deltas.shape[-1])):
        running = torch.where(valid[:, t], deltas[:, t] + gamma * lam * running, 0)
        advantages[:, t] = running
    return advantages, masked_fill_zero(advantages + values, valid)
