"""PPO's token view on a real run: macro-action boundaries and one advantage per macro action."""

from __future__ import annotations

import pytest

from tests.html_spans import parse


@pytest.mark.slow
def test_ma_ppo_view_marks_macro_actions(train):
    run_dir = train(
        "method=ma_ppo",
        "method.n=3",
        "trainer.max_steps=1",
        "trainer.per_device_batch_size=4",
        "method.max_new_tokens=10",
        "eval.at_end=false",
    )
    from tokalign.analysis.inspect import inspect_run

    spans = parse(inspect_run(run_dir, num_examples=2).read_text())
    segments = [int(float(s["data-segment"])) for s in spans]
    starts = ["start" in s["class"] for s in spans]
    assert starts[0]
    for i in range(1, len(spans)):  # a bar where the macro action changes; one advantage per macro action
        if segments[i] != segments[i - 1]:
            assert starts[i]
        if not starts[i]:
            assert segments[i] == segments[i - 1] and spans[i]["data-advantage"] == spans[i - 1]["data-advantage"]
    assert max(segments) >= 1
