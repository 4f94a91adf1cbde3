"""TGDPO and T-REG precompute under DeepSpeed ZeRO-3: 2 CPU processes (gloo) against 1, same global batch.

Every process computes its share of the per-token values with sharded weights; the shares are
gathered and one process per node writes the cache. The cache entry (key and values) and the
losses must be those of the single process.
"""

from __future__ import annotations

import pytest
import torch
from datasets import Dataset

from tests.conftest import run_cli
from tokalign.artifacts.tracking import read_metrics

pytestmark = [pytest.mark.distributed, pytest.mark.slow]

# 26 rows: 13 precompute batches of 2 on 2 processes, so one of them runs an extra lockstep forward
COMMON = ["trainer.max_steps=3", "trainer.logging_steps=1", "eval.at_end=false", "dataset.num_train=26"]


def _run(root, name, *overrides):
    run_cli("train", f"hydra.run.dir={root / name}", "logger=none", f"cache_dir={root / name}-cache", *overrides)
    return root / name


def _losses(run_dir):
    return [(m["step"], m["train/loss"], m["train/grad_norm"]) for m in read_metrics(run_dir) if "train/loss" in m]


@pytest.mark.parametrize("method", ["tgdpo", "treg"])
def test_zero3_precompute_matches_one_process(tmp_path, tiny_model, perturbed_model, method):
    extra = [f"method={method}", f"model.path={tiny_model}", *COMMON]
    if method == "tgdpo":
        extra.append(f"method.dpo_model={perturbed_model}")
    single = _run(tmp_path, "single", *extra, "trainer.per_device_batch_size=4")
    double = _run(
        tmp_path,
        "double",
        *extra,
        "trainer.per_device_batch_size=2",
        "launcher=deepspeed",
        "launcher.zero_stage=3",
        "launcher.num_gpus=2",
    )
    entries = [sorted((tmp_path / f"{name}-cache" / "token_logps").iterdir()) for name in ("single", "double")]
    assert [p.name for p in entries[0]] == [p.name for p in entries[1]] and len(entries[0]) == 1  # the same key
    one, two = (Dataset.load_from_disk(str(e[0])) for e in entries)
    for name in one.column_names:
        for a, b in zip(one[name], two[name]):
            torch.testing.assert_close(torch.tensor(b), torch.tensor(a), atol=1e-5, rtol=1e-5)
    losses1, losses2 = _losses(single), _losses(double)
    assert [s for s, *_ in losses2] == [1, 2, 3]
    for (_, loss1, grad1), (_, loss2, grad2) in zip(losses1, losses2):
        assert loss2 == pytest.approx(loss1, rel=1e-5) and grad2 == pytest.approx(grad1, rel=1e-4)
