"""logger=tensorboard: event files beside metrics.jsonl holding the same scalars, for TRL-based trainers and
the PPO loop, read back with TensorBoard's own reader; a resume purges the replayed steps."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from tests.test_bad_input import _probe

HAS_TENSORBOARD = importlib.util.find_spec("tensorboard") is not None
needs_tensorboard = pytest.mark.skipif(not HAS_TENSORBOARD, reason="the tensorboard extra is not installed")


def _scalars(log_dir: Path) -> dict[str, dict[int, float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir))
    acc.Reload()
    return {tag: {e.step: e.value for e in acc.Scalars(tag)} for tag in acc.Tags()["scalars"]}


def _jsonl(run: Path) -> dict[str, dict[int, float]]:
    out: dict[str, dict[int, float]] = {}
    for row in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()):
        for key, value in row.items():
            if key not in ("step", "time") and isinstance(value, (int, float)):
                out.setdefault(key, {})[row["step"]] = value
    return out


@pytest.mark.skipif(HAS_TENSORBOARD, reason="the tensorboard extra is installed here")
def test_logger_tensorboard_without_the_package_is_one_line(tmp_path, capsys):
    run = tmp_path / "run"
    line = _probe(capsys, "train", f"hydra.run.dir={run}", "logger=tensorboard", "trainer.max_steps=1")
    assert (
        line == "tokalign: error: logger=tensorboard needs the tensorboard package: pip install 'tokalign[tensorboard]'"
    )
    assert not run.exists() or not any(run.iterdir())


@needs_tensorboard
def test_tracker_writes_scalars_and_a_resume_purges_the_replayed_steps(tmp_path):
    from omegaconf import OmegaConf

    from tokalign.artifacts.tracking import Tracker
    from tokalign.config import LoggerConfig, LoggerName

    cfg = OmegaConf.create({"logger": OmegaConf.structured(LoggerConfig(name=LoggerName.tensorboard))})
    tracker = Tracker(cfg, tmp_path)
    for step in (1, 2, 3):
        tracker.log({"train/loss": 1.0 / step, "train/note": "text is not a scalar"}, step=step)
    tracker.finish()
    resumed = Tracker(cfg, tmp_path)
    resumed.rewind(2)  # resumed from checkpoint-2: step 3 is trained again
    resumed.log({"train/loss": 0.25}, step=3)
    resumed.finish()
    assert _scalars(tmp_path / "tensorboard") == {"train/loss": {1: 1.0, 2: 0.5, 3: 0.25}}
    assert _scalars(tmp_path / "tensorboard") == _jsonl(tmp_path)


@needs_tensorboard
def test_tensorboard_beside_wandb(tmp_path):
    from omegaconf import OmegaConf

    from tokalign.artifacts.tracking import Tracker
    from tokalign.config import LoggerConfig, WandbMode

    cfg = OmegaConf.create(
        {
            "logger": OmegaConf.structured(LoggerConfig(tensorboard=True, mode=WandbMode.disabled)),
            "run_name": "both",
            "tags": [],
        }
    )
    tracker = Tracker(cfg, tmp_path)
    tracker.log({"train/loss": 0.5}, step=1)
    assert tracker.wandb_run is not None
    tracker.finish()
    assert _scalars(tmp_path / "tensorboard") == {"train/loss": {1: 0.5}}


@needs_tensorboard
@pytest.mark.slow
@pytest.mark.parametrize(
    "overrides",
    [
        ("method=dpo", "trainer.per_device_batch_size=4"),
        ("method=ppo", "trainer.per_device_batch_size=4", "method.max_new_tokens=8"),
    ],
    ids=["trl", "ppo_loop"],
)
def test_a_run_writes_its_metrics_as_tensorboard_scalars(train, overrides):
    run = train(*overrides, "trainer.max_steps=2", "trainer.logging_steps=1", "eval.at_end=false", logger="tensorboard")
    events = _scalars(run / "tensorboard")
    logged = _jsonl(run)
    assert events.keys() == logged.keys()
    assert {"train/loss", "train/reward"} & events.keys()  # the TRL trainer's loss, the PPO loop's reward
    for key, by_step in logged.items():
        assert events[key] == pytest.approx(by_step), key
    assert {1, 2} <= set(next(iter(events.values())))
