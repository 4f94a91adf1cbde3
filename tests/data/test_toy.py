"""The toy tasks: a bounded, readable gold reward that word salad cannot win; digit-wise sums with an
exact-match reward on the "a op b = c" format; disjoint train and eval splits; determinism."""

import random

import pytest

from tokalign.data import toy_math, toy_pref

PROMPT = "Tell me about the garden."
NOTE = "the garden is bright and calm . it is very kind ."  # three pleasant words, the topic, in sentences


def test_gold_reward_by_hand():
    assert toy_pref.gold_reward(PROMPT, NOTE) == 4.0  # sentiment 3 (the cap) + topic 1: the maximum
    assert (
        toy_pref.gold_reward(PROMPT, NOTE + " people say it is lovely .") == 4.0
    )  # a fourth pleasant word adds nothing
    assert toy_pref.gold_reward(PROMPT, "the garden is bright and calm but rude") == pytest.approx(
        2.0 - 1 / 3
    )  # density: 3 of 8
    assert toy_pref.gold_reward(PROMPT, "it is dull .") == -1.0
    assert toy_pref.gold_reward(PROMPT, "") == -1.5  # 3 words short of MIN_WORDS
    assert toy_pref.gold_reward(PROMPT, "the garden is big . " * 6) == pytest.approx(
        1.0 - 5 - 0
    )  # "big" repeated 5 times


@pytest.mark.parametrize(
    "salad",
    [
        "bright bright bright bright bright bright bright bright",
        "garden bright calm kind",
        "bright calm kind lovely warm clear helpful gentle fresh happy",
        "the garden is bright . the garden is bright . the garden is bright .",
        "the garden the garden the garden the garden the garden",
    ],
)
def test_word_salad_is_detected_and_scores_below_a_plain_note(salad):
    assert toy_pref.word_salad(salad) and not toy_pref.word_salad(NOTE)
    assert toy_pref.gold_reward(PROMPT, salad) < toy_pref.gold_reward(PROMPT, NOTE)


def test_gold_reward_is_bounded_whatever_the_words():
    rng = random.Random(0)
    words = sorted(toy_pref.VOCABULARY) + ["."]
    for _ in range(2000):
        response = " ".join(rng.choice(words) for _ in range(rng.randint(0, 40)))
        assert toy_pref.gold_reward(PROMPT, response) <= 4.0


def test_generated_notes_are_well_formed_and_never_salad():
    rows = toy_pref.sft_rows(500, seed=0, topics=toy_pref.TOPICS)
    assert not any(toy_pref.word_salad(r["completion"]) or toy_pref.malformed(r["completion"]) for r in rows)
    assert (
        toy_pref.malformed("")
        and toy_pref.malformed("the gard3n is calm .")
        and toy_pref.malformed("itcche the kitche")
    )


def test_preference_pairs_are_ordered_by_gold_reward():
    for row in toy_pref.preference_rows(50, seed=1):
        assert toy_pref.gold_reward(row["prompt"], row["chosen"]) > toy_pref.gold_reward(row["prompt"], row["rejected"])


def test_generation_is_deterministic_and_eval_topics_are_held_out():
    assert toy_pref.sft_rows(10, seed=3) == toy_pref.sft_rows(10, seed=3)
    train_prompts = {r["prompt"] for r in toy_pref.prompt_rows(500, seed=0)}
    assert not any(t in p for p in train_prompts for t in toy_pref.EVAL_TOPICS)


@pytest.mark.parametrize(
    "completion,reward",
    [
        ("37 + 25 = 62", 1.0),
        ("62", 1.0),  # the answer alone
        ("37 + 25 = 61", 0.0),
        ("37 + 25 =", 0.0),  # stopped before the answer: the operands do not count
        ("37 + 25 = 62 = 26", 0.0),  # the number after the last "=" is the answer
        ("no number", 0.0),
    ],
)
def test_math_exact_match_reads_the_number_after_the_last_equals_sign(completion, reward):
    assert toy_math.exact_match_reward(completion, "62") == reward


