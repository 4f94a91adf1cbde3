"""experiment=rto (the released script's setting) and its toy twin compose with every row of their sweep."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from tests.conftest import compose_config
from tokalign.cli import conf_dir


def _compose(*overrides: str):
    cfg = compose_config(*overrides)
    OmegaConf.resolve(cfg)
    return cfg


def _arms(experiment: str) -> list[str]:
    params = OmegaConf.load(f"{conf_dir()}/experiment/{experiment}.yaml").hydra.sweeper.params
    assert len(str(params.seed).split(",")) >= 3
    return str(params["+arm"]).split(",")


@pytest.mark.parametrize("experiment", ["rto", "rto_toy"])
def test_both_rows_share_every_ppo_knob(experiment, tmp_path):
    assert _arms(experiment) == ["rto/sparse", "rto/dense"]
    reward = [f"method.reward=model:{tmp_path}"] if experiment == "rto" else []
    if reward:
        (tmp_path / "config.json").write_text("{}")
    sparse, dense = (_compose(f"experiment={experiment}", f"+arm={arm}", *reward).method for arm in _arms(experiment))
    assert (sparse.name, sparse.dpo_scale, dense.name, dense.dpo_scale) == ("rto", 0.0, "rto", 0.05)
    assert {k: v for k, v in sparse.items() if k != "dpo_scale"} == {k: v for k, v in dense.items() if k != "dpo_scale"}


def test_the_released_scripts_numbers(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    cfg = _compose("experiment=rto", "+arm=rto/dense", f"method.reward=model:{tmp_path}")
    m, t = cfg.method, cfg.trainer
    assert (cfg.model.hub_id, cfg.dataset.hub_id, cfg.dataset.columns.prompt) == (
        "OpenRLHF/Llama-3-8b-sft-mixture",
        "weqweasdas/ultra_train",
        "context_messages",
    )
    assert (m.dpo_scale, m.dpo_clip, m.kl_coef, m.score_clip, t.learning_rate, m.critic_learning_rate) == (
        0.05,
        0.05,
        0.01,
        10.0,
        5e-7,
        9e-6,
    )
    per_step = t.per_device_batch_size * t.gradient_accumulation_steps * cfg.launcher.num_gpus
    assert (per_step, per_step * m.num_mini_batches, m.max_new_tokens) == (128, 1024, 1024)
    toy = _compose("experiment=rto_toy", "+arm=rto/dense")
    assert toy.model.source == "tiny" and toy.launcher.name == "local" and not toy.method.dpo_model
    assert cfg.method.dpo_model == "RTO-RL/Llama3-8B-DPO"
