"""Chain of Hindsight loss and forgetful causal mask (docs/methods.md, CoH: invariants 1–4, 6)."""

import pytest
import torch
import torch.nn.functional as F

from tokalign.losses import coh_loss, forgetful_causal_mask

from .helpers import logps, make_mask, with_garbage

NAN = float("nan")
SIDES = ["right", "left", "middle"]


def _f64(rows):
    return torch.tensor(rows, dtype=torch.float64)


def test_loss_by_hand():
    logp = _f64([[NAN, -1.0, -3.0, NAN], [-2.0, NAN, NAN, NAN]])
    mask = torch.tensor([[0, 1, 1, 0], [1, 0, 0, 0]])
    loss, metrics = coh_loss(logp, mask)
    assert loss.item() == 2.0  # rows: mean(1, 3) = 2 and 2
    pre = _f64([[-4.0, -2.0]])
    loss, metrics = coh_loss(logp, mask, pretrain_logps=pre, pretrain_mask=torch.ones(1, 2), pretrain_weight=0.5)
    assert loss.item() == 2.0 + 0.5 * 3.0
    assert metrics["loss/feedback"].item() == 2.0 and metrics["loss/pretrain"].item() == 3.0
    assert coh_loss(logp, mask)[1]["loss/pretrain"].item() == 0.0


