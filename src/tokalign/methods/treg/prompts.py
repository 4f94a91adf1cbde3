"""T-REG's contrastive revision prompts: the user's turn rewritten to ask for a better or a worse response."""

from __future__ import annotations

from typing import Any

# The paper's wording was not readable (only that x⁺ asks for a more helpful, correct, coherent and
# concise response and x⁻ for the opposite); these are the defaults of method.better_prompt / worse_prompt.
BETTER = "{prompt}\n\nGive a helpful, correct, coherent and concise response."
WORSE = "{prompt}\n\nGive an unhelpful, incorrect, incoherent and verbose response."
PLACEHOLDER = "{prompt}"


def revise(prompt: Any, template: str) -> Any:
    """`prompt` (text or chat messages) with its last user turn replaced by `template`, where
    `{prompt}` stands for that turn's text; the other turns are kept."""
    if isinstance(prompt, str):
        return template.replace(PLACEHOLDER, prompt)
    messages = [dict(m) for m in prompt]
    users = [i for i, m in enumerate(messages) if m.get("role") == "user"]
    i = users[-1] if users else len(messages) - 1
    messages[i]["content"] = template.replace(PLACEHOLDER, messages[i]["content"])
    return messages
