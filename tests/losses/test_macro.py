"""Macro-action segmentation and macro GAE (docs/methods.md, MA-RLHF: invariants 1–8 and 10)."""

import itertools
import random
from types import SimpleNamespace

import pytest
import torch

from tokalign.losses import (
    macro_gae,
    segment_macro_actions,
    segment_sum,
    segment_value_weights,
)

from .helpers import make_mask, randn, reference_token_gae

RULES = ["fixed", "randomized", "ppl", "parsing"]
# The authors' conventions (the defaults) and each named alternative.
OPTIONS = [
    {},
    {"isolate_last": False},
    {"ppl_start": "at_rise"},
    {"sampling": "iid"},
    {"lengths": (1, 2), "repeats": 1},
]
SIDES = ["right", "left", "middle"]
WEIGHTINGS = ["equal", "position", "last"]
PIECES = ["Ġthe", "Ġcat", "s", ".", ",", "Ċ", "Ġand", "▁a", "ing", " of", "!", "\n\n", " Dog", "?"]


def _inputs(seed: int, lengths: list[int], width: int, side: str):
    """Mask plus the per-rule inputs (perplexities, token strings) for random rows."""
    rng = random.Random(seed)
    mask = make_mask(lengths, width, side)
    texts = [[rng.choice(PIECES) for _ in range(length)] for length in lengths]
    token_ppl = randn(len(lengths), width, seed=seed).exp()
    return mask, dict(token_ppl=token_ppl, texts=texts, seed=seed, n=rng.randint(1, 4))


def _row_segments(ids: torch.Tensor) -> list[list[int]]:
    """Segment ids of a row's valid tokens, in order."""
    return ids[ids >= 0].tolist()


def _segment_sizes(row_ids: list[int]) -> list[int]:
    return [len(list(group)) for _, group in itertools.groupby(row_ids)]


@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("max_len", [None, 2])
@pytest.mark.parametrize("options", OPTIONS)
def test_segments_partition_every_response(rule, max_len, options):  # invariant 1
    for seed, side in itertools.product(range(6), SIDES):
        lengths = [0, 1, 2, 7, 11, random.Random(seed).randint(0, 11)]
        mask, kwargs = _inputs(seed, lengths, 13, side)
        ids = segment_macro_actions(mask, rule, max_len=max_len, **kwargs, **options)
        assert ids.dtype == torch.long and ids.shape == mask.shape
        assert torch.equal(ids >= 0, mask.bool())  # every valid token once, never padding
        for row in ids:
            row_ids = _row_segments(row)
            if row_ids:  # ids 0, 1, … in order, each non-empty: contiguous, disjoint, ordered
                assert row_ids[0] == 0
                assert all(b - a in (0, 1) for a, b in zip(row_ids, row_ids[1:]))
            if max_len is not None and rule != "parsing":
                assert max(_segment_sizes(row_ids), default=0) <= max_len
            if row_ids and options.get("isolate_last", True):
                assert _segment_sizes(row_ids)[-1] == 1


@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("options", OPTIONS)
def test_segmentation_ignores_batch_mates_and_padding(rule, options):  # invariant 8, segmentation side
    mask, kwargs = _inputs(3, [5, 9, 1], 10, "right")
    ids = segment_macro_actions(mask, rule, **kwargs, **options)
    for row, length in enumerate([5, 9, 1]):
        # the same row, left-padded to width 14, beside a different batch-mate at the same index
        alone = make_mask([0] * row + [length], 14, "left")
        other = dict(kwargs)
        other["texts"] = [[] for _ in range(row)] + [kwargs["texts"][row]]
        ppl = torch.ones(row + 1, 14, dtype=torch.float64)
        ppl[row, alone[row].bool()] = kwargs["token_ppl"][row, mask[row].bool()]
        other["token_ppl"] = ppl
        moved = segment_macro_actions(alone, rule, **other, **options)
        assert _row_segments(moved[row]) == _row_segments(ids[row])


