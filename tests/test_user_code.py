"""User code and user data get the one-line treatment config gets: a reward function that raises,
has the wrong signature or returns the wrong thing is named with the row; a non-finite reward
stops a GRPO run like a diverged PPO rollout; every data-type problem names file, line and field;
Ctrl-C stops at a step boundary with the resume line; SIGTERM during the final evaluation says
what it did; `table` reports an unreadable run and tabulates the rest; odd config values are
refused in one line."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import FINISHED, copy_run, run_cli
from tests.test_bad_input import PAIR, _jsonl, _probe
from tokalign import rewards
from tokalign.artifacts.tracking import read_metrics
from tokalign.cluster import preemption
from tokalign.errors import ConfigError, RewardError

PROMPTS, COMPLETIONS = ["p0", "p1", "p2"], ["a", "bb", "ccc"]


def fails_on_long(prompts, completions, **_):
    return [1.0 / (len(c) < 3) for c in completions]  # ZeroDivisionError on the third row


def nan_reward(prompts, completions, **_):
    return [float("nan")] * len(completions)


def _guarded(fn):
    return rewards.checked(fn, "method.reward=mod:fn")


@pytest.mark.parametrize(
    "fn,message",
    [
        (
            fails_on_long,
            "method.reward=mod:fn raised ZeroDivisionError: float division by zero on row 2 (prompt 'p2', completion 'ccc')",
        ),
        (lambda prompts, completions, **_: [1.0], "returned 1 value(s) for 3 completion(s)"),
        (lambda prompts, completions, **_: 0.5, "returned float; a reward returns a list"),
        (lambda prompts, completions, **_: ["good", "bad", "ugly"], "returned str 'good' for row 0"),
        (lambda prompts, completions, **_: [1.0, None, 2.0], "returned NoneType None for row 1"),
        (nan_reward, "returned nan for row 0 (prompt 'p0', completion 'a'); rewards must be finite numbers"),
    ],
)
def test_a_reward_that_fails_names_itself_and_the_row(fn, message):
    with pytest.raises(RewardError) as err:
        _guarded(fn)(PROMPTS, COMPLETIONS)
    assert message in str(err.value)


def test_a_reward_with_the_wrong_signature_is_refused_when_loaded():
    with pytest.raises(ConfigError, match=r"a reward is called as fn\(prompts, completions, \*\*columns\)"):
        _guarded(lambda texts: [0.0] * len(texts))
    assert _guarded(lambda prompts, completions, **_: [0.0] * len(completions))(PROMPTS, COMPLETIONS) == [0.0] * 3


GRPO = [
    "logger=none",
    "method=grpo",
    "trainer.max_steps=1",
    "trainer.per_device_batch_size=4",
    "method.num_generations=4",
    "method.max_completion_length=8",
    "dataset.num_train=16",
]


def test_a_nan_reward_stops_a_grpo_run_in_one_line(tmp_path, capsys, cache_dir):
    line = _probe(capsys, "train", f"hydra.run.dir={tmp_path / 'a'}", *GRPO, f"method.reward={__name__}:nan_reward")
    assert f"method.reward={__name__}:nan_reward returned nan for row 0" in line
    assert not (tmp_path / "a" / "model").exists()


def test_grpo_refuses_any_non_finite_reward_it_is_given(tmp_path, capsys, cache_dir, monkeypatch):
    monkeypatch.setattr(rewards, "checked", lambda fn, name, bound=None: fn)  # as a reward model's NaN arrives
    line = _probe(capsys, "train", f"hydra.run.dir={tmp_path / 'b'}", *GRPO, f"method.reward={__name__}:nan_reward")
    assert (
        "reward nan_reward is nan for completion 0 of step 1; a GRPO run does not train on a non-finite reward" in line
    )
    assert not (tmp_path / "b" / "model").exists()


def test_eval_names_the_failing_reward_and_row(finished_run, tmp_path, capsys):
    run = copy_run(finished_run, tmp_path / "run")
    line = _probe(capsys, "eval", f"run_dir={run}", f"eval.reward={__name__}:fails_on_long")
    assert f"eval.reward={__name__}:fails_on_long raised ZeroDivisionError: float division by zero on row" in line


def _data_type_probes(root: Path) -> list[tuple[str, str]]:
    chat = {"prompt": [{"content": "hi"}], "chosen": PAIR["chosen"], "rejected": PAIR["rejected"]}
    return [
        (_jsonl(root / "number.jsonl", [PAIR, {**PAIR, "chosen": 42}]), "number.jsonl:2: field 'chosen' is a number"),
        (
            _jsonl(root / "numbers.jsonl", [{**PAIR, "prompt": 7}] * 4),
            "numbers.jsonl:1: field 'prompt' is a number (7)",
        ),
        (_jsonl(root / "role.jsonl", [chat] * 4), "role.jsonl:1: field 'prompt' message 0 has no 'role'"),
        (
            _jsonl(root / "mixed.jsonl", [PAIR, PAIR, {**PAIR, "prompt": [{"role": "user", "content": "x"}]}]),
            "mixed.jsonl:3: field 'prompt' is a list, but text at",
        ),
        (
            _jsonl(root / "extra.jsonl", [{**PAIR, "meta": 1}, {**PAIR, "meta": "one"}]),
            "extra.jsonl:2: field 'meta' is text",
        ),
        (_jsonl(root / "message.jsonl", [{**PAIR, "prompt": ["hello"]}] * 4), "field 'prompt' message 0 is text"),
    ]


def test_every_data_type_problem_names_file_line_and_field(tmp_path, capsys):
    for path, message in _data_type_probes(tmp_path):
        run_dir = tmp_path / f"run-{path.stem}"
        line = _probe(capsys, "train", f"hydra.run.dir={run_dir}", "logger=none", f"dataset.path={path}")
        assert message in line, line
        assert not (run_dir / "model").exists()


def _cli(run_dir: Path, *overrides: str) -> subprocess.Popen:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[1] / "src"), os.environ.get("PYTHONPATH", "")]),
    }
    return subprocess.Popen(
        [sys.executable, "-m", "tokalign.cli", "train", f"hydra.run.dir={run_dir}", *overrides],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def _wait_for(proc: subprocess.Popen, ready, limit: float = 300) -> None:
    deadline = time.monotonic() + limit
    while not ready() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert proc.poll() is None, proc.communicate()


def test_ctrl_c_stops_at_a_step_boundary_seals_what_is_due_and_prints_the_resume_line(tmp_path, cache_dir):
    run_dir = tmp_path / "run"
    proc = _cli(
        run_dir,
        "logger=none",
        "method=sft",
        "trainer.max_steps=2000",
        "trainer.save_steps=2",
        "trainer.logging_steps=1",
        "trainer.per_device_batch_size=2",
        "dataset.num_train=64",
    )
    _wait_for(proc, lambda: any(r.get("step", 0) >= 1 for r in read_metrics(run_dir)))
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 130 and "Traceback" not in err and "KeyboardInterrupt" not in err, err
    line = [x for x in err.splitlines() if x.startswith("tokalign: error:")]
    assert len(line) == 1 and "stopped by Ctrl-C at step" in line[0], err
    assert "to continue: tokalign train logger=none method=sft" in line[0]
    assert line[0].endswith(f"hydra.run.dir={run_dir} resume=auto")
    step = int(line[0].split("at step ")[1].split(";")[0])
    sealed = sorted(p.name for p in (run_dir / "checkpoints").glob("checkpoint-*"))
    assert all((run_dir / "checkpoints" / s / "checkpoint_complete.json").exists() for s in sealed)
    if step % 2 == 0:  # the checkpoint due at the step it stopped at was written and sealed first
        assert f"checkpoint-{step}" in sealed
    assert not (run_dir / "model").exists()


def test_a_second_ctrl_c_stops_at_once():
    assert preemption.install()
    try:
        signal.raise_signal(signal.SIGINT)
        assert preemption.requests() == preemption.Request(stop=True, by_user=True)
        with pytest.raises(preemption.Interrupted, match="interrupted twice: stopped at once") as err:
            signal.raise_signal(signal.SIGINT)
        assert err.value.exit_code == 130
    finally:
        preemption._received.clear()
        preemption.uninstall()


def test_sigterm_during_the_final_evaluation_says_what_it_did(tmp_path, cache_dir):
    run_dir = tmp_path / "run"
    proc = _cli(
        run_dir, *FINISHED, "eval.num_prompts=64", "eval.batch_size=1", "eval.max_new_tokens=120", "eval.kl=true"
    )
    _wait_for(proc, lambda: (run_dir / "train.json").exists())
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 2 and "Traceback" not in err, err
    assert "stopped by SIGTERM during the final evaluation: the trained model is saved" in err
    assert (run_dir / "model").is_dir() and not (run_dir / "summary.json").exists()


def test_table_reports_an_unreadable_run_and_tabulates_the_rest(finished_run, tmp_path, capsys):
    sweep = tmp_path / "sweep"
    good = copy_run(finished_run, sweep / "good")
    binary = copy_run(finished_run, sweep / "binary")
    with (binary / "metrics.jsonl").open("ab") as f:
        f.write(b"\xff\xfe\x00garbage\n")
    (copy_run(finished_run, sweep / "list") / "summary.json").write_text("[1, 2]")
    (copy_run(finished_run, sweep / "broken") / "resolved.yaml").write_text("model: [unclosed\n")
    run_cli("table", f"runs={sweep}")
    out = capsys.readouterr().out
    assert "| sft | 1 |" in out
    assert f"`{binary}`: unreadable: metrics.jsonl:" in out and "is not UTF-8 text" in out
    assert f"`{sweep / 'list'}`: unreadable: summary.json is not a JSON object (found list)" in out
    assert f"`{sweep / 'broken'}`: unreadable:" in out and f"`{good}`" not in out


@pytest.mark.parametrize(
    "overrides,message",
    [
        (["seed=-1"], "seed=-1 is out of range: expected >= 0"),
        (["dataset.seed=-5"], "dataset.seed=-5 is out of range"),
        (["eval.keep=best"], "eval.keep=best keeps the best policy of the evaluations during training"),
        (["eval.pass_k=[]"], "eval.pass_k=[] is empty"),
        (["trainer.adam_betas=[]"], "trainer.adam_betas=[] is empty"),
        (["method=ma_ppo", "method.lengths=[]"], "method.lengths=[] is empty"),
        (["model.lora.target_modules=[]"], "model.lora.target_modules=[] is empty"),
    ],
)
def test_odd_values_are_one_line(tmp_path, capsys, overrides, message):
    assert message in _probe(capsys, "train", f"hydra.run.dir={tmp_path / 'run'}", *overrides)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "args,message",
    [
        (["num_examples=many"], "num_examples=many is not an integer"),
        (["progress=2"], "progress=2 is out of range"),
        (["trust_run_code=maybe"], "trust_run_code=maybe is not true or false"),
    ],
)
def test_inspect_arguments_are_checked(tmp_path, capsys, args, message):
    assert message in _probe(capsys, "inspect", f"run_dir={tmp_path}", *args)
