"""From a critique's character spans to token labels δ ∈ {−1, 0, +1}, by character offsets.

The authors' code re-matches each critiqued *word* against concatenations of individually
decoded tokens, which breaks on multi-byte characters and on repeated words; here a critique
names character spans of the decoded response and a token takes the label of any span it shares
a character with. Offsets come from decoding prefixes of the sampled tokens, so they hold for
any tokenizer whose decoding of a prefix is a prefix of the decoding (byte-level BPE included;
an incomplete multi-byte character is attributed to the token that completes it).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

PUNCTUATION = frozenset(",.?!")  # the marks their trainer ends a clause at

# A span: (start, end, label) over a response's characters, label −1 (poor) or +1 (good).
Span = tuple[int, int, int]


def token_offsets(tokenizer, responses: torch.Tensor, mask: torch.Tensor) -> tuple[list[str], torch.Tensor]:
    """Each row's decoded response (special tokens skipped) and (B, T, 2) character offsets of its tokens.

    A token's span is [end of the previous prefix, end of its own prefix) of the decoded text; a
    special token or a byte that completes no character has an empty span. 0 where mask is 0.
    """
    offsets = torch.zeros(*responses.shape, 2, dtype=torch.long)
    texts = []
    for row, (ids, valid) in enumerate(zip(responses.tolist(), mask.bool().tolist())):
        positions = [t for t, v in enumerate(valid) if v]
        tokens = [ids[t] for t in positions]
        text = tokenizer.decode(tokens, skip_special_tokens=True, clean_up_tokenization_spaces=False)
        end = 0
        for k, t in enumerate(positions):
            prefix = tokenizer.decode(tokens[: k + 1], skip_special_tokens=True, clean_up_tokenization_spaces=False)
            # a prefix ending inside a multi-byte character decodes to a replacement character
            new_end = len(prefix) if text.startswith(prefix) else end
            offsets[row, t] = torch.tensor([end, max(end, new_end)])
            end = max(end, new_end)
        texts.append(text)
    return texts, offsets


def span_token_labels(offsets: torch.Tensor, spans: Sequence[Sequence[Span]], mask: torch.Tensor) -> torch.Tensor:
    """(B, T) labels in {−1, 0, 1}: a valid token sharing a character with a span gets its label.

    ``offsets`` (B, T, 2) are [start, end) character offsets of each token in its row's text,
    ``spans`` each row's critiqued spans. A token in both a good and a poor span is poor; a token
    sharing no character with a span (punctuation, spaces, special tokens) is 0; a span no token
    overlaps adds nothing and shifts nothing. 0 where mask is 0.
    """
    labels = torch.zeros(mask.shape, dtype=torch.long)
    starts, ends = offsets[..., 0], offsets[..., 1]
    valid = mask.bool().cpu()
    for row, row_spans in enumerate(spans):
        for label in (1, -1):  # poor last: it wins a tie
            for start, end, value in row_spans:
                if value == label:
                    hit = valid[row] & (starts[row] < end) & (ends[row] > start) & (ends[row] > starts[row])
                    labels[row][hit] = label
    return labels.to(mask.device)


def punctuation_tokens(texts: Sequence[str], offsets: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B, T) bool: valid tokens whose text, stripped, is one of , . ? ! (their clause ends)."""
    flags = torch.zeros(mask.shape, dtype=torch.bool)
    for row, text in enumerate(texts):
        for t in mask[row].nonzero().flatten().tolist():
            start, end = offsets[row, t].tolist()
            flags[row, t] = text[start:end].strip() in PUNCTUATION
    return flags.to(mask.device)


Critic = Callable[[str, str], "dict | None"]


def critique_spans(critique: dict) -> list[Span]:
    """A critique's good and poor words (character spans of the response) as labelled spans."""
    return [(s, e, 1) for s, e in critique["good_words"]] + [(s, e, -1) for s, e in critique["poor_words"]]


def critique_labels(
    critic: Critic, prompts: Sequence[str], texts: Sequence[str], offsets: torch.Tensor, mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Labels from ``critic(prompt, response)`` for each row, and (B,) bool: the rows whose critique parsed.

    A row whose critic gives None (an unparseable critique) is not scored with zeros: it is
    reported so that the caller drops it from training and counts it.
    """
    critiques = [critic(p, t) for p, t in zip(prompts, texts)]
    parsed = torch.tensor([c is not None for c in critiques], dtype=torch.bool, device=mask.device)
    spans = [critique_spans(c) if c is not None else [] for c in critiques]
    return span_token_labels(offsets, spans, mask), parsed