def test_fixed_segments_have_n_tokens():
    mask = make_mask([7, 3, 0], 8, "left")
    ids = segment_macro_actions(mask, "fixed", n=3, isolate_last=False)
    assert [_row_segments(row) for row in ids] == [[0, 0, 0, 1, 1, 1, 2], [0, 0, 0], []]
    ids = segment_macro_actions(mask, "fixed", n=3)  # the last (scored) token alone
    assert [_row_segments(row) for row in ids] == [[0, 0, 0, 1, 1, 1, 2], [0, 0, 1], []]


# The authors' code (ernie-research/MA-RLHF, DeepSpeed-Chat dschat/rlhf/ppo_trainer.py) on one
# response of L tokens: boundaries from the rule over the first L − 1 tokens, then a last boundary at
# token L − 1, and a one-token segment appended after it. Below, their boundary lists and the
# segments they give; their duplicate boundaries (an empty segment) are the only difference.
@pytest.mark.parametrize(
    "length, boundaries, expected",
    [
        (7, [0, 3, 6, 6], [0, 0, 0, 1, 1, 1, 2]),  # [0 1 2] [3 4 5] [] [6]: their empty segment dropped
        (8, [0, 3, 6, 7], [0, 0, 0, 1, 1, 1, 2, 3]),  # [0 1 2] [3 4 5] [6] [7]
        (5, [0, 3, 4], [0, 0, 0, 1, 2]),  # [0 1 2] [3] [4]
        (3, [0, 2], [0, 0, 1]),
        (1, [0, 0], [0]),
    ],
)
def test_fixed_n3_matches_the_authors_segments(length, boundaries, expected):
    sizes = [b - a for a, b in zip(boundaries, boundaries[1:])] + [1]  # their split sizes
    assert [k for k, size in enumerate(s for s in sizes if s) for _ in range(size)] == expected
    for side in SIDES:
        ids = segment_macro_actions(make_mask([length], length + 3, side), "fixed", n=3)
        assert _row_segments(ids[0]) == expected


def test_ppl_starts_where_perplexity_rises():
    mask = torch.tensor([[0, 1, 1, 1, 1, 1, 1, 0]])
    ppl = torch.tensor([[9.0, 3.0, 2.0, 4.0, 1.0, 1.0, 5.0, 99.0]])
    # valid perplexities 3 2 4 1 1 5 rise after tokens 1 and 4 (counting from 0). The authors'
    # code starts segments at those tokens (boundaries [0, 1, 4, 5]: [0] [1 2 3] [4] [5]).
    assert segment_macro_actions(mask, "ppl", token_ppl=ppl).tolist() == [[-1, 0, 1, 1, 1, 2, 3, -1]]
    # ... "at_rise" starts them at the token whose perplexity rose: [0 1] [2 3 4] [5]
    ids = segment_macro_actions(mask, "ppl", token_ppl=ppl, ppl_start="at_rise", isolate_last=False)
    assert ids.tolist() == [[-1, 0, 0, 1, 1, 1, 2, -1]]
    capped = segment_macro_actions(mask, "ppl", token_ppl=ppl, ppl_start="at_rise", max_len=2)
    assert capped.tolist() == [[-1, 0, 0, 1, 1, 2, 3, -1]]
    ppl = torch.tensor([[9.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 0.0]])  # rises everywhere: token level
    assert segment_macro_actions(mask, "ppl", token_ppl=ppl).tolist() == [[-1, 0, 1, 2, 3, 4, 5, -1]]
    flat = torch.ones(1, 8)
    assert segment_macro_actions(mask, "ppl", token_ppl=flat).tolist() == [[-1, 0, 0, 0, 0, 0, 1, -1]]


