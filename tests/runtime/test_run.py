"""A whole run through the CLI: run-dir contents, W&B offline directory, eval CLI, multirun."""

import json

import pytest
from omegaconf import OmegaConf

from tests.conftest import run_cli
from tokalign.artifacts.tracking import read_metrics


@pytest.mark.slow
def test_wandb_offline_run_dir_and_eval_cli(train, capsys):
    run_dir = train(
        "method=dpo", "trainer.max_steps=4", "trainer.logging_steps=1", "logger.group=g1", "tags=[a,b]", logger="wandb"
    )
    offline = list((run_dir / "wandb").glob("offline-run-*"))
    assert len(offline) == 1 and list(offline[0].glob("run-*.wandb"))
    assert (run_dir / "wandb_id.txt").read_text() in offline[0].name
    assert OmegaConf.load(run_dir / "resolved.yaml").logger.group == "g1"
    assert [m["step"] for m in read_metrics(run_dir) if "train/loss" in m] == [1, 2, 3, 4]

    run_cli("eval", f"run_dir={run_dir}", "eval.num_prompts=4", "eval.num_samples=2")
    metrics = json.loads((run_dir / "eval.json").read_text())
    assert metrics["eval/num_prompts"] == 4 and 0.0 <= metrics["eval/win_rate"] <= 1.0
    assert "wrote" in capsys.readouterr().out


@pytest.mark.slow
def test_verifiable_task_reports_accuracy(train):
    run_dir = train("method=sft", "dataset=toy_math", "trainer.max_steps=2", "eval.num_samples=2")
    metrics = json.loads((run_dir / "eval.json").read_text())
    assert 0.0 <= metrics["eval/accuracy"] <= 1.0 and "eval/pass@2" in metrics


@pytest.mark.slow
def test_multirun_names_runs_by_point_groups_them_and_ends_with_a_table(tmp_path, cache_dir, capsys):
    run_cli(
        "train",
        "-m",
        f"hydra.sweep.dir={tmp_path}",
        "logger=none",
        "method=sft,dpo",
        "trainer.max_steps=2",
        "eval.at_end=false",
    )
    dirs = sorted(p.name for p in tmp_path.iterdir() if p.is_dir() and p.name.startswith("method"))
    assert dirs == ["method=dpo,trainer.max_steps=2", "method=sft,trainer.max_steps=2"]  # named by the point
    assert all((tmp_path / d / "model" / "config.json").exists() for d in dirs)
    assert {OmegaConf.load(tmp_path / d / "resolved.yaml").logger.group for d in dirs} == {tmp_path.name}
    out = capsys.readouterr().out
    assert f"Sweep table ({tmp_path})" in out and (tmp_path / "table" / "table.md").exists()


@pytest.mark.slow
def test_every_long_wait_says_what_it_does_and_shows_progress(train, tiny_model, tmp_path, capsys):
    """On-policy pairs, a nested guidance DPO model, the per-token precompute and the evaluation each say
    what they do before they start and how long they took, with a progress bar (an ETA) in between; the
    nested run prints nothing of its own (no temporary paths, no summary of a run the user did not start)."""
    import shutil
    from pathlib import Path

    cache = tmp_path / "cache"  # nothing built yet but the tiny model
    shutil.copytree(tiny_model, cache / "models" / Path(tiny_model).name)
    run_dir = train(
        "method=tgdpo",
        "dataset.pairs=on_policy",
        "dataset.num_train=24",
        "dataset.on_policy.batch_size=8",
        "trainer.max_steps=2",
        "eval.kl=false",
        f"cache_dir={cache}",
    )
    out, err = capsys.readouterr()
    said = [line for line in out.splitlines() if line.startswith("tokalign: ")]
    for what in (
        "sampling on-policy pairs: 4 responses to each of",
        "building the DPO model of method.dpo_model",
        "precomputing per-token values",
        "evaluating",
    ):
        start = next((i for i, line in enumerate(said) if what in line and line.endswith("...")), None)
        assert start is not None, f"no line before: {what}\n{out}"
        assert any(what in line and " in " in line and line.split()[-1] == "s" for line in said[start + 1 :]), out
    assert f"built, cached at {cache / 'dpo_models'}" in out
    assert "on-policy samples" in err and "per-token log-probs" in err and "eval: policy" in err  # the bars (tqdm: ETA)
    assert out.count("run dir ") == 1 and "dpo-model-" not in out and "tmp" not in out.replace(str(tmp_path), "")
    log = (run_dir / "tokalign.log").read_text()
    assert "building the DPO model" in log and "precomputing per-token values" in log
