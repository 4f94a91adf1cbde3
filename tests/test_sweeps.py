"""Sweep configs compose onto real knobs; the SLURM launcher renders the expected sbatch script;
a sweep runs end to end through submitit's local executor."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from tests.conftest import run_cli
from tokalign.cli import conf_dir
from tokalign.compose import register, validate

SWEEPS = sorted(p.stem for p in (Path(conf_dir()) / "sweep").glob("*.yaml"))


def _compose_with_hydra(*overrides: str):
    register()
    with initialize_config_dir(config_dir=conf_dir(), version_base="1.3"):
        return compose("config", overrides=["output_dir=/tmp/tokalign-compose", *overrides], return_hydra_config=True)


@pytest.mark.parametrize("sweep", SWEEPS)
def test_every_sweep_composes_and_sweeps_existing_knobs(sweep):
    cfg = _compose_with_hydra(f"+sweep={sweep}")
    params = cfg.hydra.sweeper.params
    assert cfg.method.name == sweep and len(params) >= 2
    run_cfg = OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"])
    typed = validate(run_cfg)
    for key, values in params.items():
        assert OmegaConf.select(typed, key, throw_on_missing=False) is not None or key.endswith("beta"), key
        assert len(str(values).split(",")) >= 2


def test_slurm_launcher_renders_one_task_per_node(tmp_path, monkeypatch):
    import submitit

    class Submitted(Exception):
        pass

    rendered = {}

    def capture(executor, fn, *args):
        rendered["sbatch"] = executor._executor._make_submission_file_text("python -m submitit.core._submit", "uuid")
        rendered["jobs"] = len(args[0])
        raise Submitted

    monkeypatch.setattr(submitit.AutoExecutor, "map_array", capture)
    bin_dir = tmp_path / "bin"  # submitit looks for srun before it renders anything; nothing is submitted
    bin_dir.mkdir()
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 1\n")
    (bin_dir / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    with pytest.raises((Submitted, SystemExit)):  # Hydra may report it and exit instead
        run_cli("train", "-m", "hydra/launcher=slurm", f"hydra.sweep.dir={tmp_path / 'sweep'}", "+sweep=dpo",
                "launcher=deepspeed", "launcher.zero_stage=3", "launcher.num_gpus=8", "launcher.num_nodes=2",
                "hydra.launcher.partition=gpu", "hydra.launcher.account=proj42", "hydra.launcher.timeout_min=90")
    text = rendered["sbatch"]
    for line in ("#SBATCH --nodes=2", "#SBATCH --gpus-per-node=8", "#SBATCH --ntasks-per-node=1",
                 "#SBATCH --partition=gpu", "#SBATCH --account=proj42", "#SBATCH --time=90", "#SBATCH --cpus-per-task=16",
                 "#SBATCH --signal=USR2@120", "srun --unbuffered"):
        assert line in text, line
    assert rendered["jobs"] == 9  # beta x seed, one array job each


@pytest.mark.slow
def test_two_point_sweep_through_submitit_local(tmp_path, cache_dir, tiny_model):
    run_cli("train", "-m", "hydra/launcher=submitit_local", f"hydra.sweep.dir={tmp_path}", "logger=none",
            "method=dpo", "method.beta=0.1,0.2", "trainer.max_steps=2", "trainer.per_device_batch_size=2",
            "eval.at_end=false", "hydra.launcher.timeout_min=15")
    dirs = sorted(p for p in tmp_path.iterdir() if p.is_dir() and p.name[0].isdigit())
    assert [d.name for d in dirs] == ["0_dpo_s0", "1_dpo_s0"]
    betas = [OmegaConf.load(d / "resolved.yaml").method.beta for d in dirs]
    assert betas == [0.1, 0.2] and all((d / "summary.json").exists() for d in dirs)
    assert list((tmp_path / ".submitit").iterdir())  # the jobs ran through submitit
