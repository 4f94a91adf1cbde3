"""Prompts as stored (plain text or chat messages) and as models and rewards want them."""

from __future__ import annotations

from typing import Any


def as_messages(prompt: Any) -> list[dict]:
    """Prompts are stored either as plain text or as chat messages; generation wants messages."""
    return [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)


def prompt_text(prompt: Any) -> str:
    """The last user turn, for display and for programmatic rewards."""
    return prompt if isinstance(prompt, str) else as_messages(prompt)[-1]["content"]


def with_text(prompt: Any, text: str) -> Any:
    """The prompt with its last user turn replaced by `text`, in the prompt's own form (text or messages)."""
    if isinstance(prompt, str):
        return text
    messages = as_messages(prompt)
    return [*messages[:-1], {**messages[-1], "content": text}]