def test_randomized_uses_the_authors_list_without_replacement():
    # lengths (2,) twice: [2, 2] whatever the shuffle; on 8 tokens their code cuts the first 7 as
    # [0 1] [2 3] and, the list used up, [4 5 6]; then [7] alone
    mask = make_mask([8], 11, "middle")
    ids = segment_macro_actions(mask, "randomized", lengths=(2,), repeats=2)
    assert _row_segments(ids[0]) == [0, 0, 1, 1, 2, 2, 2, 3]
    # lengths (1, 4) once: the shuffle gives [1, 4] → [0] [1 2 3 4] [5] [6], or [4, 1] → [0 1 2 3] [4] [5] [6]
    mask = make_mask([7], 7)
    seen = {
        tuple(_row_segments(segment_macro_actions(mask, "randomized", lengths=(1, 4), repeats=1, seed=seed)[0]))
        for seed in range(20)
    }
    assert seen == {(0, 1, 1, 1, 1, 2, 3), (0, 0, 0, 0, 1, 2, 3)}


def test_randomized_shuffle_consumes_the_repeated_list_then_lumps_the_rest():
    lengths = (1, 2, 3, 5, 10)
    orders = set()
    for seed in range(5):
        ids = segment_macro_actions(make_mask([60], 60), "randomized", lengths=lengths, repeats=2, seed=seed)
        sizes = _segment_sizes(_row_segments(ids[0]))
        # 42 tokens in the shuffled list, then the 17 left before the last token, then the last token
        assert sorted(sizes[:-2]) == sorted(lengths * 2) and sizes[-2:] == [17, 1]
        orders.add(tuple(sizes[:-2]))
    assert len(orders) == 5  # a fresh order per seed
    for seed in range(5):  # repeats=None: just enough copies to cover the row, each used at most that often
        ids = segment_macro_actions(make_mask([40], 40), "randomized", lengths=lengths, seed=seed)
        sizes = _segment_sizes(_row_segments(ids[0]))
        assert all(sizes[:-2].count(size) <= 2 for size in lengths) and sizes[-1] == 1


@pytest.mark.parametrize("sampling", ["shuffle", "iid"])
def test_randomized_is_reproducible_and_draws_from_lengths(sampling):  # invariant 10
    mask = make_mask([40, 25, 40], 45, "middle")
    options = dict(lengths=(1, 2, 3, 5, 10), sampling=sampling, isolate_last=False)
    first = segment_macro_actions(mask, "randomized", seed=7, **options)
    assert torch.equal(first, segment_macro_actions(mask, "randomized", seed=7, **options))
    assert not torch.equal(first, segment_macro_actions(mask, "randomized", seed=8, **options))
    assert not torch.equal(first[0], first[2])  # rows draw separately
    for row in first:
        sizes = _segment_sizes(_row_segments(row))
        assert all(size in (1, 2, 3, 5, 10) for size in sizes[:-1]) and sizes[-1] <= 10


def test_parsing_chunker_by_hand():
    pieces = ["The", "Ġcat", "Ġsat", "Ġon", "Ġthe", "Ġmat", ".", "ĠIt", "Ġpur", "red", ",", "Ġloud", "ly", "Ċ", "Yes"]
    ids = segment_macro_actions(torch.ones(1, len(pieces)), "parsing", texts=[pieces])
    #          The cat sat | on | the mat . | It purred , | loudly \n | Yes
    assert ids.tolist() == [[0, 0, 0, 1, 2, 2, 2, 3, 3, 3, 3, 4, 4, 4, 5]]
    capped = segment_macro_actions(torch.ones(1, len(pieces)), "parsing", texts=[pieces], max_len=2)
    # The cat | sat | on | the mat . | It purred , | loudly | \n | Yes: cuts only at whitespace-led
    # pieces, so "purred ," and "loudly" stay whole
    assert capped.tolist() == [[0, 0, 1, 2, 3, 3, 3, 4, 4, 4, 4, 5, 5, 6, 7]]


