"""method=treg end to end on the tiny model, its token view, its checks and its paper experiment."""

import json

import pytest
from omegaconf import OmegaConf

from tests.conftest import compose_config, sweep_params
from tests.html_spans import parse
from tokalign.artifacts.tracking import read_metrics
from tokalign.errors import ConfigError

ALPHAS = {"treg/a01": 0.1, "treg/a025": 0.25, "treg/a05": 0.5}
SMALL = ("trainer.max_steps=4", "trainer.logging_steps=2", "dataset.num_train=48", "trainer.per_device_batch_size=8")


@pytest.mark.slow
def test_toy_run_logs_both_loss_parts_and_renders_its_token_rewards(train, cache_dir):
    from tokalign.analysis.inspect import inspect_run

    run_dir = train("method=treg", "method.alpha=0.5", *SMALL)
    logged = [m for m in read_metrics(run_dir) if "train/loss" in m]
    assert logged and all(
        k in logged[-1]
        for k in (
            "train/loss/dpo",
            "train/loss/reg",
            "train/treg/token_reward",
            "train/treg/token_reward_positive_frac",
            "train/treg/weight",
            "train/rewards/margins",
            "train/rewards/accuracies",
        )
    )
    assert json.loads((run_dir / "eval.json").read_text())["eval/num_prompts"] == 8
    assert any((cache_dir / "token_logps").iterdir())

    spans = parse(inspect_run(run_dir, num_examples=1).read_text())
    assert len(spans) > 2 and all({"data-r_hat", "data-delta"} <= set(s) for s in spans)
    assert all(-0.5 < float(s["data-r_hat"]) < 0.5 for s in spans) and any(float(s["data-r_hat"]) != 0 for s in spans)


def test_checks_refuse_unusable_prompts_and_warn_at_alpha_two():
    with pytest.raises(ConfigError, match="must contain"):
        compose_config("method=treg", "method.better_prompt=Be nice.")
    with pytest.raises(ConfigError, match="every token reward"):
        compose_config(
            "method=treg", "method.worse_prompt='{prompt} Be nice.'", "method.better_prompt='{prompt} Be nice.'"
        )
    with pytest.warns(UserWarning, match="alpha=2.0 >= 2"):
        compose_config("method=treg", "method.alpha=2.0")


@pytest.mark.parametrize("experiment", ["treg", "treg_toy"])
def test_every_row_of_the_paper_sweep_and_its_toy_twin_composes(experiment):
    params = sweep_params(experiment)
    arms, seeds = params["+arm"], params["seed"]
    assert arms == sweep_params("treg")["+arm"] and len(seeds) == 3
    names = {}
    for arm in arms:
        cfg = compose_config(f"experiment={experiment}", f"+arm={arm}")
        OmegaConf.resolve(cfg)
        names[arm] = cfg.method.name
        assert (cfg.model.source == "tiny") == experiment.endswith("_toy")
        if arm in ALPHAS:
            assert cfg.method.alpha == ALPHAS[arm]
    assert names == {"baseline/dpo": "dpo", **{a: "treg" for a in arms if a != "baseline/dpo"}}
    full = compose_config("experiment=treg", "+arm=treg/static")
    assert (full.method.beta, full.trainer.learning_rate, full.launcher.zero_stage, str(full.method.weighting)) == (
        0.01,
        3e-7,
        3,
        "static",
    )
    assert full.trainer.per_device_batch_size * full.trainer.gradient_accumulation_steps * full.launcher.num_gpus == 128
