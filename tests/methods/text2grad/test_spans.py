"""Span → token alignment by character offsets (docs/methods.md, Text2Grad: invariants 4 and 6)."""

import pytest
import torch

from tokalign.data import toy_pref
from tokalign.methods.text2grad.spans import critique_labels, punctuation_tokens, span_token_labels, token_offsets

RESPONSE = "the lake is calm and calm . it is dull , very dull ."
PROMPT = "Tell me about the lake."


@pytest.fixture(scope="module")
def tiny_tokenizer(tiny_model):
    from tokalign.modeling.models import load_tokenizer

    return load_tokenizer(tiny_model)


@pytest.fixture(scope="module")
def byte_tokenizer():
    """A byte-level BPE tokenizer (GPT-2 style) that has seen multi-byte characters."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<eos>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator([RESPONSE, "the café is calm . naïve ünïcode"] * 20, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>")


def _encode(tokenizer, text: str, pad_left: int = 0, eos: bool = True):
    ids = tokenizer.encode(text, add_special_tokens=False) + ([tokenizer.eos_token_id] if eos else [])
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    row = torch.tensor([[pad] * pad_left + ids])
    mask = torch.tensor([[0] * pad_left + [1] * len(ids)])
    return row, mask


@pytest.mark.parametrize("which", ["tiny_tokenizer", "byte_tokenizer"])
def test_every_token_of_a_critiqued_word_gets_its_label_and_nothing_else_does(which, request):  # invariant 4
    tokenizer = request.getfixturevalue(which)
    responses, mask = _encode(tokenizer, RESPONSE)
    texts, offsets = token_offsets(tokenizer, responses, mask)
    assert texts == [RESPONSE]
    critique = toy_pref.critique(PROMPT, RESPONSE)
    labels, parsed = critique_labels(toy_pref.critique, [PROMPT], texts, offsets, mask)
    assert parsed.tolist() == [True]
    for t in range(mask.shape[1]):
        start, end = offsets[0, t].tolist()
        piece = RESPONSE[start:end]
        in_good = any(s < end and start < e for s, e in critique["good_words"]) and end > start
        in_poor = any(s < end and start < e for s, e in critique["poor_words"]) and end > start
        assert labels[0, t].item() == (-1 if in_poor else 1 if in_good else 0), piece
        if piece.strip() in {".", ","} or end == start:
            assert labels[0, t].item() == 0
    words = {RESPONSE[s:e] for s, e in critique["poor_words"]}
    assert words == {"calm", "dull"}  # the second 'calm', both 'dull's: repeated words keep their positions
    first, second = RESPONSE.index("calm"), RESPONSE.index("calm", RESPONSE.index("calm") + 1)

    def label_at(char):
        return next(labels[0, t].item() for t in range(mask.shape[1]) if offsets[0, t, 0] <= char < offsets[0, t, 1])

    assert (label_at(first), label_at(second)) == (1, -1)


def test_multibyte_characters_keep_later_offsets_right(byte_tokenizer):  # invariant 4, byte level
    text = "the café is calm ."
    responses, mask = _encode(byte_tokenizer, text, pad_left=2)
    texts, offsets = token_offsets(byte_tokenizer, responses, mask)
    assert texts == [text]
    start = text.index("calm")
    labels = span_token_labels(offsets, [[(start, start + 4, 1)]], mask)
    covered = "".join(text[s:e] for (s, e), lab in zip(offsets[0].tolist(), labels[0].tolist()) if lab)
    assert covered.strip() == "calm" and (labels[0, :2] == 0).all()


def test_unmatched_spans_add_nothing_and_shift_nothing(tiny_tokenizer):  # invariant 4
    responses, mask = _encode(tiny_tokenizer, RESPONSE)
    texts, offsets = token_offsets(tiny_tokenizer, responses, mask)
    calm = RESPONSE.index("calm")
    base = span_token_labels(offsets, [[(calm, calm + 4, 1)]], mask)
    outside = len(RESPONSE) + 5
    with_unmatched = span_token_labels(offsets, [[(outside, outside + 3, -1), (calm, calm + 4, 1)]], mask)
    assert torch.equal(base, with_unmatched)
    both = span_token_labels(offsets, [[(calm, calm + 4, 1), (calm, calm + 2, -1)]], mask)
    assert both[base != 0].eq(-1).all()  # a token in both a good and a poor span is poor


def test_padding_and_batch_mates_do_not_change_a_rows_labels(tiny_tokenizer):  # invariant 6
    other = "it is warm ."
    r1, m1 = _encode(tiny_tokenizer, RESPONSE)
    r2, m2 = _encode(tiny_tokenizer, other, pad_left=r1.shape[1] - len(tiny_tokenizer.encode(other)) - 1)
    batch, mask = torch.cat([r1, r2]), torch.cat([m1, m2])
    texts, offsets = token_offsets(tiny_tokenizer, batch, mask)
    labels, _ = critique_labels(toy_pref.critique, [PROMPT, PROMPT], texts, offsets, mask)
    alone_texts, alone_offsets = token_offsets(tiny_tokenizer, r1, m1)
    alone, _ = critique_labels(toy_pref.critique, [PROMPT], alone_texts, alone_offsets, m1)
    assert torch.equal(labels[0], alone[0]) and (labels[1][mask[1] == 0] == 0).all()


def test_an_unparsed_critique_is_reported_not_zeroed(tiny_tokenizer):  # invariant 6
    responses, mask = _encode(tiny_tokenizer, RESPONSE)
    responses, mask = responses.repeat(2, 1), mask.repeat(2, 1)
    texts, offsets = token_offsets(tiny_tokenizer, responses, mask)
    calls = iter([None, toy_pref.critique(PROMPT, RESPONSE)])
    labels, parsed = critique_labels(lambda p, r: next(calls), [PROMPT] * 2, texts, offsets, mask)
    assert parsed.tolist() == [False, True] and labels[1].abs().sum() > 0


def test_punctuation_tokens_are_the_clause_ends(tiny_tokenizer):
    responses, mask = _encode(tiny_tokenizer, RESPONSE)
    texts, offsets = token_offsets(tiny_tokenizer, responses, mask)
    flags = punctuation_tokens(texts, offsets, mask)
    marks = [RESPONSE[s:e].strip() for (s, e), f in zip(offsets[0].tolist(), flags[0].tolist()) if f]
    assert marks == [".", ",", "."]
