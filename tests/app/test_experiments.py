"""conf/ by paper: each paper has an experiment, its *_toy twin on the tiny model and a folder of
arms (conf/arm/<paper>/), shared baselines in conf/arm/baseline/; every row of a sweep composes
into a registered method; every arm is used, names its runs one way, and every multirun resumes."""

from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from tests.conftest import compose_config, paper_overrides, sweep_params
from tokalign.app.registry import registry
from tokalign.cli import conf_dir

CONF = Path(conf_dir())
PAPERS = sorted(p.stem.removesuffix("_toy") for p in (CONF / "experiment").glob("*_toy.yaml"))
ARMS = sorted(str(p.relative_to(CONF / "arm").with_suffix("")) for p in (CONF / "arm").rglob("*.yaml"))


def _compose(*overrides: str):
    cfg = compose_config(*overrides, *paper_overrides(*overrides))
    OmegaConf.resolve(cfg)
    return cfg


def test_every_paper_has_its_setting_its_twin_and_its_arms():
    assert PAPERS == ["aligndistil", "coh", "d3s", "intro", "ma_rlhf", "rltf", "rto", "text2grad", "tgdpo", "treg"]
    folders = {p.name for p in (CONF / "arm").iterdir()}
    assert folders == {*PAPERS, "baseline"}
    assert all((CONF / "experiment" / f"{paper}.yaml").exists() for paper in PAPERS)


@pytest.mark.parametrize("experiment", [e for p in PAPERS for e in (p, f"{p}_toy")])
def test_every_row_of_the_sweep_composes(experiment):
    params = sweep_params(experiment)
    assert set(params) == {"+arm", "seed"} and len(params["seed"]) >= 3
    paper = experiment.removesuffix("_toy")
    assert all(arm.split("/")[0] in (paper, "baseline") for arm in params["+arm"])
    for arm in params["+arm"]:
        cfg = _compose(f"experiment={experiment}", f"+arm={arm}")
        assert cfg.method.algorithm in registry()
        assert cfg.run_name == f"{arm.replace('/', '_')}-{cfg.model.name}-{cfg.dataset.name}-s{cfg.seed}"
    assert (
        OmegaConf.load(CONF / "experiment" / f"{experiment}.yaml").resume == "auto"
    )  # a multirun continues its points


@pytest.mark.parametrize("paper", PAPERS)
def test_paper_setting_and_its_toy_twin(paper):
    full, toy = _compose(f"experiment={paper}"), _compose(f"experiment={paper}_toy")
    assert full.method.name == toy.method.name
    assert full.model.source == "hub" and toy.model.source == "tiny"
    assert str(toy.logger.name) == "none" and toy.launcher.name == "local"
    assert sweep_params(paper)["+arm"] == sweep_params(f"{paper}_toy")["+arm"]
    raw = OmegaConf.load(CONF / "experiment" / f"{paper}.yaml")
    assert "model" not in raw and "model" in str(raw.defaults)  # a preset of conf/model, never written inline


def test_every_arm_is_a_row_of_some_paper_and_says_something_of_its_own():
    used = {arm for p in PAPERS for arm in sweep_params(p)["+arm"]}
    assert used == set(ARMS)
    bodies = []
    for arm in ARMS:
        body = OmegaConf.to_container(OmegaConf.load(CONF / "arm" / f"{arm}.yaml"))
        body.pop("run_name")
        bodies.append(OmegaConf.to_yaml(body))
    assert len(set(bodies)) == len(bodies)  # no two arms differ only in their name


def test_paper_hyperparameters():
    tg = _compose("experiment=tgdpo", "+arm=tgdpo/a2")
    assert (tg.model.hub_id, tg.method.beta, tg.method.alpha, tg.trainer.learning_rate) == (
        "meta-llama/Meta-Llama-3-8B-Instruct",
        0.1,
        2.0,
        7e-7,
    )
    assert tg.trainer.per_device_batch_size * tg.trainer.gradient_accumulation_steps * tg.launcher.num_gpus == 128
    ma = _compose("experiment=ma_rlhf", "+arm=ma_rlhf/fixed5")
    assert (ma.method.n, ma.method.gamma, ma.method.lam, ma.method.kl_coef, ma.method.score_clip) == (
        5,
        1.0,
        0.95,
        0.05,
        2.5,
    )
    assert _compose("experiment=ma_rlhf", "+arm=baseline/ppo").method.n == 1
    d3s = _compose("experiment=d3s", "+arm=d3s/token")
    assert d3s.method.n_init == d3s.method.n_final == d3s.method.num_generations
    assert d3s.eval.num_samples == 32 and list(d3s.eval.pass_k) == [1, 8]


def test_the_dpo_models_a_sweep_reads_come_from_one_pair_of_variables(monkeypatch):
    monkeypatch.setenv("DPO_MODEL", "/m/dpo")
    monkeypatch.setenv("REVERSE_DPO_MODEL", "/m/reverse")
    assert _compose("experiment=tgdpo", "+arm=tgdpo/a1").method.dpo_model == "/m/dpo"
    ad = _compose("experiment=aligndistil", "+arm=aligndistil/off").method
    assert (ad.dpo_model, ad.reverse_dpo_model) == ("/m/dpo", "/m/reverse")


def test_the_small_real_model_tier_fits_two_cores():
    """experiment=grpo_smollm2: GRPO on SmolLM2-135M and toy arithmetic, sized for 2 CPU cores."""
    cfg = compose_config("experiment=grpo_smollm2")
    assert (cfg.method.name, cfg.model.source, cfg.dataset.name) == ("grpo", "smollm2", "toy_math")
    assert cfg.trainer.per_device_batch_size % cfg.method.num_generations == 0
    assert cfg.eval.max_new_tokens == cfg.method.max_completion_length == 64
    assert max(cfg.eval.pass_k) <= cfg.eval.num_samples
