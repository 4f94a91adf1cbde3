"""A generative critic: a causal LM asked for a critique and the good and poor spans of a response in
JSON, as the paper's reward model answers ({textual_feedback, good_spans, poor_spans}); the spans are
found in the response by text, so the policy's tokenizer and the critic's never need to agree."""

from __future__ import annotations

import json
import re

import torch

PROMPT = (
    "Critique the response to the prompt. Answer with JSON only: "
    '{{"textual_feedback": "...", "good_spans": ["..."], "poor_spans": ["..."]}}\n'
    "Prompt: {prompt}\nResponse: {response}"
)
_OBJECT = re.compile(r"\{.*\}", re.DOTALL)


def find_spans(response: str, phrases) -> list[tuple[int, int]]:
    """Character spans of each phrase in the response (case-insensitive, left to right, each occurrence
    used once); a phrase that is not there is skipped."""
    lowered, spans, used = response.lower(), [], set()
    for phrase in phrases:
        if not isinstance(phrase, str) or not phrase.strip():
            continue
        start = lowered.find(phrase.lower().strip())
        while start in used:
            start = lowered.find(phrase.lower().strip(), start + 1)
        if start >= 0:
            used.add(start)
            spans.append((start, start + len(phrase.strip())))
    return spans


def parse_critique(text: str, response: str) -> dict | None:
    """The critic's answer as ``{text, good_words, poor_words}``; None when it holds no JSON object with
    both span lists (the row is then dropped and counted, never scored with zeros)."""
    match = _OBJECT.search(text)
    try:
        answer = json.loads(match.group()) if match else None
    except json.JSONDecodeError:
        return None
    if not isinstance(answer, dict) or not all(isinstance(answer.get(k), list) for k in ("good_spans", "poor_spans")):
        return None
    return {
        "text": str(answer.get("textual_feedback", "")),
        "good_words": find_spans(response, answer["good_spans"]),
        "poor_words": find_spans(response, answer["poor_spans"]),
    }


class GenerativeCritic:
    """``critic(prompt, response)`` from a causal LM under its chat template, greedy."""

    def __init__(self, model, tokenizer, max_new_tokens: int):
        self.model, self.tokenizer, self.max_new_tokens = model.eval(), tokenizer, max_new_tokens

    @torch.no_grad()
    def __call__(self, prompt: str, response: str) -> dict | None:
        messages = [{"role": "user", "content": PROMPT.format(prompt=prompt, response=response)}]
        text = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        inputs = self.tokenizer(text, return_tensors="pt", add_special_tokens=False).to(self.model.device)
        out = self.model.generate(
            **inputs, max_new_tokens=self.max_new_tokens, do_sample=False, pad_token_id=self.tokenizer.pad_token_id
        )
        answer = self.tokenizer.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
        return parse_critique(answer, response)
