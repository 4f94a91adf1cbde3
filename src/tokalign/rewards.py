"""Reward functions: the toy gold reward, the exact-match verifiable reward, a trained reward model.

Programmatic rewards take TRL's reward-function signature
`(prompts, completions, **columns) -> list[float]`, so they plug into GRPO as they are.
"""

from __future__ import annotations

from typing import Any

from tokalign.data import toy_math, toy_pref
from tokalign.generation import as_messages, prompt_text


def _text(completion: Any) -> str:
    return completion if isinstance(completion, str) else completion[-1]["content"]


def gold_reward(prompts: list[Any], completions: list[Any], **_: Any) -> list[float]:
    """The toy preference task's readable gold reward (tokalign.data.toy_pref.gold_reward)."""
    return [toy_pref.gold_reward(prompt_text(p), _text(c)) for p, c in zip(prompts, completions)]


def exact_match(prompts: list[Any], completions: list[Any], answer: list[str], **_: Any) -> list[float]:
    """1 when the completion's final integer equals the reference answer, else 0."""
    return [toy_math.exact_match_reward(_text(c), a) for c, a in zip(completions, answer)]


def math_verify_reward(prompts: list[Any], completions: list[Any], answer: list[str], **_: Any) -> list[float]:
    """Symbolic equivalence of the completion's answer and the reference (math-verify), for math RL sets."""
    from math_verify import parse, verify

    return [float(verify(parse(str(a)), parse(_text(c)))) for c, a in zip(completions, answer)]


TASK_REWARDS = {"toy_pref": gold_reward, "toy_math": exact_match}


class RewardModelScorer:
    """Scores (prompt, completion) pairs with a sequence-classification reward model (method=reward)."""

    def __init__(self, path: str, batch_size: int = 32):
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = AutoModelForSequenceClassification.from_pretrained(path, dtype=torch.float32).eval()
        self.batch_size = batch_size

    def __call__(self, prompts: list[Any], completions: list[Any], **_: Any) -> list[float]:
        import torch

        texts = [
            self.tokenizer.apply_chat_template(as_messages(p) + [{"role": "assistant", "content": _text(c)}], tokenize=False)
            for p, c in zip(prompts, completions)
        ]
        scores: list[float] = []
        with torch.no_grad():
            for i in range(0, len(texts), self.batch_size):
                enc = self.tokenizer(texts[i : i + self.batch_size], return_tensors="pt", padding=True, add_special_tokens=False)
                scores += self.model(**enc.to(self.model.device)).logits[:, 0].float().tolist()
        return scores