def test_parsing_falls_back_to_token_level_instead_of_failing():
    mask = make_mask([3, 2, 4], 5, "left")
    texts = [["a", "b"], None, ["Ġx", "Ġy", "Ġz", "Ġw"]]  # wrong length, missing, fine
    with pytest.warns(UserWarning, match="token-level"):
        ids = segment_macro_actions(mask, "parsing", texts=texts)
    assert [_row_segments(row) for row in ids] == [[0, 1, 2], [0, 1], [0, 0, 0, 1]]  # the last token alone
    with pytest.warns(UserWarning, match="token-level"):
        ids = segment_macro_actions(mask, "parsing")
    assert torch.equal(ids, segment_macro_actions(mask, "fixed", n=1))

    def broken_parser(text):
        raise RuntimeError("no model")

    with pytest.warns(UserWarning, match="failed to parse"):
        ids = segment_macro_actions(mask[2:], "parsing", texts=texts[2:], nlp=broken_parser)
    assert _row_segments(ids[0]) == [0, 1, 2, 3]


class _FakeDoc:
    """Stands in for a spaCy Doc: only what the parsing rule reads."""

    def __init__(self, sentence_starts, chunks, punct_ends):
        self.sents = [SimpleNamespace(start_char=c) for c in sentence_starts]
        self.noun_chunks = [SimpleNamespace(start_char=s, end_char=e) for s, e in chunks]
        self._punctuation = [SimpleNamespace(idx=end - 1, text=".", is_punct=True) for end in punct_ends]

    def __iter__(self):
        return iter(self._punctuation)


def test_parsing_with_a_spacy_pipeline_maps_characters_to_tokens():
    # "the big dog barked. A cat" — tokens: "the", " big", " dog", " bar", "ked", ".", " A", " cat"
    pieces = ["the", "Ġbig", "Ġdog", "Ġbar", "ked", ".", "ĠA", "Ġcat"]
    # noun chunks "the big dog" [0, 11) and "A cat" [19, 24); sentence starts 0 and 20; "." ends at 18
    nlp = lambda text: _FakeDoc(sentence_starts=[0, 20], chunks=[(0, 11), (20, 25)], punct_ends=[19])  # noqa: E731
    ids = segment_macro_actions(torch.ones(1, len(pieces)), "parsing", texts=[pieces], nlp=nlp)
    assert ids.tolist() == [[0, 0, 0, 1, 1, 1, 2, 3]]  # "A" starts a sentence; "cat", the last token, stands alone


# ---------------------------------------------------------------------------- macro GAE


def _reference_macro_gae(rewards, values, segment_ids, gamma, lam, weighting, aggregation):
    """Plain-Python GAE over segments using the closed form Â_k = Σ_{j≥k} (γλ)^{j−k} δ_j."""
    advantages, returns = torch.zeros_like(rewards), torch.zeros_like(rewards)
    for b in range(rewards.shape[0]):
        positions = (segment_ids[b] >= 0).nonzero().flatten().tolist()
        segments = [list(g) for _, g in itertools.groupby(positions, key=lambda t: int(segment_ids[b, t]))]
        r_bar, v_bar = [], []
        for segment in segments:
            total = sum(float(rewards[b, t]) for t in segment)
            r_bar.append(total if aggregation == "sum" else total / len(segment))
            if weighting == "equal":
                weights = [1.0] * len(segment)
            elif weighting == "position":
                weights = [1 / (i + 1) for i in range(len(segment))]
            else:
                weights = [0.0] * (len(segment) - 1) + [1.0]
            v_bar.append(sum(w * float(values[b, t]) for w, t in zip(weights, segment)) / sum(weights))
        v_next = v_bar[1:] + [0.0]
        deltas = [r + gamma * vn - v for r, vn, v in zip(r_bar, v_next, v_bar)]
        for k, segment in enumerate(segments):
            a_k = sum((gamma * lam) ** (j - k) * deltas[j] for j in range(k, len(segments)))
            advantages[b, segment] = a_k
            returns[b, segment] = a_k + v_bar[k]
    return advantages, returns


def _gae_batch(seed: int, side: str):
    mask = make_mask([6, 1, 0, 9, 4], 10, side)
    rewards = torch.where(mask.bool(), randn(5, 10, seed=seed), float("nan"))
    values = torch.where(mask.bool(), randn(5, 10, seed=seed + 100), float("inf"))
    return rewards, values, mask


