"""Macro actions (MA-RLHF, Chai et al., ICLR 2025, arXiv 2410.02743): segments and GAE over them.

A segmentation is a (B, T) long tensor: on valid tokens the per-row index 0, 1, …, K_b − 1 of
the macro action holding the token, −1 where the mask is 0 (``segment_macro_actions``).
Valid tokens are assumed contiguous within a row (the response); left or right padding is fine.
Every rule decides boundaries per row from that row alone, so a sample's segmentation never
depends on its batch-mates or its padding (unlike MA-RLHF's code, which used row 0's).
"""

import bisect
import string
import warnings
from collections.abc import Callable, Sequence
from typing import TypeGuard

import torch
import torch.nn.functional as F

from tokalign.losses.masked import masked_fill_zero

# Lower-cased words before which the offline `parsing` chunker starts a new phrase.
FUNCTION_WORDS = frozenset(
    "the a an of to in into on at by for from with about as and or but nor so yet if then than "
    "because while when where that which who whom whose is are was were be been being not".split()
)
# A piece ending in one of these closes a phrase; ". ! ?" also end sentences.
_PUNCTUATION = frozenset(string.punctuation) - {"'", "-", "_", "$", "%", "&", "@", "#", "/"}
# Tokenizer markers for a leading space (GPT-2 byte-level "Ġ", SentencePiece "▁") and newline.
_MARKERS = str.maketrans({"Ġ": " ", "▁": " ", "Ċ": "\n", "ĉ": "\t"})


def segment_macro_actions(
    mask: torch.Tensor,
    rule: str = "fixed",
    *,
    n: int = 5,
    lengths: Sequence[int] = (1, 2, 3, 5, 10),
    seed: int = 0,
    token_ppl: torch.Tensor | None = None,
    texts: Sequence[Sequence[str]] | None = None,
    max_len: int | None = None,
    nlp: Callable | None = None,
    isolate_last: bool = True,
    ppl_start: str = "before_rise",
    sampling: str = "shuffle",
    repeats: int | None = None,
) -> torch.Tensor:
    """Cut each row's valid tokens into contiguous macro actions (MA-RLHF, Chai et al., ICLR 2025).

    Defaults follow the authors' code (ernie-research/MA-RLHF, DeepSpeed-Chat
    ``dschat/rlhf/ppo_trainer.py``), except that every row decides its own boundaries (their
    code applied batch row 0's to every row) and no segment is ever empty (their duplicate
    boundary made one, so their n = 1 was not token-level PPO; here it is, exactly).

    Rules (each row's first valid token always starts a segment):

    - ``fixed``: a segment every ``n`` tokens (n = 1 is token-level PPO).
    - ``randomized``: segment lengths taken from ``lengths`` with a ``torch.Generator`` seeded
      with ``seed + b`` for row b, so the result is reproducible and independent of padding
      and batch-mates (vary ``seed`` per step for fresh draws). ``sampling="shuffle"`` (the
      authors'): ``lengths`` repeated ``repeats`` times, shuffled, used once each without
      replacement; tokens left when the list runs out form one segment. ``repeats=None``
      repeats the list just enough to cover the row. ``sampling="iid"``: each length drawn
      uniformly and independently.
    - ``ppl``: ``token_ppl`` (the reference model's per-token perplexity; any increasing
      transform, such as the token NLL, is equivalent) rises from token i to token i+1.
      ``ppl_start="before_rise"`` (the authors') starts the new segment at i, ``"at_rise"`` at i+1.
    - ``parsing``: phrase chunks from ``texts``, a per-row list of the decoded strings of the
      row's valid tokens (GPT-2 "Ġ"/"Ċ" and SentencePiece "▁" markers are understood). Offline
      chunker: a segment starts after a line break, after a punctuation-ended piece when the
      next piece starts a word (so sentence starts always), and at a word starting with one of
      ``FUNCTION_WORDS``. Given ``nlp`` (a spaCy ``Language``), segments instead start at
      sentence starts, noun-chunk starts and ends, and after punctuation. A row whose strings
      are missing, do not match its number of valid tokens, or fail to parse falls back to
      token-level segments with a warning, never an error.

    ``isolate_last`` (any rule; the authors'): the row's last valid token, the one that
    carries the sequence score, is a macro action of its own, so that averaging a segment
    (``reward_aggregation="mean"``, value weighting) never dilutes the score; the segment
    before it closes one token early.
    ``max_len`` (any rule; None = no cap): a segment that already has ``max_len`` tokens is
    closed, for ``parsing`` at the next word start so words stay whole.
    """
    valid = mask.bool()
    position = valid.long().cumsum(-1) - 1  # index among the row's valid tokens
    word_starts = valid
    if rule == "fixed":
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        starts = position % n == 0
    elif rule == "randomized":
        starts = _random_starts(position, valid, lengths, seed, sampling, repeats)
    elif rule == "ppl":
        starts = _ppl_starts(valid, token_ppl, ppl_start)
    elif rule == "parsing":
        starts, word_starts = _parsing_starts(valid, texts, nlp)
    else:
        raise ValueError(f"unknown macro-action rule {rule!r}")

    starts = starts | (position == 0)
    if isolate_last:
        starts = starts | (position == valid.sum(-1, keepdim=True) - 1)
    starts = starts & valid
    if max_len is not None:
        starts = _cap_segment_length(starts, valid, word_starts, max_len)
    return torch.where(valid, starts.long().cumsum(-1) - 1, -1)