def test_one_output_without_pretraining_is_sft_loss_and_gradient():  # invariant 1
    """The SFT loss of a response: mean cross-entropy of its tokens (one example, as TRL computes it)."""
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(1, 7, 11, generator=gen, dtype=torch.float64, requires_grad=True)
    targets = torch.randint(0, 11, (1, 7), generator=gen)
    response = torch.tensor([[0, 0, 0, 1, 1, 1, 1]])  # prompt and marker-free: response and its EOS
    labels = torch.where(response.bool(), targets, -100)
    sft = F.cross_entropy(logits.view(-1, 11), labels.view(-1), ignore_index=-100)
    (sft_grad,) = torch.autograd.grad(sft, logits)
    gathered = logits.log_softmax(-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    loss, _ = coh_loss(gathered, response, pretrain_weight=0.0)
    (grad,) = torch.autograd.grad(loss, logits)
    torch.testing.assert_close(loss, sft, rtol=0, atol=1e-14)
    torch.testing.assert_close(grad, sft_grad, rtol=0, atol=1e-14)


@pytest.mark.parametrize("side", SIDES)
def test_masked_positions_get_no_gradient_and_nan_is_ignored(side):  # invariant 2
    mask = make_mask([5, 1, 8], 9, side)
    clean = logps(3, 9, seed=0).requires_grad_()
    loss, _ = coh_loss(with_garbage(clean, mask), mask)
    loss.backward()
    assert torch.isfinite(loss)
    assert (clean.grad[mask == 0] == 0).all() and (clean.grad[mask == 1] != 0).all()
    pre = logps(2, 6, seed=1).requires_grad_()
    pre_mask = make_mask([6, 2], 6, side="left")
    loss, _ = coh_loss(
        with_garbage(clean, mask), mask, pretrain_logps=with_garbage(pre, pre_mask), pretrain_mask=pre_mask
    )
    loss.backward()
    assert torch.isfinite(loss) and (pre.grad[pre_mask == 0] == 0).all()


def test_total_is_feedback_plus_weighted_pretraining_and_gradient_is_linear():  # invariant 3
    mask = make_mask([5, 3], 6)
    pre_mask = make_mask([6, 4, 2], 6)
    x, p = logps(2, 6, seed=2), logps(3, 6, seed=3)

    def grad(weight):
        xs, ps = x.clone().requires_grad_(), p.clone().requires_grad_()
        loss, metrics = coh_loss(xs, mask, pretrain_logps=ps, pretrain_mask=pre_mask, pretrain_weight=weight)
        loss.backward()
        return loss, metrics, torch.cat([xs.grad.flatten(), ps.grad.flatten()])

    zero_loss, _, g0 = grad(0.0)
    assert torch.equal(zero_loss, coh_loss(x, mask)[0])
    one_loss, metrics, g1 = grad(1.0)
    for weight in (0.01, 1.5, 4.0):
        loss, _, g = grad(weight)
        torch.testing.assert_close(loss, metrics["loss/feedback"] + weight * metrics["loss/pretrain"])
        torch.testing.assert_close(g, g0 + weight * (g1 - g0), rtol=0, atol=1e-14)
    with pytest.raises(ValueError, match="pretrain_weight"):
        coh_loss(x, mask, pretrain_weight=-1.0)
    with pytest.raises(ValueError, match="together"):
        coh_loss(x, mask, pretrain_logps=p)


def test_forgetful_mask_is_inside_causal_keeps_column_0_and_is_causal_at_zero():  # invariant 4
    causal = torch.ones(7, 7, dtype=torch.bool).tril()
    gen = torch.Generator().manual_seed(0)
    for low, high in ((0.0, 0.05), (0.2, 0.6), (0.5, 0.5)):
        mask = forgetful_causal_mask(3, 7, min_ratio=low, max_ratio=high, generator=gen)
        assert mask.shape == (3, 1, 7, 7) and mask.dtype == torch.bool
        assert not (mask & ~causal).any()
        assert mask[..., 0].all()
    assert torch.equal(
        forgetful_causal_mask(4, 9, max_ratio=0.0), torch.ones(9, 9, dtype=torch.bool).tril().expand(4, 1, 9, 9)
    )
    with pytest.raises(ValueError):
        forgetful_causal_mask(1, 3, min_ratio=0.1, max_ratio=0.05)


@pytest.mark.parametrize(("low", "high"), [(0.0, 0.05), (0.1, 0.3)])
def test_forgetful_mask_drops_the_mean_ratio_of_past_keys(low, high):  # invariant 4
    mask = forgetful_causal_mask(400, 64, min_ratio=low, max_ratio=high, generator=torch.Generator().manual_seed(1))
    past = torch.ones(64, 64, dtype=torch.bool).tril(-1)
    past[:, 0] = False  # key 0 is never dropped
    dropped = (~mask[:, 0] & past).sum() / (past.sum() * 400)
    assert dropped.item() == pytest.approx((low + high) / 2, abs=0.005)


def test_forgetful_mask_is_reproducible_from_the_generator_and_may_drop_the_diagonal():  # invariant 4
    def draw(seed):
        return forgetful_causal_mask(8, 32, min_ratio=0.3, max_ratio=0.5, generator=torch.Generator().manual_seed(seed))

    assert torch.equal(draw(3), draw(3)) and not torch.equal(draw(3), draw(4))
    diagonal = draw(3)[:, 0].diagonal(dim1=-2, dim2=-1)
    assert not diagonal[:, 1:].all()


@pytest.mark.parametrize("side", SIDES)
def test_a_rows_loss_does_not_depend_on_padding_or_batch_mates(side):  # invariant 6
    mask = make_mask([5, 1, 8], 9, side)
    x = with_garbage(logps(3, 9, seed=4), mask)
    per_row = []
    for row in range(3):
        length = int(mask[row].sum())
        alone = make_mask([length], 12, "left")
        y = torch.full((1, 12), NAN, dtype=torch.float64)
        y[alone.bool()] = x[row][mask[row].bool()]
        per_row.append(coh_loss(y, alone)[0])
    torch.testing.assert_close(coh_loss(x, mask)[0], torch.stack(per_row).mean(), rtol=0, atol=1e-14)
    empty = torch.zeros(1, 9, dtype=torch.long)
    both = coh_loss(torch.cat([x, x[:1]]), torch.cat([mask, empty]))[0]
    torch.testing.assert_close(both, coh_loss(x, mask)[0], rtol=0, atol=1e-14)  # an empty row counts for nothing
