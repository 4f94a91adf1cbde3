"""One reward spelling for PPO, GRPO, evaluation and on-policy pairs; the old spellings still work, with a warning."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from tokalign import rewards
from tokalign.errors import ConfigError

TOY_MATH = OmegaConf.create({"name": "toy_math", "path": None, "source": "toy_math"})
HUB = OmegaConf.create({"name": "my_set", "path": None, "source": "hub"})


def scaled_reward(prompts, completions, scale=1.0, **_):
    return [scale * len(c[-1]["content"]) for c in completions]


def test_names_functions_and_weighted_lists():
    assert rewards.functions("task", TOY_MATH, "r") == ([rewards.exact_match], [1.0])
    assert rewards.functions("gold", TOY_MATH, "r")[0] == [rewards.gold_reward]
    funcs, weights = rewards.functions(
        ["exact_match", {"reward": f"{__name__}:scaled_reward", "weight": 0.5, "scale": 3.0}], TOY_MATH, "r"
    )
    assert funcs[0] is rewards.exact_match and weights == [1.0, 0.5]
    assert funcs[1](["p"], [[{"content": "ab"}]]) == [6.0] and funcs[1].__name__ == "scaled_reward"
    combined = rewards.reward_function(["gold", {"reward": f"{__name__}.scaled_reward", "weight": 2.0}], TOY_MATH, "r")
    text = "the lake is calm"
    expected = rewards.gold_reward(["What about the lake?"], [text])[0] + 2.0 * len(text)
    assert combined(["What about the lake?"], [[{"content": text}]]) == [expected]


@pytest.mark.parametrize(
    "spec,message",
    [
        ("gold_rewrd", "is not a reward"),
        ("model:", "is not a reward"),
        ([{"weight": 1.0}], "is not a reward"),
    ],
)
def test_misspellings_are_caught_without_importing_anything(spec, message):
    with pytest.raises(ConfigError, match=message):
        rewards.parse(spec, "method.reward")


def test_task_reward_of_a_dataset_without_one_says_what_to_write():
    with pytest.raises(ConfigError, match="has no built-in reward: name one"):
        rewards.functions("task", HUB, "method.reward")


def test_unimportable_function_is_a_config_error():
    with pytest.raises(ConfigError, match="cannot import"):
        rewards.functions("no_such_module:fn", TOY_MATH, "method.reward")


def test_earlier_spellings_are_translated_with_a_warning(tmp_path):
    grpo = OmegaConf.create(
        {"reward": "task", "rewards": [{"_target_": "tokalign.rewards.exact_match", "weight": 2.0}]}
    )
    with pytest.warns(FutureWarning, match="method.rewards"):
        spec = rewards.configured(grpo, "method.reward")
    fns, weights = rewards.functions(spec, TOY_MATH, "method.reward")
    assert [f.__wrapped__ for f in fns] == [rewards.exact_match] and weights == [
        2.0
    ]  # imported: called through a guard
    model = tmp_path / "rm"
    (model / "model").mkdir(parents=True)
    (model / "model" / "config.json").write_text("{}")
    ppo = OmegaConf.create({"reward": "model", "reward_model": str(model)})
    with pytest.warns(FutureWarning, match="method.reward_model"):
        assert rewards.configured(ppo, "method.reward") == f"model:{model}"
    assert rewards.reward_model_path(f"model:{model}") == str(model / "model")
    with pytest.warns(FutureWarning, match="eval.reward_model"):
        assert rewards.extra_specs(OmegaConf.create({"extra_rewards": [], "reward_model": str(model)})) == [
            f"model:{model}"
        ]


def test_verifiable_rewards_are_known():
    assert rewards.is_verifiable("task", TOY_MATH) and rewards.is_verifiable("math_verify", HUB)
    assert not rewards.is_verifiable("gold", TOY_MATH) and not rewards.is_verifiable(["exact_match", "gold"], TOY_MATH)
