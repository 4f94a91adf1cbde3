"""method=intro through the CLI on the tiny model: a short toy run, its knobs' checks, its experiments."""

import json

import pytest
from omegaconf import OmegaConf

from tests.conftest import compose_config
from tests.html_spans import parse
from tokalign.artifacts.tracking import read_metrics
from tokalign.errors import ConfigError

SMALL = (
    "dataset=toy_math",
    "trainer.max_steps=2",
    "trainer.logging_steps=1",
    "trainer.per_device_batch_size=8",
    "method.max_completion_length=12",
)


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["sampled", "expected"])
def test_toy_run_end_to_end(train, mode):
    run_dir = train("method=intro", f"method.mode={mode}", *SMALL)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["train/steps"] == 2 and "eval/accuracy" in summary and "train/completion_length" in summary
    steps = [m for m in read_metrics(run_dir) if "train/loss" in m]
    assert len(steps) == 2
    assert all(k in steps[-1] for k in ("train/intro/w_mean", "train/intro/clip_frac", "train/intro/kept_rows"))
    if mode == "sampled":
        from tokalign.analysis.inspect import inspect_run

        spans = parse(inspect_run(run_dir, num_examples=1).read_text())
        assert spans and all({"data-w", "data-log_w"} <= set(s) for s in spans)
        assert all(0 <= float(s["data-w"]) <= 200 for s in spans)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("method.num_candidates=0", "method.num_candidates=0 is out of range: expected >= 1"),
        ("method.w_max=0", "method.w_max=0.0 is out of range: expected > 0"),
        ("method.mode=exact", "method.mode"),
        ("method.posterior_template='{x} is it?'", "method.posterior_template must contain {y}"),
        ("method.num_iterations=2", "InTRO makes one update per batch"),
    ],
)
def test_a_bad_knob_is_one_line_and_exit_2(train, capsys, override, message):
    with pytest.raises(SystemExit) as err:
        train("method=intro", override)
    assert err.value.code == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and message in lines[0]


def test_checks_refuse_a_template_without_the_question():
    with pytest.raises(ConfigError, match=r"must contain \{x\}"):
        compose_config("method=intro", "method.posterior_template='The answer is {y}.'")


def test_paper_setting_and_toy_twin():
    paper = compose_config("experiment=intro", "+arm=intro/n5")
    OmegaConf.resolve(paper)
    m, t = paper.method, paper.trainer
    assert (m.num_generations, m.num_candidates, m.w_max, t.learning_rate) == (4, 5, 200.0, 5e-7)
    assert t.per_device_batch_size * t.gradient_accumulation_steps * paper.launcher.num_gpus // 4 == 128
    assert (paper.eval.temperature, paper.eval.top_p) == (0.6, 0.95)
    raft = compose_config("experiment=intro_toy", "+arm=intro/raft").method
    assert (raft.correction, raft.num_candidates) == (False, 1)
    assert [compose_config("experiment=intro_toy", f"+arm=intro/n{n}").method.num_candidates for n in (1, 20)] == [
        1,
        20,
    ]
    assert compose_config("experiment=intro_toy", "+arm=baseline/grpo").method.num_generations == 4
