"""AlignDistil invariants (docs/methods.md, AlignDistil: invariants 1–7) on small float64 logits."""

import math

import pytest
import torch

from tokalign.losses import aligndistil_loss

from .helpers import make_mask, randn

VARIANTS = ["basic", "contrast", "aligndistil", "adaptive"]
SIDES = ["right", "left", "middle"]
V = 11


def _logits(seed: int, lengths=(4, 0, 1, 6), width: int = 8, side: str = "right", nan_outside: bool = True):
    """Policy, DPO and base logits (B, width, V) with NaN at masked positions, and the mask."""
    mask = make_mask(list(lengths), width, side)
    tensors = [randn(len(lengths), width, V, seed=10 * seed + i, scale=2.0) for i in range(3)]
    if nan_outside:
        tensors = [torch.where(mask.bool().unsqueeze(-1), x, float("nan")) for x in tensors]
    return (*tensors, mask)


def _reference(
    policy,
    dpo,
    base,
    mask,
    *,
    variant,
    beta0=0.1,
    beta=None,
    tvd_scale=10.0,
    eps=1e-3,
    temperature=1.0,
    length_norm=True,
):
    """Position by position, from the raw logits: the teacher of each variant and β_t · KL(π_θ ‖ π*)."""
    beta = beta0 if beta is None else beta
    rows = []
    for b in range(mask.shape[0]):
        total, count = 0.0, 0
        for t in mask[b].nonzero().flatten().tolist():
            z_pol, z_dpo, z_base = policy[b, t], dpo[b, t], base[b, t]
            if variant in ("aligndistil", "adaptive"):
                alpha = tvd_scale * (z_dpo.softmax(-1) - z_base.softmax(-1)).abs().sum().item() + eps
                beta_t = beta0 / alpha
            else:
                alpha, beta_t = beta0 / beta, beta
            if variant in ("basic", "adaptive"):
                z_teacher = alpha * z_dpo + (1 - alpha) * z_base
            else:
                z_teacher = z_dpo + alpha * (z_dpo - z_base)
            p = (z_pol / temperature).softmax(-1)
            kl = (p * (p.log() - (z_teacher / temperature).log_softmax(-1))).sum().item()
            total, count = total + beta_t * kl, count + 1
        rows.append(total / max(count, 1) if length_norm else total)
    return sum(rows) / len(rows)


def _kl(policy, target, mask):
    """Per-row length-normalised Σ_t KL(softmax(policy) ‖ softmax(target)), batch mean."""
    p = policy.log_softmax(-1)
    kl = (p.exp() * (p - target.log_softmax(-1))).sum(-1)
    kl = torch.where(mask.bool(), kl, 0)
    return (kl.sum(-1) / mask.sum(-1).clamp(min=1)).mean()


def test_one_position_by_hand():
    # π_θ = π_dpo = (½, ½), π_rdpo = (¼, ¾): ‖π_dpo − π_rdpo‖₁ = ½, α = 10 · ½ + 1e-3 = 5.001,
    # z* = z_dpo + α (z_dpo − z_rdpo) = (0, −α ln 3): π* = (1, 3^−α) / (1 + 3^−α); β_t = 0.1 / α
    policy = torch.zeros(1, 1, 2, dtype=torch.float64)
    reverse = torch.tensor([[[0.0, math.log(3)]]], dtype=torch.float64)
    loss, metrics = aligndistil_loss(policy, policy.clone(), reverse, torch.ones(1, 1))
    alpha = 5.001
    teacher = [1 / (1 + 3**-alpha), 3**-alpha / (1 + 3**-alpha)]
    kl = 0.5 * math.log(0.5 / teacher[0]) + 0.5 * math.log(0.5 / teacher[1])
    assert loss.item() == pytest.approx(0.1 / alpha * kl, rel=1e-12)
    assert metrics["aligndistil/kl"].item() == pytest.approx(kl, rel=1e-12)
    for stat in ("mean", "min", "max"):
        assert metrics[f"aligndistil/alpha_{stat}"].item() == pytest.approx(alpha, rel=1e-12)
        assert metrics[f"aligndistil/beta_{stat}"].item() == pytest.approx(0.1 / alpha, rel=1e-12)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("temperature", [1.0, 0.7])