def test_macro_gae_by_hand():
    mask = torch.tensor([[0, 1, 1, 1]])
    rewards = torch.tensor([[7.0, 0.1, -0.2, 1.0]], dtype=torch.float64)
    values = torch.tensor([[7.0, 0.5, 0.3, 0.4]], dtype=torch.float64)
    ids = torch.tensor([[-1, 0, 0, 1]])
    advantages, returns = macro_gae(rewards, values, mask, ids, gamma=0.9, lam=0.8)
    # V̄ = (0.4, 0.4), R̄ = (−0.1, 1.0); δ_1 = 1.0 − 0.4 = 0.6, δ_0 = −0.1 + 0.9·0.4 − 0.4 = −0.14
    # Â_1 = 0.6, Â_0 = −0.14 + 0.72·0.6 = 0.292; Ĝ = Â + V̄
    torch.testing.assert_close(advantages, torch.tensor([[0.0, 0.292, 0.292, 0.6]], dtype=torch.float64))
    torch.testing.assert_close(returns, torch.tensor([[0.0, 0.692, 0.692, 1.0]], dtype=torch.float64))


@pytest.mark.parametrize("side", SIDES)
@pytest.mark.parametrize("weighting", WEIGHTINGS)
@pytest.mark.parametrize("aggregation", ["sum", "mean"])
@pytest.mark.parametrize("isolate_last", [True, False])
def test_singleton_segments_are_token_gae_exactly(side, weighting, aggregation, isolate_last):  # invariant 2
    for seed in range(3):
        rewards, values, mask = _gae_batch(seed, side)
        ids = segment_macro_actions(mask, "fixed", n=1, isolate_last=isolate_last)
        got = macro_gae(
            rewards, values, mask, ids, gamma=0.99, lam=0.9, value_weighting=weighting, reward_aggregation=aggregation
        )
        expected = reference_token_gae(rewards, values, mask, 0.99, 0.9)
        assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1])


@pytest.mark.parametrize("weighting", WEIGHTINGS)
@pytest.mark.parametrize("gamma, lam", [(1.0, 0.95), (0.9, 0.5)])
def test_one_segment_gives_a_single_advantage(weighting, gamma, lam):  # invariant 3
    rewards, values, mask = _gae_batch(4, "middle")
    ids = segment_macro_actions(mask, "fixed", n=100, isolate_last=False)
    advantages, returns = macro_gae(rewards, values, mask, ids, gamma=gamma, lam=lam, value_weighting=weighting)
    weights = segment_value_weights(ids, weighting, dtype=values.dtype)
    valid = mask.bool()
    r_bar = torch.where(valid, rewards, 0).sum(-1, keepdim=True)
    v_bar = torch.where(valid, weights * values, 0).sum(-1, keepdim=True)
    expected = torch.where(valid, r_bar - v_bar, 0)
    torch.testing.assert_close(advantages, expected, rtol=0, atol=1e-12)
    torch.testing.assert_close(returns, torch.where(valid, r_bar, 0), rtol=0, atol=1e-12)


@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("weighting", WEIGHTINGS)
@pytest.mark.parametrize("aggregation", ["sum", "mean"])
@pytest.mark.parametrize("options", OPTIONS)
def test_macro_gae_matches_closed_form_and_is_constant_per_segment(rule, weighting, aggregation, options):  # inv. 4, 5
    for seed, side in itertools.product(range(2), SIDES):
        rewards, values, mask = _gae_batch(seed, side)
        _, kwargs = _inputs(seed, [int(x) for x in mask.sum(-1)], 10, side)
        ids = segment_macro_actions(mask, rule, **kwargs, **options)
        got = macro_gae(
            rewards, values, mask, ids, gamma=0.95, lam=0.9, value_weighting=weighting, reward_aggregation=aggregation
        )
        expected = _reference_macro_gae(rewards, values, ids, 0.95, 0.9, weighting, aggregation)
        for ours, reference in zip(got, expected):
            torch.testing.assert_close(ours, reference, rtol=0, atol=1e-12)
            for b, k in itertools.product(range(ids.shape[0]), range(int(ids.max()) + 1)):
                assert ours[b][ids[b] == k].unique().numel() <= 1
            assert (ours[mask == 0] == 0).all()