def _random_starts(
    position: torch.Tensor,
    valid: torch.Tensor,
    lengths: Sequence[int],
    seed: int,
    sampling: str,
    repeats: int | None,
) -> torch.Tensor:
    choices = torch.as_tensor(lengths, dtype=torch.long)
    if choices.numel() == 0 or bool((choices < 1).any()):
        raise ValueError(f"lengths must be non-empty and >= 1, got {lengths}")
    if repeats is not None and repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    if sampling not in ("shuffle", "iid"):
        raise ValueError(f"unknown randomized sampling {sampling!r}")
    starts = torch.zeros_like(valid)
    for row, count in enumerate(valid.sum(-1).tolist()):
        generator = torch.Generator().manual_seed(seed + row)
        if sampling == "iid":
            drawn = choices[torch.randint(len(choices), (count,), generator=generator)]  # count draws cover the row
        else:
            copies = -(-count // int(choices.sum())) if repeats is None else repeats
            pool = choices.repeat(max(copies, 1))
            drawn = pool[torch.randperm(len(pool), generator=generator)]
        segment_starts = torch.cat([drawn.new_zeros(1), drawn.cumsum(0)]).to(position.device)
        starts[row] = torch.isin(position[row], segment_starts)
    return starts


def _ppl_starts(valid: torch.Tensor, token_ppl: torch.Tensor | None, ppl_start: str) -> torch.Tensor:
    """Starts where the perplexity rises between two valid tokens, at the earlier or later one."""
    if token_ppl is None:
        raise ValueError("rule='ppl' needs token_ppl")
    rises = valid[:, 1:] & valid[:, :-1] & (token_ppl[:, 1:] > token_ppl[:, :-1])
    if ppl_start == "before_rise":
        return F.pad(rises, (0, 1))
    if ppl_start == "at_rise":
        return F.pad(rises, (1, 0))
    raise ValueError(f"unknown ppl_start {ppl_start!r}")


def _cap_segment_length(
    starts: torch.Tensor, valid: torch.Tensor, eligible: torch.Tensor, max_len: int
) -> torch.Tensor:
    """Add a start at an eligible token once the current segment holds ``max_len`` tokens."""
    if max_len < 1:
        raise ValueError(f"max_len must be >= 1, got {max_len}")
    capped = starts.clone()
    run = torch.zeros(starts.shape[0], dtype=torch.long, device=starts.device)
    for t in range(starts.shape[1]):
        capped[:, t] |= valid[:, t] & eligible[:, t] & (run >= max_len)
        run = torch.where(capped[:, t], 1, run + valid[:, t].long())
    return capped


def _parsing_starts(
    valid: torch.Tensor, texts: Sequence[Sequence[str]] | None, nlp: Callable | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row phrase starts and word starts; token-level (every token) for unparseable rows."""
    starts, word_starts = valid.clone(), valid.clone()
    for row in range(valid.shape[0]):
        index = valid[row].nonzero().squeeze(-1)
        if len(index) == 0:
            continue
        pieces = texts[row] if texts is not None and row < len(texts) else None
        if not _is_piece_list(pieces, len(index)):
            warnings.warn(
                f"parsing: row {row} has no token strings matching its {len(index)} valid tokens; "
                "using token-level segments",
                stacklevel=3,
            )
            continue
        pieces = [piece.translate(_MARKERS) for piece in pieces]
        if nlp is None:
            row_starts = _chunk_starts(pieces)
        else:
            try:
                row_starts = _spacy_starts(pieces, nlp)
            except Exception as error:  # any parser failure: fall back, never crash training
                warnings.warn(
                    f"parsing: row {row} failed to parse ({error!r}); using token-level segments", stacklevel=3
                )
                continue
        starts[row, index] = torch.tensor(row_starts, dtype=torch.bool, device=valid.device)
        word_starts[row, index] = torch.tensor(_word_starts(pieces), dtype=torch.bool, device=valid.device)
    return starts, word_starts


def _is_piece_list(pieces: object, count: int) -> TypeGuard[Sequence[str]]:
    return (
        isinstance(pieces, Sequence)
        and not isinstance(pieces, str)
        and len(pieces) == count
        and all(isinstance(piece, str) for piece in pieces)
    )


def _word_starts(pieces: list[str]) -> list[bool]:
    return [i == 0 or piece[:1].isspace() or pieces[i - 1][-1:].isspace() for i, piece in enumerate(pieces)]


def _chunk_starts(pieces: list[str]) -> list[bool]:
    """The offline chunker of ``segment_macro_actions(rule="parsing")``."""
    starts = [True] * len(pieces)
    for i in range(1, len(pieces)):
        previous, starts_word = pieces[i - 1].rstrip(" \t"), pieces[i][:1].isspace()
        after_line_break = previous.endswith("\n")
        after_punctuation = starts_word and previous[-1:] in _PUNCTUATION
        before_function_word = starts_word and pieces[i].strip().lower() in FUNCTION_WORDS
        starts[i] = after_line_break or after_punctuation or before_function_word
    return starts


def _spacy_starts(pieces: list[str], nlp: Callable) -> list[bool]:
    """Phrase starts from a spaCy parse, mapped from characters back to tokens."""
    text = "".join(pieces)
    offsets = [0]
    for piece in pieces[:-1]:
        offsets.append(offsets[-1] + len(piece))
    doc = nlp(text)
    boundaries = {sentence.start_char for sentence in doc.sents}
    boundaries |= {char for chunk in doc.noun_chunks for char in (chunk.start_char, chunk.end_char)}
    boundaries |= {token.idx + len(token.text) for token in doc if token.is_punct}
    starts = [False] * len(pieces)
    starts[0] = True
    for char in boundaries:
        while char < len(text) and text[char].isspace():  # a boundary belongs to the next word
            char += 1
        if char < len(text):
            starts[bisect.bisect_right(offsets, char) - 1] = True
    return starts


def num_segments(segment_ids: torch.Tensor) -> int:
    """K = the largest number of segments in a row (at least 1, so empty batches still index)."""
    return int(segment_ids.max().clamp(min=0)) + 1


def segment_sum(x: torch.Tensor, segment_ids: torch.Tensor, num: int | None = None) -> torch.Tensor:
    """(B, T) per-token values → (B, K) per-segment sums; tokens with id −1 are left out."""
    num = num_segments(segment_ids) if num is None else num
    index = torch.where(segment_ids >= 0, segment_ids, num)  # an overflow column, dropped below
    return x.new_zeros(x.shape[0], num + 1).scatter_add(1, index, x)[:, :num]


def segment_broadcast(y: torch.Tensor, segment_ids: torch.Tensor) -> torch.Tensor:
    """(B, K) per-segment values → (B, T): each token gets its segment's value, 0 at id −1."""
    return masked_fill_zero(y.gather(1, segment_ids.clamp(min=0)), segment_ids >= 0)


def segment_value_weights(
    segment_ids: torch.Tensor, weighting: str = "equal", *, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """Per-token weights σ_t of the macro value ``V̄_k = Σ_{t∈S_k} σ_t V_t`` (MA-RLHF).

    ``equal``: 1/|S_k| (their default); ``position``: ∝ 1/(i+1) for the i-th token of the
    segment; ``last``: 1 on the segment's last token. They sum to 1 per segment; 0 at id −1.
    """
    valid = segment_ids >= 0
    ones = valid.to(dtype)
    sizes = segment_sum(ones, segment_ids)
    first_position = segment_broadcast(sizes.cumsum(-1) - sizes, segment_ids)
    index_in_segment = ones.cumsum(-1) - 1 - first_position
    if weighting == "equal":
        weights = ones
    elif weighting == "position":
        weights = 1 / (index_in_segment + 1)
    elif weighting == "last":
        weights = (index_in_segment == segment_broadcast(sizes, segment_ids) - 1).to(dtype)
    else:
        raise ValueError(f"unknown value weighting {weighting!r}")
    weights = masked_fill_zero(weights, valid)
    return masked_fill_zero(weights / segment_broadcast(segment_sum(weights, segment_ids), segment_ids), valid)


def macro_gae(
    rewards: torch.Tensor,
    values: torch.Tensor,
    mask: torch.Tensor,
    segment_ids: torch.Tensor,
    *,
    gamma: float = 1.0,
    lam: float = 0.95,
    value_weighting: str = "equal",
    reward_aggregation: str = "sum",
) -> tuple[torch.Tensor, torch.Tensor]:
    """GAE over macro actions (MA-RLHF; GAE of Schulman et al., 2016, with segments as steps).

    ``δ_k = R̄_k + γ V̄_{k+1} − V̄_k`` (V̄_{K+1} = 0), ``Â_k = δ_k + γλ Â_{k+1}``,
    ``Ĝ_k = Â_k + V̄_k``; every token of S_k gets Â_k and Ĝ_k, masked tokens 0.
    ``R̄_k`` is Σ_{t∈S_k} r_t for ``reward_aggregation="sum"``; ``"mean"`` (MA-RLHF's code)
    divides it by |S_k|, which silently divides the per-token KL coefficient by the segment
    length. ``V̄_k`` uses ``segment_value_weights(value_weighting)``.
    Token segments (``segment_macro_actions(mask, "fixed", n=1)``) give token-level GAE
    exactly. Outputs are detached RL targets.
    """
    valid = mask.bool()
    if not torch.equal(valid, segment_ids >= 0):
        raise ValueError("segment_ids must be >= 0 exactly where mask is 1")
    rewards = masked_fill_zero(rewards.detach(), valid)
    values = masked_fill_zero(values.detach(), valid)
    num = num_segments(segment_ids)

    segment_rewards = segment_sum(rewards, segment_ids, num)
    if reward_aggregation == "mean":
        segment_rewards = segment_rewards / segment_sum(valid.to(rewards.dtype), segment_ids, num).clamp(min=1)
    elif reward_aggregation != "sum":
        raise ValueError(f"unknown reward aggregation {reward_aggregation!r}")
    weights = segment_value_weights(segment_ids, value_weighting, dtype=values.dtype)
    segment_values = segment_sum(weights * values, segment_ids, num)

    # Segments past a row's last one are empty: R̄ = V̄ = 0, so δ = 0 there and V̄_{K+1} = 0.
    deltas = segment_rewards + gamma * F.pad(segment_values[:, 1:], (0, 1)) - segment_values
    advantages = torch.zeros_like(deltas)
    running = torch.zeros_like(deltas[:, 0])
    for k in reversed(range(num)):
        running = deltas[:, k] + gamma * lam * running
        advantages[:, k] = running
    returns = advantages + segment_values
    return segment_broadcast(advantages, segment_ids), segment_broadcast(returns, segment_ids)
