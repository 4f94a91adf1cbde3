"""rollout.engine=vllm on CPU: the config group, vLLM's arguments, the one-line error where vLLM
cannot run, and the weight-sync bookkeeping (which tensors reach the engine, and when).

vLLM itself needs a GPU: `RecordingLLM` stands in for the few `vllm.LLM` calls `VLLMEngine.sync`
makes and records them.
"""

from __future__ import annotations

import copy
from types import SimpleNamespace

import pytest
import torch

from tests.conftest import compose_config
from tokalign.errors import ConfigError
from tokalign.modeling.vllm_engine import (
    VLLMEngine,
    llm_kwargs,
    policy_weights,
    trl_vllm_args,
    unavailable_reason,
)


class RecordingLLM:
    """The surface of `vllm.LLM` that `VLLMEngine.sync` uses; it records every call and tensor."""

    def __init__(self):
        self.calls, self.received = [], {}
        runner = SimpleNamespace(model=SimpleNamespace(load_weights=self.load_weights))
        self.llm_engine = SimpleNamespace(
            model_executor=SimpleNamespace(driver_worker=SimpleNamespace(model_runner=runner))
        )

    def load_weights(self, weights):
        for name, tensor in weights:
            self.calls.append(("load", name))
            self.received[name] = tensor.clone()

    def reset_prefix_cache(self):
        self.calls.append(("reset_prefix_cache",))

    def sleep(self, level):
        self.calls.append(("sleep", level))

    def wake_up(self, tags):
        self.calls.append(("wake_up", *tags))


def checkpoint_tensors(model, tmp_path) -> dict[str, torch.Tensor]:
    """What `save_pretrained` writes: the names and tensors vLLM loads from a checkpoint directory."""
    from safetensors.torch import load_file

    model.save_pretrained(tmp_path)
    return load_file(str(tmp_path / "model.safetensors"))


def test_rollout_group_defaults_to_transformers():
    cfg = compose_config("method=grpo")
    assert cfg.rollout.engine == "hf" and trl_vllm_args(cfg.rollout) == {}
    assert trl_vllm_args(None) == {}  # run dirs written before the group existed


def grpo_config(tmp_path, *overrides):
    """The GRPOConfig `method=...` trains with, built by the method from a real Run."""
    from tokalign.bases.grpo.config import grpo_args
    from tokalign.runtime.run import Run

    return grpo_args(Run(compose_config("dataset=toy_math", "logger=none", f"output_dir={tmp_path}", *overrides)))


def test_trl_gets_every_vllm_knob(tmp_path, cache_dir):
    from trl import GRPOConfig

    default = grpo_config(tmp_path / "hf", "method=grpo")
    vllm_fields = [f for f in vars(default) if f.startswith("vllm_") or f == "use_vllm"]
    assert default.use_vllm is False
    assert all(getattr(default, f) == GRPOConfig.__dataclass_fields__[f].default for f in vllm_fields)
    args = grpo_config(
        tmp_path / "server",
        "method=grpo",
        "rollout.engine=vllm",
        "rollout.mode=server",
        "rollout.server_host=gpu07",
        "rollout.server_port=8123",
        "rollout.server_timeout=60",
        "rollout.gpu_memory_utilization=0.5",
        "rollout.enable_sleep_mode=true",
    )
    assert (args.use_vllm, args.vllm_mode, args.vllm_server_host, args.vllm_server_port, args.vllm_server_timeout) == (
        True,
        "server",
        "gpu07",
        8123,
        60.0,
    )
    assert (args.vllm_gpu_memory_utilization, args.vllm_tensor_parallel_size, args.vllm_enable_sleep_mode) == (
        0.5,
        1,
        True,
    )
    changed = {f for f, v in default.to_dict().items() if v != args.to_dict()[f]} - {"output_dir"}
    assert changed == {
        "use_vllm",
        "vllm_mode",
        "vllm_server_host",
        "vllm_server_port",
        "vllm_server_timeout",
        "vllm_gpu_memory_utilization",
        "vllm_enable_sleep_mode",
    }


def test_rollout_relations_and_ranges():
    with pytest.raises(ConfigError, match="rollout.tensor_parallel_size=2 must divide the 1 training"):
        compose_config("method=grpo", "rollout.engine=vllm", "rollout.tensor_parallel_size=2")
    assert (
        compose_config(
            "method=grpo",
            "rollout.engine=vllm",
            "rollout.tensor_parallel_size=2",
            "launcher=ddp",
            "launcher.num_gpus=4",
            "trainer.per_device_batch_size=8",
        ).rollout.tensor_parallel_size
        == 2
    )
    with pytest.raises(ConfigError, match="rollout.gpu_memory_utilization=1.5 is out of range"):
        compose_config("method=grpo", "rollout.gpu_memory_utilization=1.5")


