"""Every paper experiment composes with every row of its sweep; each has a *_toy twin on the tiny model."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from tests.conftest import compose_config, paper_overrides, sweep_params

PAPERS = {"tgdpo": "tgdpo", "ma_rlhf": "ma_ppo", "d3s": "d3s_grpo", "rto": "rto", "treg": "treg", "aligndistil": "aligndistil"}


def _compose(*overrides: str):
    cfg = compose_config(*overrides, *paper_overrides(*overrides))
    OmegaConf.resolve(cfg)
    return cfg


@pytest.mark.parametrize("experiment", [e for p in PAPERS for e in (p, f"{p}_toy")])
def test_every_row_of_the_sweep_composes(experiment):
    params = sweep_params(experiment)
    assert set(params) == {"+arm", "seed"} and len(params["seed"]) >= 3
    for arm in params["+arm"]:
        cfg = _compose(f"experiment={experiment}", f"+arm={arm}")
        assert cfg.method.name in ("dpo", "tgdpo", "ppo", "ma_ppo", "grpo", "d3s_grpo", "pods", "rto", "treg", "aligndistil") and f"-s{cfg.seed}" in cfg.run_name


@pytest.mark.parametrize("paper,method", PAPERS.items())
def test_paper_setting_and_its_toy_twin(paper, method):
    full, toy = _compose(f"experiment={paper}"), _compose(f"experiment={paper}_toy")
    assert full.method.name == toy.method.name == method
    assert full.model.source == "hub" and toy.model.source == "tiny"
    assert str(toy.logger.name) == "none" and toy.launcher.name == "local"
    assert sweep_params(paper)["+arm"] == sweep_params(f"{paper}_toy")["+arm"]


def test_paper_hyperparameters():
    tg = _compose("experiment=tgdpo", "+arm=tgdpo_a2")
    assert (tg.model.hub_id, tg.method.beta, tg.method.alpha, tg.trainer.learning_rate) == (
        "meta-llama/Meta-Llama-3-8B-Instruct", 0.1, 2.0, 7e-7)
    assert tg.trainer.per_device_batch_size * tg.trainer.gradient_accumulation_steps * tg.launcher.num_gpus == 128
    ma = _compose("experiment=ma_rlhf", "+arm=ma_rlhf_fixed5")
    assert (ma.method.n, ma.method.gamma, ma.method.lam, ma.method.kl_coef, ma.method.score_clip) == (5, 1.0, 0.95, 0.05, 2.5)
    assert _compose("experiment=ma_rlhf", "+arm=ma_rlhf_ppo").method.n == 1
    d3s = _compose("experiment=d3s", "+arm=d3s_token")
    assert d3s.method.n_init == d3s.method.n_final == d3s.method.num_generations
    assert d3s.eval.num_samples == 32 and list(d3s.eval.pass_k) == [1, 8]


def test_the_small_real_model_tier_fits_two_cores():
    """experiment=grpo_smollm2: GRPO on SmolLM2-135M and toy arithmetic, sized for 2 CPU cores."""
    cfg = compose_config("experiment=grpo_smollm2")
    assert (cfg.method.name, cfg.model.source, cfg.dataset.name) == ("grpo", "smollm2", "toy_math")
    assert cfg.trainer.per_device_batch_size % cfg.method.num_generations == 0
    assert cfg.eval.max_new_tokens == cfg.method.max_completion_length == 64
    assert max(cfg.eval.pass_k) <= cfg.eval.num_samples
