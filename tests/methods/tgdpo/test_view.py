"""TGDPO's token view on a real run: with the reference as guidance, r̂ = 0 and f = 1 everywhere."""

from __future__ import annotations

import pytest

from tests.html_spans import parse


@pytest.mark.slow
def test_tgdpo_view_with_the_reference_as_guidance_has_zero_rewards(train, tiny_model):
    run_dir = train(
        "method=tgdpo",
        f"method.dpo_model={tiny_model}",
        "method.alpha=1.0",
        "trainer.max_steps=2",
        "dataset.num_train=32",
        "trainer.per_device_batch_size=8",
        "eval.at_end=false",
    )
    from tokalign.analysis.inspect import inspect_run

    spans = parse(inspect_run(run_dir, num_examples=1).read_text())
    assert len(spans) > 2
    assert all(float(s["data-r_hat"]) == 0.0 and float(s["data-f"]) == 1.0 for s in spans)  # π_g = π_ref: r̂ = 0, f = 1
    assert any(float(s["data-delta"]) != 0.0 for s in spans)  # the trained policy moved
