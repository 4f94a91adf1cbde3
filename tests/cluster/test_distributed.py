"""DeepSpeed's JSON takes every number from the run's config."""

from __future__ import annotations

from omegaconf import OmegaConf

from tests.conftest import compose_config
from tokalign.cluster.distributed import deepspeed_config


def _cfg(*overrides: str):
    cfg = compose_config(*overrides)
    OmegaConf.resolve(cfg)
    return cfg


def test_deepspeed_json_takes_every_number_from_the_config():
    cfg = _cfg(
        "launcher=deepspeed",
        "launcher.zero_stage=3",
        "launcher.num_gpus=8",
        "trainer.per_device_batch_size=4",
        "trainer.gradient_accumulation_steps=8",
        "trainer.max_grad_norm=0.5",
        "trainer.precision=bf16",
        "launcher.offload_optimizer=cpu",
        "launcher.offload_param=cpu",
        "trainer.learning_rate=1e-6",
        "+launcher.config={zero_optimization: {overlap_comm: true}}",
    )
    ds = deepspeed_config(cfg)
    assert ds["train_micro_batch_size_per_gpu"] == 4 and ds["gradient_accumulation_steps"] == 8
    assert ds["gradient_clipping"] == 0.5 and ds["bf16"]["enabled"] and not ds["fp16"]["enabled"]
    zero = ds["zero_optimization"]
    assert (
        zero["stage"] == 3 and zero["offload_optimizer"]["device"] == "cpu" and zero["offload_param"]["device"] == "cpu"
    )
    assert zero["stage3_gather_16bit_weights_on_model_save"] and zero["overlap_comm"] is True
    assert ds["optimizer"]["params"]["lr"] == 1e-6  # offloaded: DeepSpeed's AdamW at the trainer's rate
    assert "train_batch_size" not in ds


def test_zero2_without_offload_keeps_the_torch_optimizer():
    ds = deepspeed_config(_cfg("launcher=deepspeed", "trainer.precision=fp16"))
    assert ds["zero_optimization"]["stage"] == 2 and "optimizer" not in ds and ds["fp16"]["enabled"]
    assert "offload_param" not in ds["zero_optimization"]
