"""method=aligndistil end to end on the tiny model (teachers built on demand), on-policy, its token
view, its checks and its paper experiment."""

import json

import pytest
from omegaconf import OmegaConf

from tests.conftest import compose_config, sweep_params
from tests.html_spans import parse
from tokalign.artifacts.tracking import read_metrics
from tokalign.errors import ConfigError

SMALL = ("trainer.max_steps=4", "trainer.logging_steps=2", "dataset.num_train=48", "trainer.per_device_batch_size=8")


@pytest.mark.slow
def test_toy_run_builds_both_teachers_once_and_renders_alpha_and_beta(train, cache_dir):
    from tokalign.analysis.inspect import inspect_run
    from tokalign.bases.dpo.dpo_models import cached_path

    run_dir = train("method=aligndistil", *SMALL)
    logged = [m for m in read_metrics(run_dir) if "train/loss" in m]
    assert logged and all(
        f"train/aligndistil/{k}" in logged[-1]
        for k in ("alpha_mean", "alpha_min", "alpha_max", "beta_mean", "beta_min", "beta_max", "kl", "response_length")
    )
    assert json.loads((run_dir / "eval.json").read_text())["eval/num_prompts"] == 8
    cfg = OmegaConf.load(run_dir / "resolved.yaml")
    teachers = [cached_path(cfg, beta=0.1, reverse=reverse) for reverse in (False, True)]
    assert teachers[0] != teachers[1] and all((t / "config.json").exists() for t in teachers)

    spans = parse(inspect_run(run_dir, num_examples=1).read_text())
    assert len(spans) > 2 and all({"data-alpha", "data-beta", "data-kl"} <= set(s) for s in spans)
    assert all(float(s["data-alpha"]) >= 1e-3 for s in spans)  # α_t = r‖π_dpo − π_rdpo‖₁ + ε
    assert all(float(s["data-beta"]) == pytest.approx(0.1 / float(s["data-alpha"]), rel=1e-3) for s in spans)

    on_policy = train(
        "method=aligndistil",
        "method.on_policy=true",
        "method.max_new_tokens=8",
        "method.variant=adaptive",
        "eval.at_end=false",
        *SMALL,
    )
    lengths = [m["train/aligndistil/response_length"] for m in read_metrics(on_policy) if "train/loss" in m]
    assert lengths and all(1 <= n <= 8 for n in lengths)  # the policy's own samples, not the chosen responses


def test_checks_refuse_knobs_the_variant_does_not_use():
    with pytest.raises(ConfigError, match="kl_coef=0.2 is unused by variant=aligndistil"):
        compose_config("method=aligndistil", "method.kl_coef=0.2")
    with pytest.raises(ConfigError, match="tvd_scale=5.0 is unused by variant=contrast"):
        compose_config("method=aligndistil", "method.variant=contrast", "method.tvd_scale=5")
    with pytest.raises(ConfigError, match="reverse_dpo_model is unused by variant=basic"):
        compose_config("method=aligndistil", "method.variant=basic", "method.reverse_dpo_model=/x")
    with pytest.raises(ConfigError, match="max_new_tokens is for method.on_policy=true"):
        compose_config("method=aligndistil", "method.max_new_tokens=8")


def test_tvd_scale_defaults_follow_their_scripts():
    from tokalign.methods.aligndistil import tvd_scale

    assert tvd_scale(compose_config("method=aligndistil").method) == 10.0
    assert tvd_scale(compose_config("method=aligndistil", "method.on_policy=true").method) == 15.0
    assert tvd_scale(compose_config("method=aligndistil", "method.tvd_scale=3").method) == 3.0


@pytest.mark.parametrize("experiment", ["aligndistil", "aligndistil_toy"])
def test_every_row_of_the_paper_sweep_and_its_toy_twin_composes(experiment):
    params = sweep_params(experiment)
    arms, seeds = params["+arm"], params["seed"]
    assert arms == sweep_params("aligndistil")["+arm"] and len(seeds) == 3
    variants = {}
    for arm in arms:
        cfg = compose_config(f"experiment={experiment}", f"+arm={arm}")
        OmegaConf.resolve(cfg)
        assert (cfg.model.source == "tiny") == experiment.endswith("_toy")
        variants[arm] = "dpo" if cfg.method.name == "dpo" else (str(cfg.method.variant), cfg.method.on_policy)
    assert variants == {
        "baseline/dpo": "dpo",
        "aligndistil/off": ("aligndistil", False),
        "aligndistil/on": ("aligndistil", True),
        "aligndistil/contrast": ("contrast", False),
        "aligndistil/adaptive": ("adaptive", False),
    }
    full = compose_config("experiment=aligndistil", "+arm=aligndistil/off")
    assert (full.model.hub_id, full.method.beta0, full.trainer.learning_rate, full.trainer.max_length) == (
        "Qwen/Qwen2.5-1.5B-Instruct",
        0.1,
        1e-6,
        2048,
    )
    assert full.trainer.per_device_batch_size * full.trainer.gradient_accumulation_steps * full.launcher.num_gpus == 128
