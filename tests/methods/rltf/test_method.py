"""method=rltf through the CLI on the tiny model: a short toy run, its knobs' checks, its experiments."""

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
    "method.num_generations=4",
    "method.max_completion_length=12",
)


@pytest.mark.slow
def test_toy_run_end_to_end_with_sd_and_fm(train):
    run_dir = train("method=rltf", "method.fm_coef=0.1", "method.sd_schedule=linear", *SMALL)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["train/steps"] == 2 and "eval/accuracy" in summary
    steps = [m for m in read_metrics(run_dir) if "train/loss" in m]
    assert len(steps) == 2
    last = steps[-1]
    assert all(k in last for k in ("train/accuracy", "train/second_turn/reward", "train/rltf/fm_nll", "train/loss/fm"))
    assert steps[0].get("train/rltf/sd_coef", 0.0) == 0.0  # the linear schedule starts at 0
    from tokalign.analysis.inspect import inspect_run

    spans = parse(inspect_run(run_dir, num_examples=1).read_text())
    assert spans and all({"data-a", "data-h"} <= set(s) for s in spans)  # GRPO's group view of the first turn


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("method.gamma=1.5", "method.gamma=1.5 is out of range: expected >= 0 and <= 1"),
        ("method.sd_coef=-0.1", "method.sd_coef=-0.1 is out of range: expected >= 0"),
        ("method.critic=nowhere:nothing", "method.critic='nowhere:nothing' is not a critic"),
        ("method.revision_template='{prompt} {attempt}'", "method.revision_template must contain {critique}"),
        ("method.num_iterations=2", "RLTF makes one update per batch"),
        ("method.scale_rewards=group", "centred without scaling"),
    ],
)
def test_a_bad_knob_is_one_line_and_exit_2(train, capsys, override, message):
    with pytest.raises(SystemExit) as err:
        train("method=rltf", "dataset=toy_math", override)
    assert err.value.code == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and message in lines[0]


def test_the_toy_critic_needs_toy_prompts_and_auto_picks_a_critic():
    from tokalign.data import toy_math
    from tokalign.methods.rltf import resolve_critic

    with pytest.raises(ConfigError, match="reads toy_math prompts"):
        compose_config("method=rltf", "dataset=math_rl", "method.critic=toy_math")
    assert resolve_critic("auto", "toy_math") is toy_math.critique
    assert resolve_critic("auto", "hub") is None  # the verdict critic
    assert resolve_critic("tokalign.data.toy_math:critique", "hub") is toy_math.critique


def test_paper_setting_and_toy_twin():
    paper = compose_config("experiment=rltf", "+arm=rltf/sd")
    OmegaConf.resolve(paper)
    m, t = paper.method, paper.trainer
    assert (m.num_generations, m.gamma, m.sd_coef, str(m.sd_schedule), str(m.sd_advantage)) == (
        8, 0.1, 0.1, "linear", "second_turn",
    )  # fmt: skip
    assert (t.learning_rate, list(t.adam_betas), paper.model.lora.r) == (2e-5, [0.9, 0.95], 32)
    assert t.per_device_batch_size * paper.launcher.num_gpus // m.num_generations == 32  # groups per step
    fm = compose_config("experiment=rltf_toy", "+arm=rltf/fm").method
    grpo = compose_config("experiment=rltf_toy", "+arm=rltf/grpo").method
    assert (fm.sd_coef, fm.fm_coef, grpo.sd_coef, grpo.fm_coef) == (0.0, 0.1, 0.0, 0.0)
    assert compose_config("experiment=rltf_toy", "+arm=baseline/grpo").method.num_generations == 8
