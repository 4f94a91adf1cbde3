"""Every option of every group composes and validates offline; presets hold only what differs from
the dataclasses; bad configs fail before anything is built, naming the key."""

from __future__ import annotations

import dataclasses

import pytest
from hydra import initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

from tests.conftest import compose_config as _compose
from tests.conftest import paper_overrides
from tokalign.app.compose import register, validate
from tokalign.app.registry import registry
from tokalign.cli import GROUPS, conf_dir
from tokalign.config import LAUNCHERS, RunConfig
from tokalign.errors import ConfigError


def _options(group: str) -> list[str]:
    register()
    with initialize_config_dir(config_dir=conf_dir(), version_base="1.3"):
        return GlobalHydra.instance().config_loader().get_group_options(group)


@pytest.mark.parametrize(
    "group,option",
    [(g, o) for g in ("method", "model", "dataset", "logger", "launcher", "experiment") for o in _options(g)],
)
def test_every_option_composes_and_validates(group, option):
    cfg = _compose(f"{group}={option}", *paper_overrides(f"{group}={option}"))
    OmegaConf.resolve(cfg)
    assert cfg.method is not None


def _plain(node) -> dict:
    """Values as written, interpolations (`${model.max_new_tokens}`) unresolved."""
    return OmegaConf.to_container(node, resolve=False, enum_to_str=True)


@pytest.mark.parametrize("option", _options("method"))
def test_a_method_option_is_its_dataclass_defaults_plus_the_presets_own_lines(option):
    cfg = _compose(f"method={option}")
    method = registry()[cfg.method.algorithm]
    expected = _plain(OmegaConf.structured(method.config))
    preset = conf_dir() + f"/method/{option}.yaml"
    if option not in registry():  # a preset file: defaults of its base, then its own lines
        own = OmegaConf.to_container(OmegaConf.load(preset))
        own.pop("defaults")
        expected.update(own)
    assert _plain(cfg.method) == expected


def test_trainer_eval_and_launcher_defaults_come_from_the_dataclasses():
    cfg = _compose()
    assert _plain(cfg.trainer) == _plain(OmegaConf.structured(RunConfig().trainer))
    assert _plain(cfg.eval) == _plain(OmegaConf.structured(RunConfig().eval))
    for name, schema in LAUNCHERS.items():
        launched = _compose(f"launcher={name}").launcher
        assert set(launched) == {f.name for f in dataclasses.fields(schema)}


def test_help_describes_every_group():
    groups = {g for g in GROUPS if "/" not in g}
    register()
    with initialize_config_dir(config_dir=conf_dir(), version_base="1.3"):
        loader = GlobalHydra.instance().config_loader()
        assert groups == {g for g in loader.list_groups("") if g != "hydra"}


def test_defaults_are_the_embedded_toy_setup():
    cfg = _compose()
    assert (cfg.method.name, cfg.model.source, cfg.dataset.source) == ("dpo", "tiny", "toy_pref")
    assert cfg.model.trust_remote_code is False


def test_presets_run_under_their_own_name():
    for preset, algorithm in (("pods", "d3s_grpo"), ("ma_ppo", "ppo")):
        cfg = _compose(f"method={preset}")
        OmegaConf.resolve(cfg)
        assert (cfg.method.name, cfg.method.algorithm) == (preset, algorithm) and cfg.run_name.startswith(preset)


def test_overrides_reach_the_typed_config():
    cfg = _compose(
        "method.beta=0.05",
        "trainer.max_steps=20",
        "seed=3",
        "model.path=/some/dir",
        "dataset.path=/my/pairs.jsonl",
        "dataset.columns.prompt=question",
    )
    assert (cfg.method.beta, cfg.trainer.max_steps, cfg.seed, cfg.model.path) == (0.05, 20, 3, "/some/dir")
    assert (cfg.dataset.path, cfg.dataset.columns.prompt, cfg.dataset.columns.chosen) == (
        "/my/pairs.jsonl",
        "question",
        "chosen",
    )


def test_hub_presets_name_real_checkpoints():
    cfg = _compose("model=llama3_8b_instruct")
    assert cfg.model.hub_id == "meta-llama/Meta-Llama-3-8B-Instruct" and cfg.model.source == "hub"


def test_unknown_key_in_a_method_config_is_rejected():
    cfg = OmegaConf.create(OmegaConf.to_container(_compose(), enum_to_str=True))
    cfg.method.betta = 0.3
    with pytest.raises(ConfigError, match="betta"):
        validate(cfg)


def test_run_dirs_of_earlier_releases_name_their_method_by_name():
    cfg = OmegaConf.create(OmegaConf.to_container(_compose("method=sft"), enum_to_str=True))
    del cfg.method.algorithm
    assert validate(cfg).method.algorithm == "sft"


def test_bad_value_is_rejected():
    with pytest.raises(Exception, match="precision"):
        _compose("trainer.precision=fp8")


def test_generation_lengths_and_learning_rate_follow_the_models_preset():
    tiny, smol = _compose("method=grpo"), _compose("method=grpo", "model=smollm2_135m")
    OmegaConf.resolve(tiny)
    OmegaConf.resolve(smol)
    assert (tiny.trainer.learning_rate, tiny.method.max_completion_length, tiny.eval.max_new_tokens) == (1e-4, 48, 48)
    assert (smol.trainer.learning_rate, smol.method.max_completion_length, smol.trainer.max_length) == (5e-6, 128, 512)
    own = _compose("method=grpo", "model=smollm2_135m", "method.max_completion_length=64", "trainer.learning_rate=1e-6")
    OmegaConf.resolve(own)
    assert (own.method.max_completion_length, own.trainer.learning_rate) == (64, 1e-6)


def test_a_local_file_names_its_dataset_unless_a_name_is_given():
    from omegaconf import OmegaConf, open_dict

    from tokalign.app.compose import name_local_data, validate
    from tokalign.cli import _compose

    for overrides, name in (
        (["dataset.path=/data/pref_qgb.jsonl"], "pref_qgb"),
        (["dataset=hh_rlhf", "dataset.path=/data/hh_local/"], "hh_local"),
        (["dataset.path=/data/pref_qgb.jsonl", "dataset.name=mine"], "mine"),
        ([], "toy_pref"),
    ):
        cfg, _ = _compose(overrides)
        name_local_data(cfg, overrides)
        with open_dict(cfg):
            del cfg["hydra"]
        cfg = validate(cfg)
        assert cfg.dataset.name == name and OmegaConf.select(cfg, "run_name") == f"dpo-tiny-{name}-s0"
