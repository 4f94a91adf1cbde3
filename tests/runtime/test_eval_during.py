"""eval.every_steps: the final evaluation's generation metrics for the policy in training, logged as eval/*
curves, leaving training as it would have been; eval.keep=best keeps the best policy."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import compose_config
from tokalign.errors import ConfigError

PPO = (
    "method=ppo",
    "trainer.max_steps=4",
    "trainer.per_device_batch_size=4",
    "method.max_new_tokens=8",
    "trainer.logging_steps=1",
    "eval.num_prompts=8",
    "eval.during_prompts=8",
)
TIMING = ("time", "train/rollout_tokens_per_s", "train/train_tokens_per_s", "train/rollout_s", "train/update_s")


def _rows(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize(
    "overrides,message",
    [
        (("eval.keep=best", "eval.best_metric=gold_reward"), "eval.keep=best keeps the best policy"),
        (("eval.every_steps=2", "eval.keep=best"), "eval.best_metric=<a metric"),
        (("eval.every_steps=2", "launcher=deepspeed"), "which DeepSpeed shards: use launcher=ddp"),
        (("method=reward", "eval.every_steps=2"), "method=reward has its own evaluation, run at the end only"),
        (("eval.every_steps=2", "eval.during_prompts=0"), "eval.during_prompts=0 is out of range"),
    ],
)
def test_evaluation_knobs_are_checked_at_validation(overrides, message):
    with pytest.raises(ConfigError) as err:
        compose_config(*overrides)
    assert message in str(err.value)


@pytest.mark.slow
def test_ppo_curves_best_policy_and_an_unchanged_trajectory(train):
    plain = train(*PPO)
    run = train(*PPO, "eval.every_steps=2", "eval.keep=best", "eval.best_metric=gold_reward")
    strip = lambda rows: [{k: v for k, v in r.items() if k not in TIMING} for r in rows if "train/reward" in r]  # noqa: E731
    assert strip(_rows(run)) == strip(_rows(plain))  # evaluating does not change what is trained
    during = [r for r in _rows(run) if "eval/during_s" in r]
    assert [r["step"] for r in during] == [2, 4]
    assert {"eval/gold_reward", "eval/win_rate", "eval/kl_ref", "eval/best_step"} <= set(during[0])
    final = json.loads((run / "eval.json").read_text())
    for key in ("eval/gold_reward", "eval/win_rate", "eval/gold_reward_ref"):  # the same prompts and samples
        assert during[-1][key] == pytest.approx(final[key]), key
    best = json.loads((run / "best.json").read_text())
    values = {r["step"]: r["eval/gold_reward"] for r in during}
    assert best["metric"] == "eval/gold_reward" and best["value"] == max(values.values())
    assert best["step"] == min(s for s, v in values.items() if v == best["value"])
    assert (run / "best" / "config.json").is_file()


@pytest.mark.slow
def test_a_trl_method_with_lora_keeps_its_best_adapter(train):
    run = train(
        "method=dpo",
        "model.lora.enabled=true",
        "trainer.max_steps=2",
        "trainer.per_device_batch_size=4",
        "eval.every_steps=1",
        "eval.during_prompts=4",
        "eval.keep=best",
        "eval.best_metric=kl_ref",
        "eval.best_mode=min",
        "eval.at_end=false",
    )
    during = [r for r in _rows(run) if "eval/during_s" in r]
    assert [r["step"] for r in during] == [1, 2] and all(r["eval/num_prompts"] == 4 for r in during)
    best = json.loads((run / "best.json").read_text())
    assert best["value"] == min(r["eval/kl_ref"] for r in during)
    assert (run / "best" / "adapter_config.json").is_file()


def test_an_unknown_best_metric_is_refused_at_validation():
    with pytest.raises(ConfigError, match="eval.best_metric=nope is not a metric of the evaluation; one of: ") as err:
        compose_config("eval.every_steps=2", "eval.keep=best", "eval.best_metric=nope")
    assert "gold_reward" in str(err.value) and "pass@1" in str(err.value)
    compose_config("eval.every_steps=2", "eval.keep=best", "eval.best_metric=eval/win_rate")


@pytest.mark.slow
def test_a_metric_the_data_does_not_give_is_one_line_at_the_first_evaluation(tmp_path, capsys, cache_dir):
    from tests.test_bad_input import _probe

    line = _probe(
        capsys,
        "train",
        f"hydra.run.dir={tmp_path / 'run'}",
        "logger=none",
        "method=sft",
        "trainer.max_steps=1",
        "eval.every_steps=1",
        "eval.during_prompts=2",
        "eval.keep=best",
        "eval.best_metric=accuracy",  # toy_pref has no answers to be accurate on
    )
    assert "eval.best_metric=accuracy is not a metric of this run's evaluation; it has: " in line
    assert "gold_reward" in line


def test_a_method_with_its_own_loop_says_it_did_not_evaluate(monkeypatch, tmp_path, capsys, cache_dir):
    """eval.every_steps is never ignored silently: a method whose loop does not call evaluate_during says so."""
    from dataclasses import replace

    from tests.conftest import run_cli
    from tokalign.app.registry import get_method, registry

    def train(run):
        run.save_model(run.load_policy(), run.tokenizer)
        return {"train/steps": 2}

    monkeypatch.setitem(registry(), "own_loop", replace(get_method("sft"), name="own_loop", train=train))
    overrides = ("method=sft", "method.algorithm=own_loop", "eval.every_steps=1", "eval.at_end=false")
    run_cli("train", f"hydra.run.dir={tmp_path / 'run'}", "logger=none", *overrides)
    out = capsys.readouterr().out
    assert "trains in its own loop, which does not evaluate during training: eval.every_steps was not used" in out
