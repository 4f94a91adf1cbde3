"""InTRO invariants (docs/methods.md, InTRO: invariants 1–6) on small float64 tensors."""

import math

import pytest
import torch

from tokalign.losses import intro_candidates, intro_expected_loss, intro_loss

from .helpers import make_mask, randn

V = 7
LENGTHS = (4, 0, 1, 6)


def _logits(seed: int, lengths=LENGTHS, width: int = 8, side: str = "right", nan_outside: bool = True):
    """Policy and posterior logits (B, width, V), response tokens and the mask; NaN logits where it is 0."""
    mask = make_mask(list(lengths), width, side)
    policy, posterior = (randn(len(lengths), width, V, seed=10 * seed + i, scale=2.0) for i in range(2))
    tokens = torch.randint(0, V, (len(lengths), width), generator=torch.Generator().manual_seed(seed))
    if nan_outside:
        policy, posterior = (torch.where(mask.bool().unsqueeze(-1), x, float("nan")) for x in (policy, posterior))
        tokens = torch.where(mask.bool(), tokens, -100)
    return policy, posterior, tokens, mask


def _gathered(logits: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
    return logits.log_softmax(-1).gather(-1, candidates.clamp(min=0))


def _sampled_terms(policy, posterior, tokens, mask, n, seed):
    candidates = intro_candidates(policy, tokens, mask, num_candidates=n, generator=torch.Generator().manual_seed(seed))
    return _gathered(policy, candidates), _gathered(posterior, candidates)


def _reference(policy_logps, posterior_logps, mask, w_max=200.0):
    """Eq. 7 loop by loop."""
    kept = [b for b in range(mask.shape[0]) if mask[b].any()]
    total = 0.0
    for b in kept:
        positions = mask[b].nonzero().flatten().tolist()
        n = policy_logps.shape[-1]
        for t in positions:
            for i in range(n):
                w = min(math.exp(posterior_logps[b, t, i] - policy_logps[b, t, i]), w_max)
                total -= w * policy_logps[b, t, i].item() / (len(positions) * n)
    return total / max(len(kept), 1)


def test_one_position_by_hand():
    # p(z) = ½, q(z) = ¾ → w = 1.5; the candidate 1 has p = ¼, q = ⅛ → w = ½; n = 2, one row, T = 1
    policy = torch.log(torch.tensor([[[0.5, 0.25]]], dtype=torch.float64))
    posterior = torch.log(torch.tensor([[[0.75, 0.125]]], dtype=torch.float64))
    loss, metrics = intro_loss(policy, posterior, torch.ones(1, 1))
    expected = -(1.5 * math.log(0.5) + 0.5 * math.log(0.25)) / 2
    assert loss.item() == pytest.approx(expected, rel=1e-12)
    assert metrics["intro/w_mean"].item() == pytest.approx(1.0)
    assert metrics["intro/w_max"].item() == pytest.approx(1.5)
    assert metrics["intro/log_ratio_sampled"].item() == pytest.approx(math.log(1.5))
    assert metrics["intro/kept_rows"].item() == 1 and metrics["intro/clip_frac"].item() == 0
    clipped, metrics = intro_loss(policy, posterior, torch.ones(1, 1), w_max=1.0)
    assert clipped.item() == pytest.approx(-(1.0 * math.log(0.5) + 0.5 * math.log(0.25)) / 2, rel=1e-12)
    assert metrics["intro/clip_frac"].item() == 0.5


def test_expected_one_position_by_hand():
    # V = 2, p = (½, ½), q = (¾, ¼), z = 0, n = 3, w_max = 1.2: sampled w = 1.2 (clipped);
    # added: (2/3) Σ min(q, 1.2 p) log p = (2/3)(0.6 + 0.25) log ½
    policy = torch.log(torch.tensor([[[0.5, 0.5]]], dtype=torch.float64))
    posterior = torch.log(torch.tensor([[[0.75, 0.25]]], dtype=torch.float64))
    loss, metrics = intro_expected_loss(policy, posterior, torch.zeros(1, 1, dtype=torch.long), torch.ones(1, 1),
                                        num_candidates=3, w_max=1.2)  # fmt: skip
    expected = -(1.2 / 3 * math.log(0.5) + 2 / 3 * 0.85 * math.log(0.5))
    assert loss.item() == pytest.approx(expected, rel=1e-12)
    assert metrics["intro/clip_frac"].item() == 1 and metrics["intro/w_max"].item() == pytest.approx(1.2)


@pytest.mark.parametrize("n", [1, 3])
@pytest.mark.parametrize("w_max", [200.0, 1.5])
def test_matches_the_loop_reference(n, w_max):
    policy, posterior, tokens, mask = _logits(0)
    policy_logps, posterior_logps = _sampled_terms(policy, posterior, tokens, mask, n, seed=1)
    loss, metrics = intro_loss(policy_logps, posterior_logps, mask, w_max=w_max)
    assert loss.item() == pytest.approx(_reference(policy_logps, posterior_logps, mask, w_max), rel=1e-12)
    assert metrics["intro/kept_rows"].item() == 3
    assert all(value.dim() == 0 and not value.requires_grad for value in metrics.values())


@pytest.mark.parametrize("expected_mode", [False, True])
def test_q_equal_p_gives_unit_weights_and_n1_is_raft(expected_mode):  # invariant 1
    policy, _, tokens, mask = _logits(1)
    policy = policy.requires_grad_()
    if expected_mode:
        loss, metrics = intro_expected_loss(policy, policy.detach().clone(), tokens, mask, num_candidates=1)
    else:
        logps, _ = _sampled_terms(policy, policy.detach(), tokens, mask, 1, seed=0)
        loss, metrics = intro_loss(logps, logps.detach().clone(), mask)
    assert metrics["intro/w_mean"].item() == pytest.approx(1.0) and metrics["intro/w_max"].item() == pytest.approx(1.0)
    token_logps = policy.log_softmax(-1).gather(-1, tokens.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    kept = mask.any(-1)
    nll = -torch.where(mask.bool(), token_logps, 0).sum(-1)[kept] / mask.sum(-1)[kept]
    raft = nll.mean()  # the kept rows' token-mean NLL
    (grad,) = torch.autograd.grad(loss, policy)
    (raft_grad,) = torch.autograd.grad(raft, policy)
    torch.testing.assert_close(loss, raft, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(torch.nan_to_num(grad), torch.nan_to_num(raft_grad), rtol=1e-12, atol=1e-14)


def test_weights_bounded_detached_and_gradient_closed_form():  # invariant 2
    policy, posterior, tokens, mask = _logits(2)
    policy_logps, posterior_logps = _sampled_terms(policy, posterior, tokens, mask, 4, seed=3)
    policy_logps = policy_logps.clone().requires_grad_()
    posterior_logps = posterior_logps.clone().requires_grad_()
    loss, metrics = intro_loss(policy_logps, posterior_logps, mask, w_max=2.0)
    grad_p, grad_q = torch.autograd.grad(loss, (policy_logps, posterior_logps), allow_unused=True)
    assert grad_q is None or grad_q.abs().max().item() == 0  # no gradient through w's numerator
    w = (posterior_logps - policy_logps).detach().exp().clamp(0, 2.0)
    kept = int(mask.any(-1).sum())
    expected = torch.where(mask.bool().unsqueeze(-1), -w / (kept * mask.sum(-1).clamp(min=1)[:, None, None] * 4), 0)
    torch.testing.assert_close(grad_p, expected, rtol=1e-12, atol=1e-15)
    assert 0 <= metrics["intro/w_max"].item() <= 2.0 and metrics["intro/clip_frac"].item() > 0


@pytest.mark.parametrize("chunk_size", [None, 2])
def test_expected_mode_per_position_and_logit_gradient(chunk_size):  # invariant 3
    policy, posterior, tokens, mask = _logits(3)
    n, w_max = 5, 1.7
    loss, _ = intro_expected_loss(policy, posterior, tokens, mask, num_candidates=n, w_max=w_max, chunk_size=chunk_size)
    log_p, log_q = policy.log_softmax(-1), posterior.log_softmax(-1)
    kept, total = [b for b in range(mask.shape[0]) if mask[b].any()], 0.0
    for b in kept:
        positions = mask[b].nonzero().flatten().tolist()
        for t in positions:
            z = tokens[b, t]
            w = min(math.exp(log_q[b, t, z] - log_p[b, t, z]), w_max)
            added = (torch.minimum(log_q[b, t].exp(), w_max * log_p[b, t].exp()) * log_p[b, t]).sum().item()
            total += (-(1 / n) * w * log_p[b, t, z].item() - (n - 1) / n * added) / len(positions)
    assert loss.item() == pytest.approx(total / len(kept), rel=1e-12)
    # n = 1: the sampled mode exactly
    sampled = intro_loss(*_sampled_terms(policy, posterior, tokens, mask, 1, seed=0), mask, w_max=w_max)[0]
    one = intro_expected_loss(policy, posterior, tokens, mask, num_candidates=1, w_max=w_max, chunk_size=chunk_size)[0]
    torch.testing.assert_close(one, sampled, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("chunk_size", [None, 1, 3, 1000])
def test_unclipped_added_term_gradient_is_p_minus_q(chunk_size):  # invariant 3, the distillation gradient
    policy, posterior, tokens, mask = _logits(4)
    n = 4
    policy = policy.requires_grad_()
    full, _ = intro_expected_loss(policy, posterior, tokens, mask, num_candidates=n, w_max=1e9, chunk_size=chunk_size)
    sampled_only, _ = intro_expected_loss(policy, posterior, tokens, mask, num_candidates=1, w_max=1e9)
    (grad_full,) = torch.autograd.grad(full, policy)
    (grad_sampled,) = torch.autograd.grad(sampled_only / n, policy)
    counts = mask.sum(-1).clamp(min=1)[:, None, None]
    kept = int(mask.any(-1).sum())
    p, q = policy.detach().softmax(-1), posterior.softmax(-1)
    expected = torch.where(mask.bool().unsqueeze(-1), (n - 1) / n * (p - q) / (kept * counts), 0)
    torch.testing.assert_close(torch.nan_to_num(grad_full - grad_sampled), expected, rtol=1e-10, atol=1e-13)
    at_q, _ = intro_expected_loss(
        posterior.clone().requires_grad_(), posterior, tokens, mask, num_candidates=n, w_max=1e9, chunk_size=chunk_size
    )
    assert math.isfinite(at_q.item())


def test_sampled_mode_averages_to_the_expected_mode():  # invariant 4
    policy, posterior, tokens, mask = _logits(5, lengths=(3, 2), width=4)
    n, w_max = 5, 3.0
    expected, _ = intro_expected_loss(policy, posterior, tokens, mask, num_candidates=n, w_max=w_max)
    generator = torch.Generator().manual_seed(0)
    draws = []
    for _ in range(20):  # each a batch of 200 copies: its loss is the mean over 200 draws
        copies = [x.repeat(200, *([1] * (x.dim() - 1))) for x in (policy, posterior, tokens, mask)]
        candidates = intro_candidates(copies[0], copies[2], copies[3], num_candidates=n, generator=generator)
        logps = _gathered(copies[0], candidates), _gathered(copies[1], candidates)
        draws.append(intro_loss(*logps, copies[3], w_max=w_max)[0])
    draws = torch.stack(draws)
    assert abs(draws.mean().item() - expected.item()) < 4 * draws.std().item() / math.sqrt(len(draws))


def test_candidates_shape_range_and_reproducible():  # invariant 5
    policy, _, tokens, mask = _logits(6)
    first = intro_candidates(policy, tokens, mask, num_candidates=6, generator=torch.Generator().manual_seed(7))
    again = intro_candidates(policy, tokens, mask, num_candidates=6, generator=torch.Generator().manual_seed(7))
    assert first.shape == (*tokens.shape, 6) and torch.equal(first, again)
    assert torch.equal(first[..., 0], tokens)
    valid = mask.bool()
    assert ((first[valid] >= 0) & (first[valid] < V)).all()
    assert torch.equal(first[~valid], tokens[~valid].unsqueeze(-1).expand(-1, 6))  # nothing drawn at masked positions
    cold = intro_candidates(policy, tokens, mask, num_candidates=6, temperature=1e-3)
    torch.testing.assert_close(cold[valid][:, 1:], policy[valid].argmax(-1, keepdim=True).expand(-1, 5))


def test_candidates_follow_the_policy_distribution():
    logits = torch.log(torch.tensor([[[0.7, 0.2, 0.1]]], dtype=torch.float64))
    candidates = intro_candidates(logits, torch.zeros(1, 1, dtype=torch.long), torch.ones(1, 1), num_candidates=20001,
                                  generator=torch.Generator().manual_seed(0))  # fmt: skip
    freq = torch.bincount(candidates[0, 0, 1:], minlength=3).double() / 20000
    torch.testing.assert_close(freq, torch.tensor([0.7, 0.2, 0.1], dtype=torch.float64), atol=0.015, rtol=0)


@pytest.mark.parametrize("side", ["right", "left", "middle"])
@pytest.mark.parametrize("expected_mode", [False, True])
def test_padding_batch_mates_and_wrong_rows_do_not_matter(side, expected_mode):  # invariant 6
    policy, posterior, tokens, mask = _logits(7, side=side)

    def loss_of(policy, posterior, tokens, mask):
        if expected_mode:
            return intro_expected_loss(policy, posterior, tokens, mask, num_candidates=3, w_max=2.0)[0]
        candidates = tokens.unsqueeze(-1).repeat(1, 1, 3)
        candidates[..., 1] = 2
        candidates[..., 2] = 5
        return intro_loss(_gathered(policy, candidates), _gathered(posterior, candidates), mask, w_max=2.0)[0]

    loss = loss_of(policy, posterior, tokens, mask)
    singles = []
    for row, length in enumerate(LENGTHS):  # alone, left-padded to width 11, NaN logits around it
        if length == 0:
            continue
        alone = make_mask([length], 11, "left")
        moved = []
        for x in (policy, posterior, tokens):
            y = torch.full((1, 11, *x.shape[2:]), float("nan") if x.is_floating_point() else -100, dtype=x.dtype)
            y[alone.bool()] = x[row][mask[row].bool()]
            moved.append(y)
        singles.append(loss_of(*moved, alone))
    torch.testing.assert_close(loss, torch.stack(singles).mean(), rtol=1e-13, atol=1e-15)
    # an all-masked row (a wrong answer) adds 0 and leaves the others' loss unchanged
    kept = mask.any(-1)
    torch.testing.assert_close(loss_of(policy[kept], posterior[kept], tokens[kept], mask[kept]), loss)


@pytest.mark.parametrize("expected_mode", [False, True])
def test_per_position_constants_change_nothing(expected_mode):  # invariant 6
    policy, posterior, tokens, mask = _logits(8, nan_outside=False)
    shifted = [x + randn(*x.shape[:2], 1, seed=40 + i, scale=5.0) for i, x in enumerate((policy, posterior))]
    if expected_mode:
        run = lambda p, q: intro_expected_loss(p, q, tokens, mask, num_candidates=3, w_max=2.0)  # noqa: E731
    else:
        candidates = intro_candidates(
            policy, tokens, mask, num_candidates=3, generator=torch.Generator().manual_seed(0)
        )
        run = lambda p, q: intro_loss(_gathered(p, candidates), _gathered(q, candidates), mask, w_max=2.0)  # noqa: E731
    loss, metrics = run(policy, posterior)
    other, other_metrics = run(*shifted)
    torch.testing.assert_close(other, loss, rtol=1e-12, atol=1e-14)
    for key, value in metrics.items():
        torch.testing.assert_close(other_metrics[key], value, rtol=1e-12, atol=1e-14)


def test_nan_at_masked_positions_does_not_raise_and_no_rows_is_zero():
    policy, posterior, tokens, mask = _logits(9)
    policy = policy.requires_grad_()
    for chunk_size in (None, 2):
        loss, _ = intro_expected_loss(policy, posterior, tokens, mask, chunk_size=chunk_size)
        (grad,) = torch.autograd.grad(loss, policy)
        assert math.isfinite(loss.item()) and torch.isfinite(grad).all()
    empty = torch.zeros_like(mask)
    candidates = intro_candidates(policy, tokens, empty)
    assert torch.equal(candidates[..., 0], tokens)
    loss, metrics = intro_loss(_gathered(policy, candidates), _gathered(posterior, candidates), empty)
    assert loss.item() == 0 and metrics["intro/kept_rows"].item() == 0
    loss, _ = intro_expected_loss(policy, posterior, tokens, empty)
    assert loss.item() == 0


def test_chunked_equals_unchunked_in_value_and_gradient():
    policy, posterior, tokens, mask = _logits(10)
    results = []
    for chunk_size in (None, 1, 4):
        x = policy.clone().requires_grad_()
        loss, metrics = intro_expected_loss(
            x, posterior, tokens, mask, num_candidates=5, w_max=2.0, chunk_size=chunk_size
        )
        results.append((loss, torch.autograd.grad(loss, x)[0], metrics))
    for loss, grad, metrics in results[1:]:
        torch.testing.assert_close(loss, results[0][0], rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(torch.nan_to_num(grad), torch.nan_to_num(results[0][1]), rtol=1e-12, atol=1e-14)
        for key, value in metrics.items():
            torch.testing.assert_close(value, results[0][2][key], rtol=1e-12, atol=1e-14)


def test_bad_arguments_raise():
    policy, posterior, tokens, mask = _logits(11)
    with pytest.raises(ValueError, match="num_candidates"):
        intro_candidates(policy, tokens, mask, num_candidates=0)
    with pytest.raises(ValueError, match="temperature"):
        intro_candidates(policy, tokens, mask, temperature=0)
    with pytest.raises(ValueError, match="w_max"):
        intro_loss(policy[..., :2], posterior[..., :2], mask, w_max=0)
    with pytest.raises(ValueError, match="chunk_size"):
        intro_expected_loss(policy, posterior, tokens, mask, chunk_size=0)


def test_public_signatures():
    import inspect

    def shape(fn):
        return [(p.name, p.kind.name, p.default) for p in inspect.signature(fn).parameters.values()]

    keyword = "KEYWORD_ONLY"
    empty = inspect.Parameter.empty
    assert shape(intro_candidates)[3:] == [
        ("num_candidates", keyword, 5), ("temperature", keyword, 1.0), ("generator", keyword, None)
    ]  # fmt: skip
    assert [name for name, _, _ in shape(intro_candidates)[:3]] == ["policy_logits", "tokens", "mask"]
    assert shape(intro_loss) == [
        ("policy_logps", "POSITIONAL_OR_KEYWORD", empty), ("posterior_logps", "POSITIONAL_OR_KEYWORD", empty),
        ("mask", "POSITIONAL_OR_KEYWORD", empty), ("w_max", keyword, 200.0),
    ]  # fmt: skip
    assert shape(intro_expected_loss)[4:] == [
        ("num_candidates", keyword, 5), ("w_max", keyword, 200.0), ("chunk_size", keyword, None)
    ]  # fmt: skip
