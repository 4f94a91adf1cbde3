"""SFT packing / padding-free: rows packed into one sequence read exactly what they read alone (position ids
mark their boundaries), a packed run sees more rows per step, and the knobs are SFT's own."""

from __future__ import annotations

import json

import pytest
import torch

from tests.conftest import compose_config


def test_a_packed_row_reads_exactly_what_it_reads_alone(tiny_model):
    from tokalign.modeling.models import load_causal_lm

    model = load_causal_lm(tiny_model).eval()
    rows = [torch.arange(5, 14), torch.arange(20, 25), torch.arange(40, 52)]
    packed = torch.cat(rows)[None]
    positions = torch.cat([torch.arange(len(r)) for r in rows])[None]
    with torch.no_grad():
        together = model(input_ids=packed, position_ids=positions, use_cache=False).logits[0]  # as in training
        alone = torch.cat([model(input_ids=r[None]).logits[0] for r in rows])
    assert torch.allclose(together, alone, atol=1e-5)


def test_packing_is_a_knob_of_sft_only(tmp_path, capsys):
    from tests.test_bad_input import _probe

    assert compose_config("method=sft", "method.packing=true").method.packing
    line = _probe(capsys, "train", f"hydra.run.dir={tmp_path / 'run'}", "method=dpo", "method.packing=true")
    assert "method.packing" in line and "not a knob" in line


@pytest.mark.slow
def test_a_packed_run_trains_on_more_rows_per_step(train):
    def tokens(*extra):
        run = train("method=sft", "trainer.max_steps=2", "trainer.per_device_batch_size=8", "eval.at_end=false", *extra)
        rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        return [r for r in rows if "train/num_tokens" in r][-1]["train/num_tokens"]

    assert tokens("method.packing=true") > 2 * tokens()  # toy rows fill a third of trainer.max_length
