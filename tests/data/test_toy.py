"""The toy tasks: readable gold reward, well-ordered pairs, held-out eval, exact-match reward."""

import pytest

from tokalign.data import toy_math, toy_pref


def test_gold_reward_by_hand():
    prompt = "Tell me about the garden."
    # bright +1, calm +1, rude -1, topic mentioned +1, 8 words (no length penalty)
    assert toy_pref.gold_reward(prompt, "the garden is bright and calm but rude") == 2.0
    long = " ".join(["ok"] * 20)  # 20 words: 4 over the target of 16
    assert toy_pref.gold_reward(prompt, long) == -1.0


def test_preference_pairs_are_ordered_by_gold_reward():
    for row in toy_pref.preference_rows(50, seed=1):
        assert toy_pref.gold_reward(row["prompt"], row["chosen"]) > toy_pref.gold_reward(row["prompt"], row["rejected"])


def test_generation_is_deterministic_and_eval_topics_are_held_out():
    assert toy_pref.sft_rows(10, seed=3) == toy_pref.sft_rows(10, seed=3)
    train_prompts = {r["prompt"] for r in toy_pref.prompt_rows(500, seed=0)}
    assert not any(t in p for p in train_prompts for t in toy_pref.EVAL_TOPICS)


def test_math_exact_match_and_held_out_problems():
    assert toy_math.exact_match_reward("3 + 4 = 7", "7") == 1.0
    assert toy_math.exact_match_reward("3 + 4 = 8", "7") == 0.0
    assert toy_math.exact_match_reward("no number", "7") == 0.0
    train = {r["prompt"] for r in toy_math.rows(2000, seed=0)}
    held = {r["prompt"] for r in toy_math.rows(200, seed=0, split="eval")}
    assert train.isdisjoint(held)


@pytest.mark.parametrize("noise,expected", [(0.0, 1.0), (1.0, 0.0)])
def test_math_noise_controls_correctness(noise, expected):
    rows = toy_math.rows(50, seed=0, noise=noise)
    acc = sum(toy_math.exact_match_reward(r["completion"], r["answer"]) for r in rows) / len(rows)
    assert acc == expected
