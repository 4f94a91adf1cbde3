"""scripts/gpu_check.py: its FLOP count matches the model it builds, and `--tiny` runs it on CPU."""

from __future__ import annotations

import json
import runpy
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "gpu_check.py"


@pytest.fixture(scope="module")
def gpu_check():
    return runpy.run_path(str(SCRIPT), run_name="gpu_check")


@pytest.mark.parametrize("shape", ["TINY", "LLAMA_1B"])
def test_flop_count_is_the_models_matmuls(gpu_check, shape):
    """2 FLOPs per weight of every linear layer per token, the LM head per logit position, plus attention."""
    from transformers import LlamaConfig

    s = gpu_check[shape]
    config = LlamaConfig(vocab_size=s.vocab, hidden_size=s.hidden, intermediate_size=s.intermediate,
                         num_hidden_layers=1, num_attention_heads=s.heads, num_key_value_heads=s.kv_heads)
    with torch.device("meta"):
        from transformers import LlamaForCausalLM

        layer = LlamaForCausalLM(config).model.layers[0]
    weights = sum(m.weight.numel() for m in layer.modules() if isinstance(m, torch.nn.Linear))
    sequences, length, logit_positions = 3, 10, 4
    per_sequence = length * (2 * s.layers * weights + 4 * s.layers * s.hidden * length) + logit_positions * 2 * s.hidden * s.vocab
    assert gpu_check["forward_flops"](s, sequences, length, logit_positions) == sequences * per_sequence


@pytest.mark.slow
def test_tiny_gpu_check_runs_on_cpu(gpu_check, tmp_path, cache_dir):
    assert gpu_check["main"](["--tiny", "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    sections = report["sections"]
    for name in ("dpo", "tgdpo", "generate_hf", "ppo_hf"):
        assert sections[name]["status"] == "ok", sections[name]
    assert sections["dpo"]["policy_tokens_per_s"] > 0 and sections["tgdpo"]["tflops_per_step"] > sections["dpo"]["tflops_per_step"]
    assert sections["ppo_hf"]["rollout_s"] > 0 and sections["ppo_hf"]["update_s"] > 0
    for name in ("generate_vllm", "ppo_vllm", "d3s_vllm"):  # vLLM needs a GPU: skipped, with the reason
        assert sections[name]["status"] == "skipped" and sections[name]["reason"]
    assert "| ppo_hf | ok |" in (tmp_path / "gpu_check.md").read_text()
