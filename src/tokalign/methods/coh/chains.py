"""Chains as token rows: the prompt through the chat template, the chain as the assistant's turn, and a
loss mask that is 1 on the outputs (and the end-of-turn tokens after them) and 0 on prompt and markers.

The prompt and prompt+chain are tokenized as TRL's SFTTrainer tokenizes prompt/completion rows, so a
one-output chain with empty markers is exactly SFT's row.
"""

from __future__ import annotations

import random
from typing import Any

from tokalign.data.chat import as_messages
from tokalign.data.hindsight import build_chain


def output_text(value: Any) -> str:
    """A chosen/rejected field as text: a string, or the last message of a conversation."""
    return value if isinstance(value, str) else list(value)[-1]["content"]


def chain_row(tokenizer, prompt: Any, outputs: dict[str, str], order: str, markers: dict[str, str], last_only: bool):
    """``{"input_ids", "completion_mask"}`` of one chain (the mask 0 on the prompt, the markers and, with
    ``last_only``, the outputs before the last)."""
    eos = tokenizer.eos_token or ""
    pieces = build_chain("", outputs, order, markers, last_only=last_only, eos=eos)[1:]
    content = "".join(text for text, _ in pieces).removesuffix(eos)  # the template ends the turn itself
    messages = as_messages(prompt)
    prompt_text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    full_text = tokenizer.apply_chat_template(messages + [{"role": "assistant", "content": content}], tokenize=False)
    after_prompt = len(_common_prefix(prompt_text, full_text))
    start = full_text.index(content, after_prompt) if content else after_prompt
    silent, cursor = [], start  # character ranges of the chain that carry no loss
    for text, has_loss in pieces:
        if not has_loss:
            silent.append((cursor, cursor + len(text)))
        cursor += len(text)
    encoded = tokenizer(full_text, add_special_tokens=False, return_offsets_mapping=True)
    prompt_ids = tokenizer(prompt_text, add_special_tokens=False)["input_ids"]
    ids = encoded["input_ids"]
    prompt_len = len(_common_prefix(prompt_ids, ids))
    mask = [
        int(i >= prompt_len and not any(a <= first < b for a, b in silent))
        for i, (first, _) in enumerate(encoded["offset_mapping"])
    ]
    return {"input_ids": ids, "completion_mask": mask}


def _common_prefix(a, b):
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return a[:n]


def chain_rows(tokenizer, rows, m, seed: int) -> list[dict]:
    """One chain per preference row, its order drawn from ``m.orders`` (seeded by the run's seed)."""
    rng = random.Random(seed)
    markers = {"p": m.positive_marker, "n": m.negative_marker}
    out = []
    for row in rows:
        outputs = {"p": output_text(row["chosen"]), "n": output_text(row["rejected"])}
        out.append(chain_row(tokenizer, row["prompt"], outputs, rng.choice(list(m.orders)), markers, m.last_only))
    return out


def text_rows(tokenizer, texts: list[str]) -> list[dict]:
    """Pretraining rows: every token of each text is trained (Eq. 1)."""
    return [{"input_ids": tokenizer(t, add_special_tokens=False)["input_ids"]} for t in texts]
