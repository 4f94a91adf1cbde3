"""QLoRA's knob: checked against LoRA, the method and the launcher at validation, and against what this
machine has (bitsandbytes, a CUDA GPU) before anything is loaded or written."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from tests.conftest import compose_config
from tests.test_bad_input import _probe
from tokalign.errors import ConfigError

LORA = ("model.lora.enabled=true",)


@pytest.mark.parametrize(
    "overrides,message",
    [
        (("model.quantization=4bit",), "model.quantization=4bit freezes a quantized base and trains adapters"),
        (("method=ppo", "model.quantization=8bit", *LORA), "method=ppo does not load quantized models"),
        (("method=rto", "model.quantization=4bit", *LORA), "method=rto does not load quantized models"),
        (("model.quantization=4bit", "launcher=deepspeed", *LORA), "not DeepSpeed"),
    ],
)
def test_quantization_relations_are_checked_at_validation(overrides, message):
    with pytest.raises(ConfigError) as err:
        compose_config(*overrides)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_an_unknown_quantization_is_one_line(tmp_path, capsys):
    line = _probe(capsys, "train", f"hydra.run.dir={tmp_path / 'run'}", "model.quantization=2bit", *LORA)
    assert "model.quantization=2bit is not one of none | 4bit | 8bit" in line


def test_qlora_composes_for_trl_methods():
    for method in ("dpo", "sft", "grpo", "reward"):
        cfg = compose_config(f"method={method}", "model.quantization=4bit", *LORA)
        assert cfg.model.quantization == "4bit"


def test_a_machine_without_bitsandbytes_or_cuda_refuses_in_one_line_before_loading(tmp_path, capsys):
    has_bnb, has_cuda = importlib.util.find_spec("bitsandbytes") is not None, torch.cuda.is_available()
    if has_bnb and has_cuda:
        pytest.skip("this machine can quantize")
    run = tmp_path / "run"
    line = _probe(capsys, "train", f"hydra.run.dir={run}", "logger=none", "model.quantization=4bit", *LORA)
    assert line.startswith("tokalign: error: model.quantization=4bit needs ")
    assert ("bitsandbytes" in line) == (not has_bnb) and ("CUDA GPU" in line) == (not has_cuda)
    assert not run.exists() or not any(run.iterdir())  # nothing written, nothing loaded
