"""Shared fixtures: one cache of built models per test session, and a way to run the CLI.

`TOKALIGN_TEST_CACHE` (set by `make test`) keeps built models between sessions.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import pytest

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session", autouse=True)
def library_log_handler():
    """transformers makes its log handler on first use, bound to the sys.stderr of that moment; make it
    under the session's capture, not inside a test whose capsys stream is closed when the test ends."""
    from transformers.utils import logging as hf_logging

    hf_logging.get_logger("transformers")


@pytest.fixture(autouse=True)
def fresh_accelerate_state():
    """accelerate keeps one process-wide state, fixed by the first run that makes it (mixed precision,
    CPU or not); a CLI process runs one job, a test session runs many in turn, so each test starts without it."""
    yield
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    path = Path(os.environ.get("TOKALIGN_TEST_CACHE") or tmp_path_factory.mktemp("cache"))
    os.environ["TOKALIGN_CACHE"] = str(path)
    return path


@pytest.fixture(scope="session")
def tiny_model(cache_dir) -> str:
    """Path of the default tiny model (built once per cache)."""
    from omegaconf import OmegaConf

    from tokalign.config import ModelConfig
    from tokalign.modeling.models import resolve_model

    return resolve_model(OmegaConf.structured(ModelConfig), cache_dir)


def compose_config(*overrides: str):
    """The validated config `tokalign train <overrides>` would run, composed without running."""
    from hydra import compose, initialize_config_dir

    from tokalign.app.compose import register, validate
    from tokalign.cli import conf_dir

    register()
    with initialize_config_dir(config_dir=conf_dir(), version_base="1.3"):
        cfg = compose("config", overrides=["output_dir=/tmp/tokalign-compose", *overrides])
    return validate(cfg)


def paper_overrides(*overrides: str) -> list[str]:
    """What a user must add to a paper experiment that needs their own models: a reward model where the
    experiment leaves `method.reward` required (`???`: MA-RLHF's and RTO's, trained or converted first),
    a critic where it leaves `method.critic_model` required (Text2Grad's)."""
    from omegaconf import OmegaConf

    from tokalign.cli import conf_dir

    files = [
        Path(conf_dir()) / "experiment" / f"{o.removeprefix('experiment=')}.yaml"
        for o in overrides
        if o.startswith("experiment=")
    ]
    methods = [OmegaConf.load(f).get("method") for f in files]
    rm = Path(tempfile.gettempdir()) / "tokalign-test-rm"
    (rm / "model").mkdir(parents=True, exist_ok=True)
    (rm / "model" / "config.json").write_text("{}")
    added = {"reward": f"method.reward=model:{rm}", "critic_model": f"method.critic_model={rm / 'model'}"}
    return [arg for key, arg in added.items() if any(m is not None and OmegaConf.is_missing(m, key) for m in methods)]


def sweep_params(experiment: str) -> dict[str, list[str]]:
    """An experiment file's sweep: each swept key with its values (`+arm` rows, seeds)."""
    from omegaconf import OmegaConf

    from tokalign.cli import conf_dir

    params = OmegaConf.load(Path(conf_dir()) / "experiment" / f"{experiment}.yaml").hydra.sweeper.params
    return {key: str(values).split(",") for key, values in params.items()}


def run_cli(*args: str) -> None:
    """Run `tokalign ...` in this process, as a user would type it."""
    from tokalign.cli import main

    argv = sys.argv
    try:
        main(list(args))
    finally:
        sys.argv = argv


@pytest.fixture
def train(tmp_path, cache_dir):
    """`train("method=dpo", ...)` runs `tokalign train` into a fresh dir and returns that dir."""

    def _train(*overrides: str, logger: str = "none") -> Path:
        run_dir = tmp_path / f"run{len(list(tmp_path.iterdir()))}"
        run_cli("train", f"hydra.run.dir={run_dir}", f"logger={logger}", "eval.num_prompts=8", *overrides)
        return run_dir

    return _train


@pytest.fixture(scope="module")
def pairs():
    """12 toy preference rows (conversational)."""
    from omegaconf import OmegaConf

    from tokalign.config import DatasetConfig
    from tokalign.data.loading import load_split

    return load_split(OmegaConf.structured(DatasetConfig(num_train=12)), "preference", "train")


@pytest.fixture(scope="module")
def perturbed_model(tiny_model, tmp_path_factory):
    """The tiny model with perturbed weights: a frozen model that disagrees with the reference."""
    import torch

    from tokalign.modeling.models import load_causal_lm, load_tokenizer

    model = load_causal_lm(tiny_model)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen))
    path = tmp_path_factory.mktemp("perturbed")
    model.save_pretrained(path)
    load_tokenizer(tiny_model).save_pretrained(path)
    return str(path)


FINISHED = [
    "logger=none",
    "method=sft",
    "trainer.max_steps=1",
    "dataset.num_train=16",
    "eval.num_prompts=2",
    "eval.kl=false",
]


@pytest.fixture(scope="session")
def finished_run(tmp_path_factory, cache_dir) -> Path:
    """A finished one-step SFT run (overrides: FINISHED); tests change only a copy (`copy_run`)."""
    run_dir = tmp_path_factory.mktemp("finished") / "run"
    run_cli("train", f"hydra.run.dir={run_dir}", *FINISHED)
    return run_dir


def copy_run(run_dir: Path, dest: Path) -> Path:
    import shutil

    shutil.copytree(run_dir, dest, symlinks=True)
    return dest
