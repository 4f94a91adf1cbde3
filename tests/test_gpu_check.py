"""scripts/gpu/gpu_check.py: its FLOP count matches the model it builds, and `--tiny` runs it on CPU;
scripts/gpu/wheelhouse.py: the pins agree with what tokalign requires, a stale wheelhouse is refused."""

from __future__ import annotations

import json
import runpy
from pathlib import Path

import pytest
import torch

GPU = Path(__file__).resolve().parents[1] / "scripts" / "gpu"
SCRIPT = GPU / "gpu_check.py"


@pytest.fixture(scope="module")
def gpu_check():
    return runpy.run_path(str(SCRIPT), run_name="gpu_check")


@pytest.mark.parametrize("shape", ["TINY", "LLAMA_1B"])
def test_flop_count_is_the_models_matmuls(gpu_check, shape):
    """2 FLOPs per weight of every linear layer per token, the LM head per logit position, plus attention."""
    from transformers import LlamaConfig

    s = gpu_check[shape]
    config = LlamaConfig(
        vocab_size=s.vocab,
        hidden_size=s.hidden,
        intermediate_size=s.intermediate,
        num_hidden_layers=1,
        num_attention_heads=s.heads,
        num_key_value_heads=s.kv_heads,
    )
    with torch.device("meta"):
        from transformers import LlamaForCausalLM

        layer = LlamaForCausalLM(config).model.layers[0]
    weights = sum(m.weight.numel() for m in layer.modules() if isinstance(m, torch.nn.Linear))
    sequences, length, logit_positions = 3, 10, 4
    per_sequence = (
        length * (2 * s.layers * weights + 4 * s.layers * s.hidden * length) + logit_positions * 2 * s.hidden * s.vocab
    )
    assert gpu_check["forward_flops"](s, sequences, length, logit_positions) == sequences * per_sequence


@pytest.mark.slow
def test_tiny_gpu_check_runs_on_cpu(gpu_check, tmp_path, cache_dir):
    assert gpu_check["main"](["--tiny", "--budget", "3600", "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    check_tiny_report(report, (tmp_path / "gpu_check.md").read_text())


def check_tiny_report(report: dict, table: str) -> None:
    """Every section of a --tiny run ran, but vLLM's (one line), and every ratio has its figure."""
    sections = report["sections"]
    assert report["finished"] and list(sections) == [
        "zero_estimate",
        "dpo",
        "tgdpo",
        "treg",
        "generate_hf",
        "ppo",
        "ma_ppo",
        "grpo",
        "d3s",
        "vllm",
    ]
    for name, sec in sections.items():
        assert sec["status"] == ("skipped" if name == "vllm" else "ok"), (name, sec)
    assert sections["vllm"]["reason"].startswith("not available: ")
    assert (
        sections["dpo"]["policy_tokens_per_s"] > 0
        and sections["tgdpo"]["tflops_per_step"] > sections["dpo"]["tflops_per_step"]
    )
    assert sections["ppo"]["rollout_s"] > 0 and sections["ma_ppo"]["update_s"] > 0
    assert set(sections["generate_hf"]["batches"]) == {"1", "2", "4"}
    assert sum(sections["d3s"]["kept_samples"]) < sum(sections["grpo"]["kept_samples"])  # D³S trains on fewer samples
    zero = sections["zero_estimate"]["estimates"]
    assert zero["zero3"]["gpu_gib"] < zero["zero2"]["gpu_gib"]  # ZeRO-3 shards the 16-bit weights too
    assert all(value > 0 for value in report["ratios"].values()), report["ratios"]
    assert "| ma_ppo | ok |" in table and "| vllm | skipped | not available: " in table


def test_budget_spent_skips_the_sections_left(gpu_check, tmp_path, cache_dir):
    """Past its budget the check measures nothing more, and still writes what it has, marked skipped."""
    assert gpu_check["main"](["--tiny", "--budget", "0", "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert {sec["status"] for sec in report["sections"].values()} == {"skipped"}
    assert report["sections"]["dpo"]["reason"] == "budget of 0 s spent"


@pytest.fixture(scope="module")
def wheelhouse():
    return runpy.run_path(str(GPU / "wheelhouse.py"), run_name="wheelhouse")


def test_pins_are_within_tokalign_requirements(wheelhouse):
    """The wheelhouse's pins and the lent image's versions are versions tokalign's pyproject admits."""
    import tomllib

    from packaging.requirements import Requirement

    project = tomllib.loads((GPU.parents[1] / "pyproject.toml").read_text())["project"]
    wanted = {wheelhouse["canonical"](r.name): r.specifier for r in map(Requirement, project["dependencies"])}
    image = [line.split("==") for line in (GPU / "image.txt").read_text().splitlines() if "==" in line]
    pinned = [(name, ver) for name, ver, _ in wheelhouse["pins"]()] + image
    checked = [name for name, ver in pinned if wheelhouse["canonical"](name) in wanted]
    assert {"trl", "deepspeed", "wandb", "datasets", "hydra-core", "omegaconf", "torch", "transformers"} <= set(checked)
    for name, ver in pinned:
        spec = wanted.get(wheelhouse["canonical"](name))
        assert spec is None or spec.contains(ver), f"{name}=={ver} is outside tokalign's {name}{spec}"


def test_a_missing_or_stale_wheelhouse_is_refused_in_one_line(wheelhouse, tmp_path, capsys):
    assert wheelhouse["main"](["select", str(tmp_path / "none")]) == 2
    (tmp_path / "SOURCE").write_text("built from another tree\n")
    assert wheelhouse["main"](["select", str(tmp_path)]) == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 2 and "make gpu-wheels" in lines[0] and "other tokalign sources" in lines[1]
    (tmp_path / "SOURCE").write_text(wheelhouse["source_stamp"]() + "\n")
    assert wheelhouse["main"](["select", str(tmp_path)]) == 0
