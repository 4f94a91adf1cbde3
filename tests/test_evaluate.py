"""Evaluation arithmetic: pass@k over n samples, scored win rates, the eval.reward lookup."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from tokalign.errors import ConfigError
from tokalign.evaluate import _eval_reward, _per_prompt, _scored, _verifiable, pass_at_k
from tokalign.rewards import exact_match, gold_reward, math_verify_reward


def test_pass_at_k_over_n_samples():
    samples = [["= 4", "= 5", "= 4", "= 1"], ["= 9", "= 9", "= 9", "= 9"]]  # 2 of 4 correct, 0 of 4
    metrics, correct = _verifiable(["2+2", "3+3"], samples, ["4", "6"], exact_match, pass_k=[1, 2, 8])
    assert correct == [[1.0, 0.0, 1.0, 0.0], [0.0] * 4]
    assert metrics["eval/accuracy"] == pytest.approx(0.25) == metrics["eval/pass@1"]
    assert metrics["eval/pass@2"] == pytest.approx((1 - 1 / 6) / 2)  # 1 − C(2,2)/C(4,2) for the first prompt
    assert metrics["eval/pass@4"] == pytest.approx(0.5) and "eval/pass@8" not in metrics  # k > n is skipped
    assert pass_at_k(4, 2, 2) == pytest.approx(5 / 6)


def test_scored_win_rate_counts_ties_half():
    m = _scored("rm_score", "rm_win_rate", [[1.0, 0.0], [2.0]], [[0.0, 0.0], [3.0]])
    assert m == {"eval/rm_score": 1.0, "eval/rm_score_ref": 1.0, "eval/rm_win_rate": pytest.approx(0.5)}


def test_per_prompt_scores_in_one_call():
    calls = []

    def score(prompts, completions):
        calls.append(len(completions))
        return [float(len(c)) for c in completions]

    assert _per_prompt(score, ["a", "b"], [["x", "yy"], ["zzz"]]) == [[1.0, 2.0], [3.0]] and calls == [3]


def test_eval_reward_names_a_function_or_falls_back_to_the_task():
    def cfg(reward, source):
        return OmegaConf.create({"eval": {"reward": reward}, "dataset": {"name": source, "path": None, "source": source}})

    assert _eval_reward(cfg(None, "toy_pref")) is gold_reward and _eval_reward(cfg("task", "hub")) is None
    assert _eval_reward(cfg("tokalign.rewards.math_verify_reward", "hub")).__wrapped__ is math_verify_reward
    assert _eval_reward(cfg("math_verify", "hub")) is math_verify_reward
    assert _eval_reward(cfg("tokalign.rewards:exact_match", "hub")).__wrapped__ is exact_match
    with pytest.raises(ConfigError, match="eval.reward"):
        _eval_reward(cfg("tokalign.rewards.nope", "hub"))
