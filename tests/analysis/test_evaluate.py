"""Evaluation: pass@k over n samples, scored win rates, the eval.reward lookup; validated like train, every evaluation kept."""

from __future__ import annotations

import json

import pytest
from omegaconf import OmegaConf

from tokalign.analysis.evaluate import (
    _eval_reward,
    _per_prompt,
    _scored,
    _verifiable,
    pass_at_k,
)
from tokalign.errors import ConfigError
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
        return OmegaConf.create(
            {"eval": {"reward": reward}, "dataset": {"name": source, "path": None, "source": source}}
        )

    assert _eval_reward(cfg(None, "toy_pref")) is gold_reward and _eval_reward(cfg("task", "hub")) is None
    assert _eval_reward(cfg("tokalign.rewards.math_verify_reward", "hub")).__wrapped__ is math_verify_reward
    assert _eval_reward(cfg("math_verify", "hub")) is math_verify_reward
    assert _eval_reward(cfg("tokalign.rewards:exact_match", "hub")).__wrapped__ is exact_match
    with pytest.raises(ConfigError, match="eval.reward"):
        _eval_reward(cfg("tokalign.rewards.nope", "hub"))


@pytest.mark.parametrize(
    "overrides,message",
    [
        (["eval.num_samples=0"], "eval.num_samples=0 is out of range: expected >= 1"),
        (["eval.num_samples=2", "eval.pass_k=[1,4]"], "eval.pass_k=[1, 4] asks for pass@4 from eval.num_samples=2"),
        (["eval.temperature=-1"], "eval.temperature=-1.0 is out of range: expected >= 0"),
        (["eval.top_p=0"], "eval.top_p=0.0 is out of range"),
    ],
)
def test_eval_is_validated_like_train(tmp_path, capsys, overrides, message):
    """The validation pass `train` runs, before any model is loaded: one line, exit status 2."""
    from omegaconf import OmegaConf

    from tests.conftest import compose_config, run_cli

    (tmp_path / "resolved.yaml").write_text(OmegaConf.to_yaml(compose_config("logger=none"), resolve=True))
    with pytest.raises(SystemExit) as exit_:
        run_cli("eval", f"run_dir={tmp_path}", *overrides)
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.count("\n") == 1 and message in err, err


def _strict(text: str):
    def refuse(token):
        raise ValueError(f"{token} is not JSON")

    return json.loads(text, parse_constant=refuse)


@pytest.mark.slow
def test_a_short_run_logs_first_and_last_loss_and_every_evaluation_is_kept(train, capsys):
    """A run shorter than logging_steps: its first and last loss are logged, every file is strict JSON, the
    run's lines are in tokalign.log; each later `eval` records its settings and keeps the earlier ones."""
    from tests.conftest import run_cli
    from tokalign.artifacts.tracking import read_metrics

    run_dir = train("trainer.max_steps=2", "trainer.logging_steps=5", "eval.kl=false")
    summary = _strict((run_dir / "summary.json").read_text())
    assert summary["train/loss_first"] is not None and summary["train/loss_last"] is not None
    assert [row["step"] for row in read_metrics(run_dir) if "train/loss" in row] == [1, 2]
    for name in ("train.json", "eval.json", "attempts.json"):
        _strict((run_dir / name).read_text())
    assert "data: " in (run_dir / "tokalign.log").read_text()
    first = _strict((run_dir / "eval.json").read_text())
    assert first["settings"]["eval.num_samples"] == 1 and first["settings"]["eval.num_prompts"] == 8
    capsys.readouterr()
    run_cli("eval", f"run_dir={run_dir}", "eval.num_samples=2", "eval.kl=false", "eval.num_prompts=4")
    latest = _strict((run_dir / "eval.json").read_text())
    assert latest["settings"]["eval.num_samples"] == 2 and latest["eval/num_prompts"] == 4
    kept = sorted(_strict(p.read_text())["settings"]["eval.num_samples"] for p in (run_dir / "evals").glob("*.json"))
    assert kept == [1, 2]


def test_a_command_line_evaluation_is_logged_to_the_runs_wandb_run(tmp_path, monkeypatch):
    import sys
    import types

    from tokalign.analysis.evaluate import log_to_wandb

    logged = {}

    class Run:
        summary = types.SimpleNamespace(update=lambda row: logged.update(summary=row))

        def log(self, row):
            logged.update(row)

        def finish(self):
            logged["finished"] = True

    def init(**kwargs):
        logged["init"] = kwargs
        return Run()

    monkeypatch.setitem(
        sys.modules, "wandb", types.SimpleNamespace(init=init, Table=lambda columns, data: (columns, data))
    )
    (tmp_path / "resolved.yaml").write_text(
        OmegaConf.to_yaml(
            {
                "model": {"trust_remote_code": False},
                "method": {"name": "sft"},
                "logger": {"name": "wandb", "project": "p", "entity": None, "mode": "offline"},
            }
        )
    )
    log_to_wandb(tmp_path, {"eval/win_rate": 0.5}, ["prompt"], [["hi"]])
    assert logged == {}  # the run has no W&B run
    (tmp_path / "wandb_id.txt").write_text("abc123\n")
    log_to_wandb(tmp_path, {"eval/win_rate": 0.5}, ["prompt"], [["hi"]])
    assert logged["init"]["id"] == "abc123" and logged["init"]["resume"] == "allow"  # the same W&B run, resumed
    assert logged["eval/win_rate"] == 0.5 and logged["eval/samples"] == (["prompt"], [["hi"]])
    assert logged["summary"] == {"eval/win_rate": 0.5} and logged["finished"]
