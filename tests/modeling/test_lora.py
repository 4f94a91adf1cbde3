"""LoRA: a run trains adapters only, `model/` holds a PEFT adapter (and a merged copy), and every reader
loads both forms."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from tests.conftest import compose_config

LORA = ("model.lora.enabled=true", "model.lora.r=4", "model.lora.alpha=8")
PPO_SMALL = (
    "trainer.per_device_batch_size=4",
    "method.max_new_tokens=8",
    "eval.at_end=false",
    "trainer.logging_steps=1",
)


def _tensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path))


def _logits(model, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids).logits


def _ids() -> torch.Tensor:
    return torch.arange(3, 19).reshape(2, 8)


def _lora_spec(**overrides):
    from tokalign.config import LoraSpec

    return OmegaConf.structured(LoraSpec(enabled=True, r=4, alpha=8, **overrides))


def _model_cfg(merge: bool):
    from tokalign.config import ModelConfig

    cfg = OmegaConf.structured(ModelConfig)
    cfg.lora = _lora_spec(merge=merge)
    return cfg


def test_saved_adapter_and_merged_copy_are_the_trained_model(tiny_model, tmp_path):
    """save_trained writes a PEFT adapter `peft` loads, and a merged copy whose outputs are base + adapter's;
    load_pretrained reads the adapter with or without its merged copy, and a plain checkpoint."""
    from peft import PeftModel

    from tokalign.modeling import lora
    from tokalign.modeling.models import load_causal_lm, load_tokenizer

    tokenizer = load_tokenizer(tiny_model)
    model = lora.wrap(load_causal_lm(tiny_model), _lora_spec())
    trainable, total = lora.parameter_counts(model)
    assert 0 < trainable < total and all("lora_" in n for n, p in model.named_parameters() if p.requires_grad)
    with torch.no_grad():  # a trained adapter: lora_B starts at zero
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05, generator=torch.Generator().manual_seed(0))
    trained = _logits(model.eval(), _ids())

    merged_dir = lora.save_trained(model, tokenizer, tmp_path / "merged_run", _model_cfg(merge=True))
    adapter_dir = lora.save_trained(model, tokenizer, tmp_path / "adapter_run", _model_cfg(merge=False))
    assert lora.is_adapter_dir(adapter_dir) and not (adapter_dir / lora.MERGED).exists()
    assert (merged_dir / lora.MERGED / "config.json").is_file()
    saved = _tensors(adapter_dir / "adapter_model.safetensors")
    assert saved and all("lora_" in k for k in saved)  # no base weight in the adapter
    assert json.loads((adapter_dir / "adapter_config.json").read_text())["base_model_name_or_path"] == tiny_model

    by_peft = PeftModel.from_pretrained(load_causal_lm(tiny_model), str(adapter_dir))
    base = _logits(load_causal_lm(tiny_model), _ids())
    assert not torch.allclose(base, trained)
    assert torch.allclose(_logits(by_peft, _ids()), trained, atol=1e-5)
    assert torch.allclose(_logits(load_causal_lm(str(merged_dir / lora.MERGED)), _ids()), trained, atol=1e-5)
    assert torch.allclose(_logits(load_causal_lm(str(adapter_dir)), _ids()), trained, atol=1e-5)
    assert torch.allclose(_logits(load_causal_lm(str(merged_dir)), _ids()), trained, atol=1e-5)
    assert lora.full_model_dir(merged_dir) == str(merged_dir / lora.MERGED)
    assert lora.is_model_dir(tiny_model) and lora.is_model_dir(adapter_dir) and not lora.is_model_dir(tmp_path)


def test_the_base_of_a_trained_adapter_is_the_starting_model(tiny_model):
    """BaseOnly: the PPO loop's reference under LoRA, the policy's forward with its adapters off."""
    from tokalign.modeling import lora
    from tokalign.modeling.models import load_causal_lm

    model = lora.wrap(load_causal_lm(tiny_model), _lora_spec()).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.fill_(0.05)
    base = _logits(load_causal_lm(tiny_model), _ids())
    assert not torch.allclose(_logits(model, _ids()), base)
    assert torch.allclose(lora.BaseOnly(model)(input_ids=_ids()).logits, base, atol=1e-6)
    assert not torch.allclose(_logits(model, _ids()), base)  # the adapters are back on
    assert all(p.requires_grad for n, p in model.named_parameters() if "lora_" in n)


def test_a_method_without_lora_refuses_it(monkeypatch):
    """A method that does not declare LoRA support is refused with LoRA on, in one line, not run in full."""
    from dataclasses import replace

    from tokalign.app.compose import validate
    from tokalign.app.registry import get_method, registry
    from tokalign.errors import ConfigError

    cfg = compose_config("method=dpo", *LORA)
    monkeypatch.setitem(registry(), "no_lora", replace(get_method("dpo"), name="no_lora", lora=False))
    cfg.method.algorithm = "no_lora"
    with pytest.raises(ConfigError, match="cannot train LoRA adapters") as err:
        validate(cfg)
    assert "\n" not in str(err.value)
    cfg.model.lora.enabled = False
    validate(cfg)


def test_vllm_evaluation_of_an_adapter_needs_the_merged_copy():
    from tokalign.errors import ConfigError

    with pytest.raises(ConfigError, match="model.lora.merge=true"):
        compose_config("method=dpo", "rollout.engine=vllm", *LORA)
    compose_config("method=dpo", "rollout.engine=vllm", "model.lora.merge=true", *LORA)


@pytest.mark.slow
def test_ppo_with_lora_trains_only_adapters_and_resumes(train, tiny_model, tmp_path):
    """method=ppo with LoRA: the policy's base weights are unchanged in its checkpoint, model/ and critic/ hold
    adapters (the critic's with its value head), the merged copy is base + adapter, and resume=auto continues
    the adapters exactly."""
    import shutil

    from peft import PeftModel

    from tests.conftest import run_cli
    from tokalign.modeling.models import load_causal_lm

    args = ("method=ppo", *LORA, "model.lora.merge=true", "trainer.max_steps=3", "trainer.save_steps=2", *PPO_SMALL)
    run = train(*args)
    said = (run / "tokalign.log").read_text()
    assert "policy: 10,240 of 150,464 parameters trainable" in said
    # its adapters and its value head (PEFT's trained copy beside the original)
    assert "critic: 10,304 of 150,592 parameters trainable" in said

    base = _tensors(Path(tiny_model) / "model.safetensors")
    state = _tensors(run / "checkpoints" / "checkpoint-2" / "model.safetensors")  # the whole policy
    frozen = {k.removeprefix("base_model.model.").replace(".base_layer", ""): v for k, v in state.items()}
    frozen = {k: v for k, v in frozen.items() if "lora_" not in k}
    assert frozen.keys() == base.keys()
    assert all(torch.equal(frozen[k], base[k]) for k in base)
    assert any(v.abs().sum() > 0 for k, v in state.items() if "lora_B" in k)  # the adapter trained

    assert all("lora_" in k for k in _tensors(run / "model" / "adapter_model.safetensors"))
    assert any(k.endswith("score.weight") for k in _tensors(run / "critic" / "adapter_model.safetensors"))
    by_peft = PeftModel.from_pretrained(load_causal_lm(tiny_model), str(run / "model"))
    merged = load_causal_lm(str(run / "model" / "merged"))
    assert torch.allclose(_logits(by_peft, _ids()), _logits(merged, _ids()), atol=1e-5)

    resumed = tmp_path / "resumed"
    shutil.copytree(run / "checkpoints" / "checkpoint-2", resumed / "checkpoints" / "checkpoint-2")
    run_cli("train", f"hydra.run.dir={resumed}", "logger=none", "resume=auto", "eval.num_prompts=8", *args)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert rows[0]["train/kl"] == 0  # the reference (the policy's base, adapters off) is the starting policy
    after = [json.loads(line) for line in (resumed / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in after] == [3]
    for key in ("train/policy_loss", "train/value_loss", "train/reward"):
        assert after[0][key] == rows[-1][key], key


@pytest.mark.slow
def test_reward_model_with_lora_keeps_its_head_trainable(train, tiny_model):
    """method=reward with LoRA: the adapter carries the trained score head; the scorer reads the adapter alone
    and its merged copy alike, and PPO's critic starts from it."""
    from tokalign.rewards import RewardModelScorer

    run = train("method=reward", *LORA, "model.lora.merge=true", "trainer.max_steps=2", "eval.at_end=false")
    saved = _tensors(run / "model" / "adapter_model.safetensors")
    assert any(k.endswith("score.modules_to_save.default.weight") or k.endswith("score.weight") for k in saved)
    assert "trained model: 10,304 of" in (run / "tokalign.log").read_text()
    prompts, completions = ["What is 1+1?", "Name a colour."], ["2", "blue"]
    merged = RewardModelScorer(str(run / "model" / "merged"))(prompts, completions)

    ppo = train("method=ppo", f"method.reward=model:{run}", *LORA, "trainer.max_steps=1", *PPO_SMALL)
    assert (ppo / "critic" / "adapter_config.json").is_file()  # its own adapter over the merged reward model
    assert json.loads((ppo / "critic" / "adapter_config.json").read_text())["base_model_name_or_path"] == str(
        run / "model" / "merged"
    )

    (run / "model" / "merged" / "config.json").unlink()  # the adapter alone: base + adapter merged on load
    alone = RewardModelScorer(str(run / "model"))(prompts, completions)
    assert alone == pytest.approx(merged, abs=1e-5)
    with pytest.raises(SystemExit):  # a LoRA critic cannot start from an adapter without its merged copy
        train("method=ppo", f"method.reward=model:{run}", *LORA, "trainer.max_steps=1", *PPO_SMALL)


@pytest.mark.slow
@pytest.mark.parametrize(
    "overrides",
    [
        ("method=grpo", "dataset=toy_math", "trainer.per_device_batch_size=8", "method.max_completion_length=8"),
        ("method=d3s_grpo", "dataset=toy_math", "trainer.per_device_batch_size=8", "method.max_completion_length=8"),
        ("method=aligndistil", "trainer.per_device_batch_size=4"),
        ("method=rto", *PPO_SMALL[:2]),
        ("method=ma_ppo", *PPO_SMALL[:2]),
        (
            "method=rltf",
            "dataset=toy_math",
            "trainer.per_device_batch_size=8",
            "method.num_generations=4",
            "method.max_completion_length=8",
            "method.fm_coef=0.1",
        ),
    ],
    ids=["grpo", "d3s_grpo", "aligndistil", "rto", "ma_ppo", "rltf"],
)
def test_methods_save_an_adapter(train, overrides):
    """The GRPO family, AlignDistil and RTO (whose DPO models, built on demand, are LoRA runs themselves) and
    MA-PPO train and save adapters; the evaluation reads them."""
    run = train(*overrides, *LORA, "trainer.max_steps=2", "eval.num_prompts=2", "eval.max_new_tokens=4")
    assert (run / "model" / "adapter_config.json").is_file() and not (run / "model" / "config.json").exists()
    assert "10,240 of 150,464 parameters trainable" in (run / "tokalign.log").read_text()
    assert (run / "eval.json").is_file()
