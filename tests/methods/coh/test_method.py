"""method=coh: chain rows and their loss mask, the reduction to SFT end to end, its checks and a toy run."""

from __future__ import annotations

import json

import pytest
import torch

from tests.conftest import run_cli
from tokalign.artifacts.tracking import read_metrics
from tokalign.data.hindsight import TOY_MARKERS
from tokalign.methods.coh.chains import chain_row

PROMPT = [{"role": "user", "content": "Tell me about the lake."}]
OUTPUTS = {"p": "the lake is calm .", "n": "the lake is dull ."}


@pytest.fixture(scope="module")
def tokenizer(tiny_model):
    from tokalign.modeling.models import load_tokenizer

    return load_tokenizer(tiny_model)


def _trained(tokenizer, row) -> str:
    return tokenizer.decode([t for t, m in zip(row["input_ids"], row["completion_mask"]) if m])


@pytest.mark.parametrize("order", ["p", "n", "pn", "np"])
def test_outputs_and_their_end_tokens_are_trained_never_prompt_or_markers(tokenizer, order):  # invariants 2, 5
    row = chain_row(tokenizer, PROMPT, OUTPUTS, order, TOY_MARKERS, last_only=False)
    chain = "<|im_end|> ".join(f"{TOY_MARKERS[k]} {OUTPUTS[k]}" for k in order)
    assert tokenizer.decode(row["input_ids"]).endswith(f"<|im_start|>assistant\n{chain}<|im_end|>\n")
    assert _trained(tokenizer, row) == "".join(f" {OUTPUTS[k]}<|im_end|>" for k in order) + "\n"
    last = chain_row(tokenizer, PROMPT, OUTPUTS, order, TOY_MARKERS, last_only=True)
    assert last["input_ids"] == row["input_ids"]
    assert _trained(tokenizer, last) == f" {OUTPUTS[order[-1]]}<|im_end|>\n"


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


@pytest.mark.slow
def test_one_output_no_chain_no_pretraining_no_fcm_is_sft(train, tmp_path):  # invariant 1, end to end
    from tokalign.data import toy_pref

    pairs = toy_pref.preference_rows(6, seed=0)
    chat = [{"role": "user", "content": ""}]
    prefs = [
        {
            "prompt": [{**chat[0], "content": r["prompt"]}],
            "chosen": [{"role": "assistant", "content": r["chosen"]}],
            "rejected": [{"role": "assistant", "content": r["rejected"]}],
        }
        for r in pairs
    ]
    sft = [{"prompt": r["prompt"], "completion": r["chosen"]} for r in prefs]
    common = ("trainer.per_device_batch_size=1", "trainer.max_steps=3", "trainer.logging_steps=1", "eval.at_end=false")
    sft_run = train("method=sft", f"dataset.path={_jsonl(tmp_path / 'sft.jsonl', sft)}", *common)
    coh_run = train(
        "method=coh",
        f"dataset.path={_jsonl(tmp_path / 'pref.jsonl', prefs)}",
        "method.orders=[p]",
        "method.positive_marker=''",
        "method.pretrain_weight=0",
        "method.fcm_max=0",
        *common,
    )
    losses = [[r["train/loss"] for r in read_metrics(run) if "train/loss" in r] for run in (sft_run, coh_run)]
    assert len(losses[0]) == 3 and losses[0] == pytest.approx(losses[1], rel=1e-5, abs=1e-6)
    from safetensors.torch import load_file

    a, b = (load_file(run / "model" / "model.safetensors") for run in (sft_run, coh_run))
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)  # equal gradients, 3 steps


BAD = [
    (["method.orders=[p,q]"], "method.orders=['p', 'q']"),
    (["method.fcm_min=0.1", "method.fcm_max=0.05"], "method.fcm_min=0.1 must be <= method.fcm_max=0.05"),
    (["method.fcm_max=1"], "method.fcm_max=1"),
    (["method.pretrain_weight=-1"], "method.pretrain_weight=-1"),
    (["method.orders=[]"], "method.orders"),
]


@pytest.mark.parametrize(("overrides", "message"), BAD, ids=[" ".join(o) for o, _ in BAD])
def test_a_bad_knob_is_one_line_and_exit_2(capsys, overrides, message):
    with pytest.raises(SystemExit) as exit_:
        run_cli("train", "method=coh", "logger=none", *overrides)
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("tokalign: error:")]
    assert exit_.value.code == 2 and "Traceback" not in err and len(errors) == 1, err
    assert message in errors[0]


@pytest.mark.slow
def test_toy_run_end_to_end_and_inference_asks_with_the_positive_marker(train):
    from tokalign.modeling.models import load_tokenizer

    run_dir = train(
        "experiment=coh_toy",
        "+arm=coh/coh",
        "trainer.max_steps=2",
        "trainer.logging_steps=1",
        "trainer.per_device_batch_size=4",
        "dataset.num_train=16",
        "eval.num_prompts=4",
        "eval.max_new_tokens=8",
    )
    rows = [r for r in read_metrics(run_dir) if "train/loss" in r]
    assert len(rows) == 2 and all(r["train/loss/pretrain"] > 0 and r["train/loss/feedback"] > 0 for r in rows)
    saved = load_tokenizer(str(run_dir / "model"))
    asked = saved.apply_chat_template(PROMPT, add_generation_prompt=True, tokenize=False)
    assert asked.endswith("<|im_start|>assistant\n" + TOY_MARKERS["p"])
    assert (run_dir / "eval.json").exists()
