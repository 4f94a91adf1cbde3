"""RTO end to end on the tiny model: equal to the PPO run when its DPO model is the reference; the toy
experiment builds its DPO model on demand, reruns identically from the cache, and shows dense rewards."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.html_spans import parse

SMALL = (
    "trainer.per_device_batch_size=4",
    "method.max_new_tokens=12",
    "eval.at_end=false",
    "trainer.logging_steps=1",
    "trainer.max_steps=2",
)
TIMING = ("time", "train/rollout_tokens_per_s", "train/train_tokens_per_s", "train/rollout_s", "train/update_s")


def metrics(run_dir: Path, drop: tuple[str, ...] = ()) -> list[dict]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in TIMING and not k.startswith(drop)} for r in rows]


@pytest.mark.slow
def test_rto_without_a_dense_reward_is_the_ppo_run(train, tiny_model):
    """Invariant 1 end to end: π_dpo ≡ π_ref, or β₁ = 0 (the RTO table's PPO row: no DPO model at all), makes every
    token's dense reward 0, so the run is PPO's, bit for bit."""
    ppo = train(
        "method=ppo", "method.kl_coef=0.01", "method.score_clip=10", "method.temperature=1.0", "method.top_k=0", *SMALL
    )
    for knob in (f"method.dpo_model={tiny_model}", "method.dpo_scale=0"):
        rto = train("method=rto", knob, *SMALL)
        assert metrics(rto, drop=("train/rto/",)) == metrics(ppo), knob
        assert all(r["train/rto/dpo_reward"] == 0 and r["train/rto/dpo_clipfrac"] == 0 for r in metrics(rto))


@pytest.mark.slow
def test_rto_toy_builds_its_dpo_model_reruns_identically_and_shows_dense_rewards(train, tiny_model, tmp_path):
    from tokalign.analysis.inspect import inspect_run

    args = (
        "experiment=rto_toy",
        "+arm=rto/dense",
        f"model.path={tiny_model}",
        f"cache_dir={tmp_path / 'cache'}",
        "trainer.max_steps=3",
        "trainer.logging_steps=1",
        "trainer.per_device_batch_size=8",
        "method.max_new_tokens=12",
        "eval.max_new_tokens=12",
    )
    built = train(*args)  # trains the DPO model on demand (3 DPO steps), then RTO
    assert len(list((tmp_path / "cache" / "dpo_models").glob("dpo-*/model/config.json"))) == 1
    reused = train(*args)
    assert metrics(built) == metrics(reused)  # building the DPO model leaves the run's RNG as it was
    rows = [r for r in metrics(reused) if "train/rto/dpo_reward" in r]
    assert len(rows) == 3 and any(r["train/rto/dpo_reward"] != 0 for r in rows)
    assert all(abs(r["train/rto/dpo_reward"]) <= 0.05 and 0 <= r["train/rto/dpo_clipfrac"] <= 1 for r in rows)
    assert "eval/gold_reward" in json.loads((reused / "summary.json").read_text())

    spans = parse(inspect_run(reused, num_examples=2, trust_run_code=True).read_text())  # its own cache_dir
    dense = [float(s["data-dpo_reward"]) for s in spans]
    assert spans and all({"data-advantage", "data-reward", "data-value"} <= set(s) for s in spans)
    assert all(abs(d) <= 0.05 for d in dense) and any(d != 0 for d in dense)
