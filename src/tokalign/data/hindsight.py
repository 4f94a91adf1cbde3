"""Chain of Hindsight sequences: a prompt, then model outputs each behind a feedback marker.

The authors' code at its latest version (forhaoliu/chain-of-hindsight, "simplified conditional
tokens") writes "User: {prompt} A helpful answer: {pos}" or "An unhelpful answer: {neg}" and
chains p, n, pn and np, with an end-of-sequence token after each output; only the outputs and
their end tokens are trained, never the prompt or the markers. At inference the prompt is
followed by the positive marker.
"""

from __future__ import annotations

from collections.abc import Mapping

ORDERS = ("p", "n", "pn", "np")
# The toy's markers: plain words the tiny tokenizer round-trips (decode(encode(m)) == m).
TOY_MARKERS = {"p": "a good note :", "n": "a bad note :"}


def build_chain(
    prompt: str,
    outputs: Mapping[str, str],
    order: str,
    markers: Mapping[str, str],
    *,
    last_only: bool = False,
    eos: str = "",
    separator: str = " ",
) -> list[tuple[str, bool]]:
    """The chain as consecutive ``(text, has_loss)`` pieces whose concatenation is the training text.

    ``outputs`` and ``markers`` map "p" (positive) and "n" (negative) to text; ``order`` is one of
    ``ORDERS`` ("pn": the positive output first). The prompt and every marker have no loss; every
    output with ``eos`` after it has (the authors' code), or only the last one with
    ``last_only`` (the paper's "Training" paragraph). A piece that follows text starts with
    ``separator``, which belongs to it (a marker's is not trained); an empty marker is left out, so
    order "p" with no markers and no prompt is the positive output alone.
    """
    if order not in ORDERS:
        raise ValueError(f"order must be one of {', '.join(ORDERS)}, got {order!r}")
    pieces = [(prompt, False)]

    def lead() -> str:
        return separator if any(text for text, _ in pieces) else ""

    for i, kind in enumerate(order):
        if markers[kind]:
            pieces.append((lead() + markers[kind], False))
        pieces.append((lead() + outputs[kind] + eos, not last_only or i == len(order) - 1))
    return pieces


def inference_prompt(prompt: str, markers: Mapping[str, str], *, separator: str = " ") -> str:
    """What a CoH model is asked at inference: the prompt, then the positive marker."""
    return prompt + separator + markers["p"]
