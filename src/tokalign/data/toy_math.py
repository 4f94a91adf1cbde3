"""A verifiable toy task: small additions and subtractions with an exact-match reward."""

from __future__ import annotations

import random
import re

_INT = re.compile(r"-?\d+")


def _problems(split: str) -> list[tuple[int, str, int]]:
    """All (a, op, b) with a, b in 0..20; one in five is held out for evaluation."""
    out = []
    for a in range(21):
        for b in range(21):
            for op in "+-":
                held_out = (a * 31 + b * 7 + (op == "-")) % 5 == 0
                if held_out == (split == "eval"):
                    out.append((a, op, b))
    return out


def _answer(a: int, op: str, b: int) -> int:
    return a + b if op == "+" else a - b


def _prompt(a: int, op: str, b: int) -> str:
    return f"What is {a} {op} {b}?"


def extract_answer(completion: str) -> str | None:
    """The last integer in the completion, the convention of the SFT data ("a op b = c")."""
    found = _INT.findall(completion)
    return found[-1] if found else None


def exact_match_reward(completion: str, answer: str) -> float:
    return 1.0 if extract_answer(completion) == str(answer).strip() else 0.0


def rows(n: int, seed: int, split: str = "train", noise: float = 0.0) -> list[dict]:
    """Prompt, completion and answer rows; with `noise`, that share of completions is wrong by 1-3."""
    rng = random.Random(seed)
    problems = _problems(split)
    out = []
    for _ in range(n):
        a, op, b = rng.choice(problems)
        answer = _answer(a, op, b)
        shown = answer + rng.choice((-3, -2, -1, 1, 2, 3)) if rng.random() < noise else answer
        out.append({"prompt": _prompt(a, op, b), "completion": f"{a} {op} {b} = {shown}", "answer": str(answer)})
    return out
