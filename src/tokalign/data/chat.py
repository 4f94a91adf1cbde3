"""Prompts as stored (plain text or chat messages) and as models and rewards want them."""

from __future__ import annotations

from typing import Any


def as_messages(prompt: Any) -> list[dict]:
    """Prompts are stored either as plain text or as chat messages; generation wants messages."""
    return [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)


def prompt_text(prompt: Any) -> str:
    """The last user turn, for display and for programmatic rewards."""
    return prompt if isinstance(prompt, str) else as_messages(prompt)[-1]["content"]