def test_math_problems_are_digit_wise_and_splits_are_disjoint():
    train, held = toy_math._problems("train"), toy_math._problems("eval")
    assert set(train).isdisjoint(held) and len(held) / (len(train) + len(held)) == pytest.approx(
        1 / toy_math.HELD_OUT, abs=0.01
    )
    for a, op, b in train + held:
        (ta, ua), (tb, ub), (tc, uc) = divmod(a, 10), divmod(b, 10), divmod(toy_math._answer(a, op, b), 10)
        assert 1 <= min(ta, tb) and max(ta, tb) <= 9 and 1 <= tc <= 9  # two-digit operands and answer
        assert (tc, uc) == ((ta + tb, ua + ub) if op == "+" else (ta - tb, ua - ub))  # no carry, no borrow
    rows = toy_math.rows(2000, seed=0)
    assert {r["prompt"] for r in rows}.isdisjoint(r["prompt"] for r in toy_math.rows(200, seed=0, split="eval"))
    assert rows == toy_math.rows(2000, seed=0)


@pytest.mark.parametrize("noise,unanswered,expected", [(0.0, 0.0, 1.0), (1.0, 0.0, 0.0), (0.0, 1.0, 0.0)])
def test_math_noise_and_unanswered_control_correctness(noise, unanswered, expected):
    rows = toy_math.rows(50, seed=0, noise=noise, unanswered=unanswered)
    acc = sum(toy_math.exact_match_reward(r["completion"], r["answer"]) for r in rows) / len(rows)
    assert acc == expected
    assert all(r["completion"].startswith(r["prompt"].removeprefix("What is ").rstrip("?") + " =") for r in rows)


@pytest.mark.parametrize(
    ("completion", "expected"),
    [
        ("37 + 25 = 62", None),
        ("37 + 25 = 72", "the tens digit is too high"),
        ("37 + 25 = 61", "the units digit is too low"),
        ("37 + 25 = 53", "the tens digit is too low and the units digit is too high"),
        ("37 + 25 =", "no number after '='"),
        ("", "no number after '='"),
        ("37 + 25 = 620", "the number is too high: the answer has two digits"),
        ("37 + 25 = 6", "the number is too low: the answer has two digits"),
    ],
)
def test_math_critique_by_hand(completion, expected):
    assert toy_math.critique("What is 37 + 25?", completion) == expected


def test_math_critique_is_none_exactly_when_correct_and_never_gives_the_answer():
    rng = random.Random(0)
    for row in toy_math.rows(300, seed=1, noise=0.5, unanswered=0.1):
        completion = row["completion"]
        if rng.random() < 0.3:  # wrong by tens as well
            completion = completion.rpartition("=")[0] + f"= {rng.randint(0, 120)}"
        text = toy_math.critique(row["prompt"], completion)
        assert (text is None) == (toy_math.exact_match_reward(completion, row["answer"]) == 1.0)
        assert text is None or row["answer"] not in text
    with pytest.raises(ValueError, match="toy_math prompt"):
        toy_math.critique("Tell me about the garden.", "12")


def test_math_hint_rows_carry_their_answer_and_revision_rows_a_faulted_attempt():
    hints = toy_math.context_rows(200, seed=3, kind="hint")
    assert hints == toy_math.context_rows(200, seed=3, kind="hint")
    for row in hints:
        question = row["prompt"].removesuffix(f" The answer is {row['answer']}.")
        assert question != row["prompt"] and toy_math.critique(question, row["completion"]) is None
    unanswered = 0
    for row in toy_math.context_rows(200, seed=3, kind="revision"):
        question, _, rest = row["prompt"].partition(" previous: ")
        attempt, _, said = rest.partition(" critique: ")
        assert row["prompt"] == toy_math.REVISION_TEMPLATE.format(prompt=question, attempt=attempt, critique=said)
        assert said == toy_math.critique(question, attempt) and said is not None  # wrong, and named so
        assert toy_math.critique(question, row["completion"]) is None  # the revision is right
        unanswered += attempt.endswith("=")
    assert 60 < unanswered < 140  # half of the attempts stop at "=", half have a wrong digit
    held_out = {toy_math._prompt(*p) for p in toy_math._problems("eval")}
    assert not {r["prompt"].partition("?")[0] + "?" for r in hints} & held_out  # the warm start never sees them
    with pytest.raises(ValueError, match="hint or revision"):
        toy_math.context_rows(1, seed=0, kind="hints")