@pytest.mark.parametrize("length_norm", [True, False])
def test_matches_the_position_by_position_reference(variant, temperature, length_norm):  # invariant 6, sum form
    policy, dpo, base, mask = _logits(0)
    kwargs = dict(variant=variant, beta0=0.1, beta=0.4, tvd_scale=3.0, temperature=temperature, length_norm=length_norm)
    loss, metrics = aligndistil_loss(policy, dpo, base, mask, **kwargs)
    assert loss.item() == pytest.approx(_reference(policy, dpo, base, mask, **kwargs), rel=1e-12)
    assert all(value.dim() == 0 and not value.requires_grad for value in metrics.values())


@pytest.mark.parametrize("variant", VARIANTS)
def test_nonnegative_and_zero_with_zero_gradient_at_the_teacher(variant):  # invariant 1
    policy, dpo, base, mask = _logits(1, nan_outside=False)
    for seed in range(3):
        loss, _ = aligndistil_loss(randn(*policy.shape, seed=seed), dpo, base, mask, variant=variant, beta=0.3)
        assert loss.item() >= 0
    dpo_lp, base_lp = dpo.log_softmax(-1), base.log_softmax(-1)
    if variant in ("aligndistil", "adaptive"):
        alpha = (10.0 * (dpo_lp.exp() - base_lp.exp()).abs().sum(-1) + 1e-3).unsqueeze(-1)
    else:
        alpha = 0.1 / 0.3
    anchor = base_lp if variant in ("basic", "adaptive") else dpo_lp
    teacher = (anchor + alpha * (dpo_lp - base_lp)).requires_grad_()
    loss, metrics = aligndistil_loss(teacher, dpo, base, mask, variant=variant, beta=0.3)
    (grad,) = torch.autograd.grad(loss, teacher)
    assert abs(loss.item()) < 1e-12 and grad.abs().max().item() < 1e-12
    assert abs(metrics["aligndistil/kl"].item()) < 1e-12


@pytest.mark.parametrize("variant", VARIANTS)
def test_per_position_constants_change_nothing(variant):  # invariant 2
    policy, dpo, base, mask = _logits(2, nan_outside=False)
    loss, metrics = aligndistil_loss(policy, dpo, base, mask, variant=variant, beta=0.5)
    shifted = [x + randn(*x.shape[:2], 1, seed=40 + i, scale=5.0) for i, x in enumerate((policy, dpo, base))]
    for inputs in (shifted, [x.log_softmax(-1) for x in (policy, dpo, base)]):
        other, other_metrics = aligndistil_loss(*inputs, mask, variant=variant, beta=0.5)
        torch.testing.assert_close(other, loss, rtol=1e-12, atol=1e-14)
        for key, value in metrics.items():
            torch.testing.assert_close(other_metrics[key], value, rtol=1e-12, atol=1e-14)


def test_identical_dpo_models_give_eps_and_distil_pi_dpo():  # invariant 3
    policy, dpo, _, mask = _logits(3)
    loss, metrics = aligndistil_loss(policy, dpo, dpo.clone(), mask, beta0=0.1, eps=1e-3)
    assert metrics["aligndistil/alpha_min"].item() == metrics["aligndistil/alpha_max"].item() == 1e-3
    assert metrics["aligndistil/beta_max"].item() == pytest.approx(100.0)  # β₀/ε: the literal ε
    expected = 0.1 / 1e-3 * _kl(policy, dpo, mask)
    torch.testing.assert_close(loss, expected, rtol=1e-12, atol=1e-14)


