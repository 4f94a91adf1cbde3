"""The README's commands, as a user runs them: they work, and print nothing a user must learn to ignore."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
# Library lines that say nothing about the run (each silenced at its source or filtered; `-v` shows them).
NOISE = (
    "Setting accelerator to CPU",
    "is deprecated",
    "pin_memory",
    "Running in WANDB offline mode",
    "LOAD REPORT",
    "train on your downstream task",
    "Traceback",
)


@pytest.mark.slow
def test_dpo_then_sft_in_one_process(train, tiny_model):
    a = train("method=dpo", "trainer.max_steps=4")
    b = train("method=sft", "trainer.max_steps=4")
    assert json.loads((a / "eval.json").read_text())["eval/num_prompts"] == 8
    assert (b / "model" / "model.safetensors").exists()


def _tokalign(*args: str, cwd: Path) -> str:
    """`tokalign ...` in a fresh process (what a library prints once per process shows), stdout and stderr."""
    env = {**os.environ, "PYTHONPATH": f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", "WANDB_MODE": "offline"}
    env.pop("WANDB_SILENT", None)
    done = subprocess.run(
        [sys.executable, "-m", "tokalign.cli", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout + done.stderr


@pytest.mark.slow
@pytest.mark.parametrize("method", ["dpo", "ppo"])
def test_readme_commands_print_no_noise(tmp_path, cache_dir, tiny_model, method):
    text = _tokalign(
        "train",
        f"method={method}",
        "trainer.max_steps=2",
        "logger=none",
        "eval.num_prompts=4",
        f"hydra.run.dir={tmp_path / 'run'}",
        cwd=tmp_path,
    )
    assert [n for n in NOISE if n in text] == [], text
    assert "run dir" in text and "wandb" not in text.lower()  # no W&B line when W&B does not run


@pytest.mark.slow
def test_verbose_shows_the_libraries_lines(tmp_path, cache_dir, tiny_model):
    text = _tokalign(
        "train",
        "-v",
        "method=ppo",
        "trainer.max_steps=1",
        "logger=none",
        "eval.at_end=false",
        f"hydra.run.dir={tmp_path / 'run'}",
        cwd=tmp_path,
    )
    assert "LOAD REPORT" in text and "score.weight" in text, text  # the critic's new value head, said by transformers
