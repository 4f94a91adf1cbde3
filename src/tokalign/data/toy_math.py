"""A verifiable toy task: two-digit sums and differences without carries, and an exact-match reward.

"What is 37 + 25?" is answered "37 + 25 = 62". Operands are two-digit numbers whose digits add
up without a carry (or subtract without a borrow), and every answer has two digits, so each
answer digit is a one-digit fact about the two digits above it. With one token per digit (the
tiny model's tokenizer), held-out problems are new combinations of facts that every training
problem exercises: a model of ~140k parameters learns them in a few hundred warm-start steps,
where sums with carries stay out of its reach at this budget. One problem in HELD_OUT is kept
for evaluation. The reward is 1 when the number after the last "=" equals the answer, so a
completion that stops at "37 + 25 =" earns nothing for the operands it repeated.
"""

from __future__ import annotations

import random
import re

HELD_OUT = 5
_INT = re.compile(r"-?\d+")
# The contexts text-feedback methods build by default, which the tiny model's warm start teaches it to
# read: the question with its answer appended (InTRO's x⊕y) and a second turn after a critique (RLTF).
HINT_TEMPLATE = "{x} The answer is {y}."
REVISION_TEMPLATE = "{prompt} previous: {attempt} critique: {critique}"


def _digit_wise(a: int, op: str, b: int) -> bool:
    """No carry (no borrow) and a two-digit answer, for two-digit a and b."""
    (ta, ua), (tb, ub) = divmod(a, 10), divmod(b, 10)
    return ta + tb <= 9 and ua + ub <= 9 if op == "+" else ta > tb and ua >= ub


def _problems(split: str) -> list[tuple[int, str, int]]:
    """Every digit-wise (a, op, b) with two-digit a and b; one in HELD_OUT is held out for evaluation."""
    out = []
    for a in range(10, 100):
        for b in range(10, 100):
            for op in "+-":
                if not _digit_wise(a, op, b):
                    continue
                held_out = (a * 31 + b * 7 + (op == "-")) % HELD_OUT == 0
                if held_out == (split == "eval"):
                    out.append((a, op, b))
    return out


def _answer(a: int, op: str, b: int) -> int:
    return a + b if op == "+" else a - b


def _prompt(a: int, op: str, b: int) -> str:
    return f"What is {a} {op} {b}?"


def extract_answer(completion: str) -> str | None:
    """The last integer after the last "=" (the SFT format "a op b = c"); without "=", the last integer."""
    found = _INT.findall(completion.rpartition("=")[2])
    return found[-1] if found else None


_PROMPT = re.compile(r"What is (\d+) ([+-]) (\d+)\?")
_PLACES = ("tens", "units")


def _problem_of(prompt: str) -> tuple[int, str, int]:
    found = _PROMPT.search(prompt)
    if found is None:
        raise ValueError(f"not a toy_math prompt: {prompt!r}")
    return int(found[1]), found[2], int(found[3])


def critique(prompt: str, completion: str) -> str | None:
    """A deterministic critic for text-feedback methods: None when the completion is right.

    Otherwise it names what is wrong without giving the answer: each wrong digit and its direction
    ("the tens digit is too high"), a number of the wrong size ("the number is too high: the answer
    has two digits"), or "no number after '='". Every answer has two digits, so a two-digit guess
    is judged digit by digit, tens first.
    """
    expected = _answer(*_problem_of(prompt))
    found = extract_answer(completion)
    if found is None:
        return "no number after '='"
    guess = int(found)
    if guess == expected:
        return None
    if not 10 <= guess <= 99:
        direction = "high" if guess > expected else "low"
        return f"the number is too {direction}: the answer has two digits"
    wrong = [
        f"the {place} digit is too {'high' if g > e else 'low'}"
        for place, g, e in zip(_PLACES, divmod(guess, 10), divmod(expected, 10))
        if g != e
    ]
    return " and ".join(wrong)


def exact_match_reward(completion: str, answer: str) -> float:
    return 1.0 if extract_answer(completion) == str(answer).strip() else 0.0


def rows(n: int, seed: int, split: str = "train", noise: float = 0.0, unanswered: float = 0.0) -> list[dict]:
    """Prompt, completion and answer rows.

    With `noise`, that share of completions is wrong by 1-3; with `unanswered`, that share restates
    the problem and stops before the answer ("37 + 25 =").
    """
    rng = random.Random(seed)
    problems = _problems(split)
    out = []
    for _ in range(n):
        a, op, b = rng.choice(problems)
        answer = _answer(a, op, b)
        shown = answer + rng.choice((-3, -2, -1, 1, 2, 3)) if rng.random() < noise else answer
        completion = f"{a} {op} {b} =" if rng.random() < unanswered else f"{a} {op} {b} = {shown}"
        out.append({"prompt": _prompt(a, op, b), "completion": completion, "answer": str(answer)})
    return out


def _wrong_attempt(rng: random.Random, a: int, op: str, b: int) -> str:
    """A first attempt the critic faults: one that stops at "=" (half of them) or has a wrong digit."""
    if rng.random() < 0.5:
        return f"{a} {op} {b} ="
    answer = _answer(a, op, b)
    while not 10 <= (guess := answer + rng.choice((-3, -2, -1, 1, 2, 3)) * rng.choice((1, 10))) <= 99:
        pass
    return f"{a} {op} {b} = {guess}"


def context_rows(n: int, seed: int, kind: str, split: str = "train") -> list[dict]:
    """Rows whose prompt carries more than the question, each answered in full.

    kind="hint": HINT_TEMPLATE, the question followed by its answer; kind="revision":
    REVISION_TEMPLATE, the question, a wrong first attempt and the critic's reading of it. The tiny
    model's warm start holds such rows so that it reads a hint or a critique in context.
    """
    if kind not in ("hint", "revision"):
        raise ValueError(f"kind={kind!r}; expected hint or revision")
    rng = random.Random(seed)
    problems = _problems(split)
    out = []
    for _ in range(n):
        a, op, b = rng.choice(problems)
        answer, question = _answer(a, op, b), _prompt(a, op, b)
        if kind == "hint":
            prompt = HINT_TEMPLATE.format(x=question, y=answer)
        else:
            attempt = _wrong_attempt(rng, a, op, b)
            prompt = REVISION_TEMPLATE.format(prompt=question, attempt=attempt, critique=critique(question, attempt))
        out.append({"prompt": prompt, "completion": f"{a} {op} {b} = {answer}", "answer": str(answer)})
    return out