def test_fixed_variants_reduce_as_stated():  # invariant 4
    policy, dpo, base, mask = _logits(4)
    for beta in (None, 0.1):  # basic with β = β₀: π* = π_dpo
        loss, metrics = aligndistil_loss(policy, dpo, base, mask, beta0=0.1, variant="basic", beta=beta)
        torch.testing.assert_close(loss, 0.1 * _kl(policy, dpo, mask), rtol=1e-12, atol=1e-14)
        assert metrics["aligndistil/alpha_mean"].item() == 1.0
        assert metrics["aligndistil/beta_mean"].item() == pytest.approx(0.1, abs=1e-15)
    for beta in (0.05, 0.4):  # contrast with β = AlignDistil with r = 0, ε = β₀/β
        contrast, _ = aligndistil_loss(policy, dpo, base, mask, beta0=0.1, variant="contrast", beta=beta)
        same, _ = aligndistil_loss(policy, dpo, base, mask, beta0=0.1, tvd_scale=0.0, eps=0.1 / beta)
        torch.testing.assert_close(contrast, same, rtol=1e-12, atol=1e-14)
    adaptive, _ = aligndistil_loss(policy, dpo, base, mask, variant="adaptive", tvd_scale=0.0, eps=0.25)
    basic, _ = aligndistil_loss(policy, dpo, base, mask, variant="basic", beta=0.1 / 0.25)
    torch.testing.assert_close(adaptive, basic, rtol=1e-12, atol=1e-14)  # a constant α_t is the basic teacher


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("length_norm", [True, False])
def test_gradient_matches_closed_form(variant, length_norm):  # invariant 5
    policy, dpo, base, mask = _logits(5)
    policy = policy.requires_grad_()
    loss, _ = aligndistil_loss(policy, dpo, base, mask, variant=variant, beta=0.3, length_norm=length_norm)
    (grad,) = torch.autograd.grad(loss, policy)
    dpo_lp, base_lp = dpo.log_softmax(-1), base.log_softmax(-1)
    if variant in ("aligndistil", "adaptive"):
        alpha = 10.0 * (dpo_lp.exp() - base_lp.exp()).abs().sum(-1) + 1e-3
        beta_t = 0.1 / alpha
    else:
        alpha = torch.full(mask.shape, 0.1 / 0.3, dtype=torch.float64)
        beta_t = torch.full(mask.shape, 0.3, dtype=torch.float64)
    anchor = base_lp if variant in ("basic", "adaptive") else dpo_lp
    teacher = (anchor + alpha.unsqueeze(-1) * (dpo_lp - base_lp)).log_softmax(-1)
    with torch.no_grad():
        log_p = policy.log_softmax(-1)
        p = log_p.exp()
        kl = (p * (log_p - teacher)).sum(-1, keepdim=True)
        norm = mask.sum(-1, keepdim=True).clamp(min=1) if length_norm else torch.ones(mask.shape[0], 1)
        weight = beta_t / (mask.shape[0] * norm)
        expected = torch.where(mask.bool().unsqueeze(-1), weight.unsqueeze(-1) * p * (log_p - teacher - kl), 0)
    torch.testing.assert_close(grad, expected, rtol=0, atol=1e-14)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("side", SIDES)
def test_padding_extra_positions_and_batch_mates_do_not_matter(variant, side):  # invariant 6
    lengths = (4, 0, 1, 6)
    policy, dpo, base, mask = _logits(6, lengths, side=side)
    loss, _ = aligndistil_loss(policy, dpo, base, mask, variant=variant, beta=0.2)
    singles = []
    for row, length in enumerate(lengths):  # alone, left-padded to width 11, NaN logits around it
        alone = make_mask([length], 11, "left")
        moved = []
        for x in (policy, dpo, base):
            y = torch.full((1, 11, V), float("nan"), dtype=torch.float64)
            y[alone.bool()] = x[row][mask[row].bool()]
            moved.append(y)
        singles.append(aligndistil_loss(*moved, alone, variant=variant, beta=0.2)[0])
    torch.testing.assert_close(loss, torch.stack(singles).mean(), rtol=1e-13, atol=1e-15)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("chunk_size", [1, 3, 7, 1000])
def test_chunked_equals_unchunked(variant, chunk_size):  # invariant 7
    policy, dpo, base, mask = _logits(7)
    policy = policy.requires_grad_()
    kwargs = dict(variant=variant, beta=0.3, temperature=0.8)
    whole, whole_metrics = aligndistil_loss(policy, dpo, base, mask, **kwargs)
    (whole_grad,) = torch.autograd.grad(whole, policy)
    chunked, chunked_metrics = aligndistil_loss(policy, dpo, base, mask, chunk_size=chunk_size, **kwargs)
    (chunked_grad,) = torch.autograd.grad(chunked, policy)
    torch.testing.assert_close(chunked, whole, rtol=1e-13, atol=1e-15)
    assert torch.isfinite(whole_grad).all() and (whole_grad[mask == 0] == 0).all()  # NaN logits off the mask
    torch.testing.assert_close(chunked_grad, whole_grad, rtol=1e-13, atol=1e-15)
    for key, value in whole_metrics.items():
        torch.testing.assert_close(chunked_metrics[key], value, rtol=1e-13, atol=1e-15)


