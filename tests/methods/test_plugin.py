"""A method in a user's own installed package works as `method=<name>` without touching tokalign.

The test follows the README's "Add your own method" steps: it writes a package (settings,
a trainer built on TRL's DPOTrainer and tokalign's pure losses, a token view), declares it
under the `tokalign.methods` entry-point group, installs it with pip, and runs it through the
CLI: compose (`--cfg job`, `--help`), train and `tokalign inspect`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from tests.html_spans import parse

PYPROJECT = """
[build-system]
requires = ["setuptools"]
build-backend = "setuptools.build_meta"

[project]
name = "weighted-dpo"
version = "0.1.0"

[project.entry-points."tokalign.methods"]
weighted_dpo = "weighted_dpo:METHOD"
"""

PACKAGE = '''
"""DPO whose chosen tokens count `chosen_weight` times: a token-level variant in 40 lines."""

from dataclasses import dataclass

from tokalign.config import knob
from tokalign.bases.contract import DataKind, Method, MethodConfig


@dataclass
class Config(MethodConfig):
    algorithm: str = "weighted_dpo"
    name: str = "weighted_dpo"
    beta: float = knob(0.1, gt=0, help="DPO's KL coefficient")
    chosen_weight: float = knob(2.0, gt=0, help="weight of each chosen token's log-ratio")


def train(run):
    import torch
    from trl import DPOConfig, DPOTrainer

    from tokalign.losses import tgdpo_loss
    from tokalign.bases.trl import run_trainer, trl_args

    m = run.cfg.method

    def token_logps(net, inputs):
        logits = net(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).logits[:, :-1].float()
        return logits.log_softmax(-1).gather(-1, inputs["input_ids"][:, 1:, None])[..., 0]

    class WeightedDPOTrainer(DPOTrainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            mask = inputs["completion_mask"][:, 1:]
            policy = token_logps(model, inputs)
            with torch.no_grad():
                ref = token_logps(self.ref_model, inputs)
            # a guidance of ref + (w - 1) / beta makes tgdpo's token weights w on chosen tokens, 1 on rejected
            shift = torch.zeros_like(ref)
            shift[: len(ref) // 2] = (m.chosen_weight - 1) / m.beta
            loss, _ = tgdpo_loss(*policy.chunk(2), *ref.chunk(2), *(ref + shift).chunk(2), *mask.chunk(2),
                                 beta=m.beta, alpha=1.0)
            return loss

    trainer = WeightedDPOTrainer(model=run.load_policy(), ref_model=run.load_policy(),
                                 args=DPOConfig(**trl_args(run, beta=m.beta)), train_dataset=run.train_data,
                                 processing_class=run.tokenizer)
    return run_trainer(run, trainer)


def view(ctx):
    from tokalign.bases.dpo.view import preference_view

    return preference_view(ctx)


METHOD = Method(name="weighted_dpo", config=Config, data=DataKind.preference, train=train, view=view,
                description="DPO with up-weighted chosen tokens (a plugin)")
'''


@pytest.fixture(scope="module")
def plugin_env(tmp_path_factory, cache_dir):  # cache_dir: the runs share the test cache
    root = tmp_path_factory.mktemp("plugin")
    (root / "src" / "weighted_dpo").mkdir(parents=True)
    (root / "src" / "pyproject.toml").write_text(PYPROJECT)
    (root / "src" / "weighted_dpo" / "__init__.py").write_text(textwrap.dedent(PACKAGE))
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "--target",
            str(root / "site"),
            str(root / "src"),
        ],
        check=True,
        capture_output=True,
    )
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(root / "site"), os.environ.get("PYTHONPATH", "")])}


def _cli(env, *args, timeout=600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "tokalign.cli", *args], env=env, capture_output=True, text=True, timeout=timeout
    )


def test_an_installed_plugin_composes_like_a_built_in_method(plugin_env):
    job = _cli(plugin_env, "train", "--cfg", "job", "method=weighted_dpo", "method.chosen_weight=3")
    assert job.returncode == 0, job.stderr
    assert "algorithm: weighted_dpo" in job.stdout and "chosen_weight: 3" in job.stdout
    help_text = _cli(plugin_env, "train", "--help", "method=weighted_dpo").stdout
    assert "DPO with up-weighted chosen tokens (a plugin)" in help_text
    assert "chosen_weight: 2.0  # weight of each chosen token's log-ratio" in help_text
    bad = _cli(plugin_env, "train", "method=weighted_dpo", "method.chosen_weight=-1")
    assert bad.returncode == 2 and "method.chosen_weight=-1.0 is out of range: expected > 0" in bad.stderr


@pytest.mark.slow
def test_an_installed_plugin_trains_and_shows_its_tokens(plugin_env, tmp_path, cache_dir):
    run_dir = tmp_path / "run"
    out = _cli(
        plugin_env,
        "train",
        "method=weighted_dpo",
        f"hydra.run.dir={run_dir}",
        "logger=none",
        "trainer.max_steps=3",
        "trainer.logging_steps=1",
        "trainer.per_device_batch_size=4",
        "eval.num_prompts=4",
    )
    assert out.returncode == 0, out.stderr[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["train/steps"] == 3 and "eval/win_rate" in summary
    page = _cli(plugin_env, "inspect", f"run_dir={run_dir}", "num_examples=1")
    assert page.returncode == 0, page.stderr[-3000:]
    assert parse((run_dir / "inspect.html").read_text())
