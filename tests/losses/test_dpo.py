import math

import pytest
import torch

from tokalign.losses import dpo_loss

from .helpers import logps, make_mask, with_garbage

NAN = float("nan")


def test_one_example_by_hand():
    mask_w = torch.tensor([[1, 1, 0]])
    mask_l = torch.tensor([[1, 1, 1]])
    policy_w = torch.tensor([[-1.0, -2.0, NAN]], dtype=torch.float64)
    ref_w = torch.tensor([[-1.5, -1.0, 123.0]], dtype=torch.float64)
    policy_l = torch.tensor([[-3.0, -1.0, -1.0]], dtype=torch.float64)
    ref_l = torch.tensor([[-2.0, -2.0, -2.0]], dtype=torch.float64)
    loss, metrics = dpo_loss(policy_w, policy_l, ref_w, ref_l, mask_w, mask_l, beta=0.1)
    # Δ(y_w) = 0.5 − 1 = −0.5, Δ(y_l) = −1 + 1 + 1 = 1, z = 0.1 · (−1.5)
    assert loss.item() == pytest.approx(math.log1p(math.exp(0.15)), abs=1e-12)
    assert metrics["rewards/chosen"].item() == pytest.approx(-0.05)
    assert metrics["rewards/rejected"].item() == pytest.approx(0.1)
    assert metrics["rewards/margins"].item() == pytest.approx(-0.15)
    assert metrics["rewards/accuracies"].item() == 0.0


def test_label_smoothing_by_hand():
    mask = torch.ones(1, 2, dtype=torch.long)
    policy_w = torch.tensor([[-1.0, -1.0]], dtype=torch.float64)
    policy_l = torch.tensor([[-2.0, -2.0]], dtype=torch.float64)
    ref = torch.full((1, 2), -1.5, dtype=torch.float64)
    loss, _ = dpo_loss(policy_w, policy_l, ref, ref, mask, mask, beta=0.5, label_smoothing=0.2)
    z = 0.5 * (1.0 - (-1.0))
    log_sigmoid = lambda v: -math.log1p(math.exp(-v))  # noqa: E731
    assert loss.item() == pytest.approx(-0.8 * log_sigmoid(z) - 0.2 * log_sigmoid(-z), abs=1e-12)


def _batch(seed: int, lengths_w, lengths_l, width: int, side: str = "right"):
    b = len(lengths_w)
    mask_w, mask_l = make_mask(lengths_w, width, side), make_mask(lengths_l, width, side)
    tensors = [logps(b, width, seed=seed + i) for i in range(4)]
    return tensors, mask_w, mask_l


def test_batch_mean_of_examples_and_padding_and_garbage_do_not_matter():
    (pw, pl, rw, rl), mask_w, mask_l = _batch(0, [3, 5, 1], [4, 2, 5], width=6)
    loss, _ = dpo_loss(pw, pl, rw, rl, mask_w, mask_l, beta=0.1)
    singles = []
    for row in range(3):
        # the same example, left-padded to a longer width, with NaN garbage at masked positions
        sw, sl = make_mask([int(mask_w[row].sum())], 9, "left"), make_mask([int(mask_l[row].sum())], 9, "left")
        moved = []
        for x, m, sm in ((pw, mask_w, sw), (pl, mask_l, sl), (rw, mask_w, sw), (rl, mask_l, sl)):
            y = torch.full((1, 9), NAN, dtype=torch.float64)
            y[sm.bool()] = x[row][m[row].bool()]
            moved.append(y)
        singles.append(dpo_loss(*moved, sw, sl, beta=0.1)[0])
    assert torch.allclose(loss, torch.stack(singles).mean(), atol=1e-12, rtol=0)


def test_no_nan_leaks_into_loss_or_gradient():
    (pw, pl, rw, rl), mask_w, mask_l = _batch(1, [3, 5], [4, 2], width=6)
    pw_g = with_garbage(pw, mask_w).requires_grad_()
    pl_g = with_garbage(pl, mask_l, float("-inf")).requires_grad_()
    loss, metrics = dpo_loss(pw_g, pl_g, with_garbage(rw, mask_w), with_garbage(rl, mask_l), mask_w, mask_l, beta=0.1)
    loss.backward()
    assert torch.isfinite(loss) and all(torch.isfinite(v) for v in metrics.values())
    assert torch.isfinite(pw_g.grad).all() and torch.isfinite(pl_g.grad).all()
    assert (pw_g.grad[mask_w == 0] == 0).all() and (pl_g.grad[mask_l == 0] == 0).all()
    assert torch.equal(loss, dpo_loss(pw, pl, rw, rl, mask_w, mask_l, beta=0.1)[0])


def test_metrics_are_detached_scalars_and_reference_gets_no_gradient():
    (pw, pl, rw, rl), mask_w, mask_l = _batch(2, [3, 5], [4, 2], width=6)
    pw, rw, rl = pw.requires_grad_(), rw.requires_grad_(), rl.requires_grad_()
    loss, metrics = dpo_loss(pw, pl, rw, rl, mask_w, mask_l, beta=0.3)
    loss.backward()
    assert loss.dim() == 0 and pw.grad is not None
    assert rw.grad is None and rl.grad is None
    assert set(metrics) == {"rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies"}
    for value in metrics.values():
        assert isinstance(value, torch.Tensor) and value.dim() == 0 and not value.requires_grad


def test_identical_policy_and_reference_gives_log_two():
    (pw, pl, _, _), mask_w, mask_l = _batch(3, [3, 5], [4, 2], width=6)
    loss, _ = dpo_loss(pw, pl, pw, pl, mask_w, mask_l, beta=0.1, label_smoothing=0.1)
    assert loss.item() == pytest.approx(math.log(2), abs=1e-15)