@pytest.mark.parametrize("weighting", WEIGHTINGS)
def test_value_weights_sum_to_one_per_segment(weighting):  # invariant 6
    mask = make_mask([7, 0, 1, 5], 9, "middle")
    ids = segment_macro_actions(mask, "fixed", n=3)
    weights = segment_value_weights(ids, weighting, dtype=torch.float64)
    assert (weights[mask == 0] == 0).all()
    sums = segment_sum(weights, ids)
    present = segment_sum(mask.double(), ids) > 0
    torch.testing.assert_close(sums[present], torch.ones_like(sums[present]), rtol=0, atol=1e-15)
    assert (sums[~present] == 0).all()
    first = weights[0, 2:5].tolist()  # a full segment of three tokens
    expected = {"equal": [1 / 3] * 3, "position": [6 / 11, 3 / 11, 2 / 11], "last": [0.0, 0.0, 1.0]}[weighting]
    assert first == pytest.approx(expected, abs=1e-15)


@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("options", OPTIONS)
def test_macro_gae_ignores_batch_mates_and_padding(rule, options):  # invariant 8
    rewards, values, mask = _gae_batch(5, "right")
    lengths = [int(x) for x in mask.sum(-1)]
    _, kwargs = _inputs(5, lengths, 10, "right")
    ids = segment_macro_actions(mask, rule, **kwargs, **options)
    advantages, returns = macro_gae(rewards, values, mask, ids, value_weighting="position")
    for row, length in enumerate(lengths):
        new_mask = make_mask([length], 13, "left")
        moved = []
        for x in (rewards, values, ids):
            y = torch.full((1, 13), -1 if x is ids else float("nan"), dtype=x.dtype)
            y[new_mask.bool()] = x[row][mask[row].bool()]
            moved.append(y)
        alone = macro_gae(moved[0], moved[1], new_mask, moved[2], value_weighting="position")
        assert torch.equal(alone[0][new_mask.bool()], advantages[row][mask[row].bool()])
        assert torch.equal(alone[1][new_mask.bool()], returns[row][mask[row].bool()])


def test_sum_aggregation_keeps_the_total_reward():  # invariant 7 (the score placement is in test_ppo)
    rewards, _, mask = _gae_batch(6, "left")
    ids = segment_macro_actions(mask, "fixed", n=4)
    per_segment = segment_sum(torch.where(mask.bool(), rewards, 0), ids)
    torch.testing.assert_close(per_segment.sum(-1), torch.where(mask.bool(), rewards, 0).sum(-1), rtol=0, atol=1e-12)


def test_macro_gae_rejects_ids_that_disagree_with_the_mask():
    mask = make_mask([3], 4)
    with pytest.raises(ValueError, match="segment_ids"):
        macro_gae(torch.zeros(1, 4), torch.zeros(1, 4), mask, torch.tensor([[0, 0, -1, -1]]))


@pytest.mark.parametrize("rule", RULES)
def test_the_last_token_keeps_its_score_undiluted_under_mean(rule):  # invariant 7 with the authors' isolate_last
    rewards, values, mask = _gae_batch(7, "left")
    _, kwargs = _inputs(7, [int(x) for x in mask.sum(-1)], 10, "left")
    ids = segment_macro_actions(mask, rule, **kwargs)
    advantages, _ = macro_gae(rewards, values, mask, ids, gamma=0.9, lam=0.8, reward_aggregation="mean")
    for row in range(mask.shape[0]):
        positions = mask[row].nonzero().flatten().tolist()
        if positions:  # Â of the last segment is δ = r_last − V_last: the score is neither averaged nor repeated
            last = positions[-1]
            assert advantages[row, last] == rewards[row, last] - values[row, last]
            assert (ids[row] == ids[row, last]).sum() == 1