def test_chunking_keeps_no_activation_per_logit():  # invariant 7: memory O(chunk × V)
    policy, dpo, base, mask = _logits(8, lengths=(8, 8, 8, 8), nan_outside=False)
    policy = policy.requires_grad_()
    inputs = {x.untyped_storage().data_ptr() for x in (policy, dpo, base)}
    for chunk_size in (None, 4):
        saved = []  # shapes of the tensors autograd keeps for backward, the inputs aside

        def pack(tensor):
            if tensor.untyped_storage().data_ptr() not in inputs:
                saved.append(tuple(tensor.shape))
            return tensor

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            loss, _ = aligndistil_loss(policy, dpo, base, mask, chunk_size=chunk_size)
        loss.backward()
        with_vocabulary = [shape for shape in saved if V in shape]
        if chunk_size is None:  # plain autograd keeps (32, V) probabilities and log-probabilities
            assert with_vocabulary.count((32, V)) >= 3
        else:  # only the policy logits' gradient, written chunk by chunk
            assert with_vocabulary == [tuple(policy.shape)]


def test_frozen_logits_get_no_gradient_and_low_precision_is_computed_in_float32():  # invariant 7
    policy, dpo, base, mask = (x.requires_grad_() if x.is_floating_point() else x for x in _logits(9))
    loss, _ = aligndistil_loss(policy, dpo, base, mask, chunk_size=2)
    loss.backward()
    assert policy.grad is not None and dpo.grad is None and base.grad is None
    halves = [x.detach().nan_to_num().bfloat16() for x in (policy, dpo, base)]
    low, _ = aligndistil_loss(*halves, mask)
    assert low.dtype == torch.float32
    full, _ = aligndistil_loss(*(x.double() for x in halves), mask)
    assert low.item() == pytest.approx(full.item(), rel=1e-5)
    student = halves[0].requires_grad_()
    chunked, _ = aligndistil_loss(student, *halves[1:], mask, chunk_size=3)
    assert chunked.dtype == torch.float32 and chunked.item() == pytest.approx(low.item(), rel=1e-6)
    chunked.backward()
    assert student.grad.dtype == torch.bfloat16
    with torch.no_grad():  # nothing to differentiate: no gradient buffer, the same value
        assert aligndistil_loss(*halves, mask, chunk_size=3)[0].item() == chunked.item()


def test_shifted_positions_reproduce_the_authors_alignment():
    policy, dpo, base, mask = _logits(10, lengths=(3, 5), width=5, side="right", nan_outside=False)
    shifted, _ = aligndistil_loss(policy, dpo, base, mask, shift_positions=True)
    # row 0 (tokens 0–2, padding after): positions 1–3; row 1 fills the width: positions 1–4 (L − 1)
    kept = torch.tensor([[0, 1, 1, 1, 0], [0, 1, 1, 1, 1]])
    expected, _ = aligndistil_loss(policy, dpo, base, kept)
    torch.testing.assert_close(shifted, expected, rtol=0, atol=0)
    only_eos, _ = aligndistil_loss(policy[:1, :1], dpo[:1, :1], base[:1, :1], torch.ones(1, 1), shift_positions=True)
    assert only_eos.item() == 0.0  # nothing kept: 0, not their 0/0


def test_invalid_arguments_fail():
    policy, dpo, base, mask = _logits(11)
    for kwargs, match in (
        (dict(variant="theorem1"), "variant"),
        (dict(chunk_size=0), "chunk_size"),
        (dict(variant="basic", beta=0.0), "beta"),
    ):
        with pytest.raises(ValueError, match=match):
            aligndistil_loss(policy, dpo, base, mask, **kwargs)
