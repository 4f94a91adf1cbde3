"""What a training process needs to know about its peers: the backend and DeepSpeed's JSON.

Both are pure functions of the resolved config, so the launcher parent, every worker and the
trainers agree on them without talking to each other.
"""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig, OmegaConf

from tokalign.config import option


def backend(requested: str) -> str:
    """The torch.distributed backend: nccl with GPUs, gloo without (unless one is named)."""
    import torch

    requested = option(requested)
    if requested != "auto":
        return requested
    return "nccl" if torch.cuda.is_available() else "gloo"


def deepspeed_config(cfg: DictConfig) -> dict[str, Any]:
    """The DeepSpeed JSON for this run, every number taken from the config."""
    t, la = cfg.trainer, cfg.launcher
    precision = option(t.precision)
    zero: dict[str, Any] = {"stage": la.zero_stage, "overlap_comm": False, "contiguous_gradients": True}
    for key, device in (
        ("offload_optimizer", option(la.offload_optimizer)),
        ("offload_param", option(la.offload_param)),
    ):
        if device != "none":
            zero[key] = {
                "device": device,
                "pin_memory": True,
                **({"nvme_path": la.nvme_path} if device == "nvme" else {}),
            }
    if la.zero_stage == 3:
        zero["stage3_gather_16bit_weights_on_model_save"] = True
    # No train_batch_size: DeepSpeed derives it (micro x accumulation x world size), and the HF
    # Trainer checks it against a world size of 1 before the process group is known.
    ds: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": t.per_device_batch_size,
        "gradient_accumulation_steps": t.gradient_accumulation_steps,
        "gradient_clipping": t.max_grad_norm,
        "zero_optimization": zero,
        "bf16": {"enabled": precision == "bf16"},
        "fp16": {"enabled": precision == "fp16", "loss_scale": 0, "initial_scale_power": 16},
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }
    if option(la.offload_optimizer) != "none":
        # An offloaded optimizer steps on the CPU: DeepSpeed's own (compiled) AdamW. Otherwise
        # the HF Trainer's torch optimizer is used and no DeepSpeed op is compiled.
        ds["optimizer"] = {
            "type": "AdamW",
            "params": {
                "lr": t.learning_rate,
                "weight_decay": t.weight_decay,
                "betas": [0.9, 0.999],
                "eps": 1e-8,
            },
        }
    return _merge(
        ds, OmegaConf.to_container(la.config, resolve=True) if isinstance(la.config, DictConfig) else dict(la.config)
    )


def _merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for k, v in extra.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out
