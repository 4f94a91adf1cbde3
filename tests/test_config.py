"""Every config file composes and validates offline; bad configs fail with the key named."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from tokalign.cli import conf_dir
from tests.conftest import compose_config as _compose
from tokalign.config import ConfigError, validate

CONF = Path(conf_dir())
GROUPS = ["method", "model", "dataset", "logger", "launcher", "trainer"]


def _options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


@pytest.mark.parametrize("group,option", [(g, o) for g in GROUPS for o in _options(g)])
def test_every_config_file_composes_and_validates(group, option):
    cfg = _compose(f"{group}={option}")
    OmegaConf.resolve(cfg)
    assert cfg[group] is not None


@pytest.mark.parametrize("experiment", _options("experiment"))
def test_every_experiment_composes(experiment):
    _compose(f"experiment={experiment}")


def test_defaults_are_the_embedded_toy_setup():
    cfg = _compose()
    assert (cfg.method.name, cfg.model.source, cfg.dataset.source) == ("dpo", "tiny", "toy_pref")
    assert cfg.model.trust_remote_code is False


def test_overrides_reach_the_typed_config():
    cfg = _compose("method.beta=0.05", "trainer.max_steps=20", "seed=3", "model.path=/some/dir",
                   "dataset.path=/my/pairs.jsonl", "dataset.columns.prompt=question")
    assert (cfg.method.beta, cfg.trainer.max_steps, cfg.seed, cfg.model.path) == (0.05, 20, 3, "/some/dir")
    assert (cfg.dataset.path, cfg.dataset.columns.prompt, cfg.dataset.columns.chosen) == ("/my/pairs.jsonl", "question", "chosen")


def test_hub_presets_name_real_checkpoints():
    cfg = _compose("model=llama3_8b_instruct")
    assert cfg.model.hub_id == "meta-llama/Meta-Llama-3-8B-Instruct" and cfg.model.source == "hub"


def test_unknown_key_in_a_method_config_is_rejected():
    cfg = OmegaConf.create(OmegaConf.to_container(_compose(), enum_to_str=True))
    cfg.method.betta = 0.3
    with pytest.raises(ConfigError, match="betta"):
        validate(cfg)


def test_bad_value_is_rejected():
    with pytest.raises(Exception, match="precision"):
        _compose("trainer.precision=fp8")


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tokalign.cli", *args], capture_output=True, text=True, timeout=120)


def test_help_lists_subcommands():
    out = _cli("--help")
    assert out.returncode == 0 and "train" in out.stdout and "eval" in out.stdout


def test_cfg_job_prints_the_composed_config():
    out = _cli("train", "--cfg", "job", "method=sft")
    assert out.returncode == 0, out.stderr
    cfg = OmegaConf.create(out.stdout)
    assert cfg.method.name == "sft" and cfg.model.name == "tiny"


@pytest.mark.parametrize(
    "args,message",
    [
        (("train", "method=nope"), "Could not find 'method/nope'"),
        (("train", "method.bta=0.1"), "Could not override 'method.bta'"),
        (("train", "trainer.max_steps=many"), "max_steps"),
        (("eval",), "run_dir"),
        (("frobnicate",), "unknown command"),
    ],
)
def test_bad_input_exits_nonzero_with_a_clear_message(args, message):
    out = _cli(*args)
    assert out.returncode != 0
    assert message in out.stderr + out.stdout