def test_engine_arguments_colocated_and_standalone():
    rollout = compose_config("method=ppo", "rollout.engine=vllm", "rollout.enable_sleep_mode=true").rollout
    colocated = llm_kwargs("/m", rollout, colocated=True, seed=3, dtype="bfloat16", max_model_len=128, max_num_seqs=16)
    assert colocated == dict(
        model="/m",
        dtype="bfloat16",
        seed=3,
        gpu_memory_utilization=0.3,
        max_model_len=128,
        trust_remote_code=False,
        distributed_executor_backend="external_launcher",
        max_num_seqs=16,
        enable_sleep_mode=True,
    )
    standalone = llm_kwargs("/m", rollout, colocated=False)
    assert standalone["tensor_parallel_size"] == 1 and "distributed_executor_backend" not in standalone
    server = compose_config("method=ppo", "rollout.engine=vllm", "rollout.mode=server").rollout
    with pytest.raises(ConfigError, match="use rollout.mode=colocate"):
        llm_kwargs("/m", server, colocated=True)


@pytest.mark.skipif(unavailable_reason() is None, reason="vLLM can run on this machine")
def test_a_machine_without_vllm_gets_one_line(train, capsys, tmp_path):
    from tokalign.modeling.on_policy import build_pairs
    from tokalign.modeling.vllm_engine import EngineUnavailable

    with pytest.raises(SystemExit) as exit_:
        train("method=grpo", "dataset=toy_math", "rollout.engine=vllm", "trainer.max_steps=1")
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("tokalign: error: rollout.engine=vllm for grpo rollouts: ")
    assert "use rollout.engine=hf" in err[-1] and "Traceback" not in "\n".join(err)
    rollout = compose_config("method=ppo", "rollout.engine=vllm").rollout
    with pytest.raises(EngineUnavailable, match=unavailable_reason().split(" (")[0]):
        VLLMEngine.start("/m", rollout, colocated=False)
    with pytest.raises(EngineUnavailable):
        build_pairs(
            ["hi"],
            model=None,
            tokenizer=None,
            model_path="/m",
            scorer=None,
            scorer_name="s",
            num_samples=2,
            temperature=1.0,
            max_new_tokens=4,
            batch_size=2,
            seed=0,
            cache_dir=tmp_path,
            rollout=rollout,
        )
    assert not list((tmp_path / "data").glob("*.jsonl"))


def test_policy_weights_are_the_checkpoint_tensors(tiny_model, tmp_path):
    from tokalign.modeling.models import load_causal_lm

    model = load_causal_lm(tiny_model)
    names = [name for name, _ in policy_weights(model)]
    saved = checkpoint_tensors(model, tmp_path)
    assert sorted(names) == sorted(saved) and len(names) == len(set(names))  # tied weights once, as saved
    assert all(torch.equal(tensor, saved[name]) for name, tensor in policy_weights(model))


def test_lora_weights_reach_the_engine_merged(tiny_model, tmp_path):
    from peft import LoraConfig, get_peft_model

    from tokalign.modeling.models import load_causal_lm

    model = get_peft_model(load_causal_lm(tiny_model), LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"))
    for name, param in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=0.1, generator=torch.Generator().manual_seed(0))
    before = {n: p.clone() for n, p in model.named_parameters()}
    pushed = {name: tensor.clone() for name, tensor in policy_weights(model)}
    merged = checkpoint_tensors(copy.deepcopy(model).merge_and_unload(), tmp_path)
    assert sorted(pushed) == sorted(merged)
    assert all(torch.allclose(pushed[n], merged[n], atol=1e-6) for n in merged)
    assert not torch.equal(
        pushed["model.layers.0.self_attn.q_proj.weight"],
        before["base_model.model.model.layers.0.self_attn.q_proj.base_layer.weight"],
    )
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())  # the policy is left as it was


def test_sync_pushes_every_tensor_once_per_policy_version(tiny_model, tmp_path):
    from tokalign.modeling.models import load_causal_lm

    policy = load_causal_lm(tiny_model)
    llm = RecordingLLM()
    engine = VLLMEngine(llm)
    assert not engine.sync(policy, 0) and llm.calls == []  # started from the policy's checkpoint
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(0.01)
    assert engine.sync(policy, 1)
    assert llm.received.keys() == checkpoint_tensors(policy, tmp_path).keys()
    assert all(torch.equal(llm.received[n], t) for n, t in policy_weights(policy))
    assert [c[0] for c in llm.calls] == ["load"] * len(llm.received) + ["reset_prefix_cache"]
    llm.calls.clear()
    assert not engine.sync(policy, 1) and llm.calls == []


def test_sleeping_engine_wakes_its_weights_before_each_push(tiny_model):
    from tokalign.modeling.models import load_causal_lm

    policy = load_causal_lm(tiny_model)
    llm = RecordingLLM()
    engine = VLLMEngine(llm, sleeps=True)
    assert llm.calls == [("sleep", 2)] and engine.version is None  # level 2 drops the checkpoint's weights
    assert engine.sync(policy, 0)
    assert llm.calls[1] == ("wake_up", "weights") and llm.calls[-1] == ("reset_prefix_cache",)
    with pytest.raises(RuntimeError, match="holds no weights"):
        VLLMEngine(RecordingLLM(), sleeps=True).sample([[1, 2]], max_new_tokens=2)
