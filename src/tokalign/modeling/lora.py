"""LoRA adapters: the PEFT config a run trains, what a LoRA run saves, and loading it back.

A LoRA run's `model/` holds the adapter in PEFT's own format (adapter_config.json,
adapter_model.safetensors, whose base_model_name_or_path is the starting policy) and the
tokenizer: `peft.PeftModel.from_pretrained(base, "<run>/model")` loads it. With
`model.lora.merge=true` it also holds `merged/`, the base with the adapter merged in, a plain
checkpoint any tool reads. `load_pretrained` reads all three forms (a full model, an adapter,
an adapter with its merged copy), so evaluation, `inspect`, resuming and the frozen models of
other runs (a DPO model trained with LoRA) never need to know which one they got.
"""

from __future__ import annotations

import json
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tokalign.errors import ModelError

ADAPTER_CONFIG = "adapter_config.json"
MERGED = "merged"
# PEFT's names for the trained task: a causal LM, or a sequence classifier (reward model, critic)
# whose new score head is trained whole beside the adapter (PEFT adds it to modules_to_save).
CAUSAL_LM, SEQ_CLS = "CAUSAL_LM", "SEQ_CLS"


def lora_config(lora: Any, task: str = CAUSAL_LM):
    """The `peft.LoraConfig` of `model.lora`, or None when LoRA is off."""
    if not lora.enabled:
        return None
    from peft import LoraConfig

    modules = lora.target_modules
    return LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=modules if isinstance(modules, str) else list(modules),
        modules_to_save=["score"] if task == SEQ_CLS else None,
        task_type=task,
    )


def is_adapter_dir(path: str | os.PathLike) -> bool:
    return (Path(path) / ADAPTER_CONFIG).is_file() and not (Path(path) / "config.json").is_file()


def is_model_dir(path: str | os.PathLike) -> bool:
    """A directory `load_pretrained` reads: a full checkpoint or a LoRA adapter."""
    return (Path(path) / "config.json").is_file() or is_adapter_dir(path)


def full_model_dir(path: str | os.PathLike) -> str:
    """A directory holding whole weights for readers that take no adapter (vLLM): an adapter's merged copy."""
    merged = Path(path) / MERGED
    return str(merged) if is_adapter_dir(path) and (merged / "config.json").is_file() else str(path)


def adapter_base(path: str | os.PathLike) -> str:
    """The starting model an adapter was trained on (PEFT's base_model_name_or_path)."""
    try:
        base = json.loads((Path(path) / ADAPTER_CONFIG).read_text()).get("base_model_name_or_path")
    except (OSError, ValueError) as err:
        raise ModelError(f"{path}/{ADAPTER_CONFIG} is not a readable PEFT adapter config ({err})") from None
    if not base:
        raise ModelError(f"{path}/{ADAPTER_CONFIG} names no base model (base_model_name_or_path)")
    return str(base)


def load_pretrained(auto_class: Any, path: str, **kwargs: Any):
    """`auto_class.from_pretrained(path)` for a full checkpoint; for an adapter dir its merged copy when
    saved, else the adapter's base with the adapter merged in (in memory)."""
    whole = full_model_dir(path)
    if not is_adapter_dir(path) or whole != str(path):
        return auto_class.from_pretrained(whole, **kwargs)
    from peft import PeftModel

    with _quiet_load_report():  # a SEQ_CLS base misses its head by design: the adapter brings it
        base = auto_class.from_pretrained(adapter_base(path), **kwargs)
    return PeftModel.from_pretrained(base, path).merge_and_unload()


@contextmanager
def _quiet_load_report():
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)


def wrap(model: Any, lora: Any, task: str = CAUSAL_LM, gradient_checkpointing: bool = False):
    """The model with fresh LoRA adapters (only they, and a SEQ_CLS head, train); unchanged when LoRA is off."""
    config = lora_config(lora, task)
    if config is None:
        return model
    from peft import get_peft_model

    if gradient_checkpointing:  # the frozen embeddings' outputs must carry gradients into checkpointed blocks
        model.enable_input_require_grads()
    return get_peft_model(model, config)


class BaseOnly:
    """A PEFT model's base as a frozen model: its forward with the adapters disabled. Not a module, so that
    nothing that freezes or moves frozen models touches the trained adapters."""

    def __init__(self, model: Any):
        self.model = model

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        with self.model.disable_adapter():
            return self.model(*args, **kwargs)


def parameter_counts(model: Any) -> tuple[int, int]:
    """(trainable, total) parameters; ZeRO-3 shards count whole."""
    trainable = total = 0
    for p in model.parameters():
        n = getattr(p, "ds_numel", p.numel())
        total += n
        trainable += n if p.requires_grad else 0
    return trainable, total


def describe_parameters(model: Any, what: str) -> str:
    trainable, total = parameter_counts(model)
    share = 100 * trainable / max(total, 1)
    return f"{what}: {trainable:,} of {total:,} parameters trainable ({share:.2f}%)"


def save_trained(model: Any, tokenizer: Any, dest: Path, model_cfg: Any, state_dict: dict | None = None) -> Path:
    """Write a trained model atomically: whole, or a PEFT model's adapter, with `model_cfg.lora.merge` a merged
    copy too, built from a fresh base (loaded as `model_cfg` says) and the saved adapter, so that the trained
    model is left as it is. `state_dict`: weights gathered from ZeRO-3 shards."""
    from tokalign.artifacts.checkpoint import save_pretrained_atomic
    from tokalign.artifacts.files import atomic_dir

    if not hasattr(model, "peft_config"):
        return save_pretrained_atomic(model, tokenizer, dest, state_dict=state_dict)
    base = model.get_base_model()
    source = model.peft_config["default"].base_model_name_or_path

    def write(tmp: Path) -> None:
        model.save_pretrained(tmp, safe_serialization=True, state_dict=state_dict)
        tokenizer.save_pretrained(tmp)
        if not model_cfg.lora.merge:
            return
        import torch
        from peft import PeftModel

        dtype = str(getattr(model_cfg.dtype, "value", model_cfg.dtype))
        seq_cls = type(base).__name__.endswith("ForSequenceClassification")
        with _quiet_load_report():  # a SEQ_CLS base misses its head: the adapter brings it
            fresh = type(base).from_pretrained(
                source,
                dtype="auto" if dtype == "auto" else getattr(torch, dtype),
                trust_remote_code=model_cfg.trust_remote_code,
                **({"num_labels": base.config.num_labels} if seq_cls else {}),
            )
        merged = PeftModel.from_pretrained(fresh, str(tmp)).merge_and_unload()
        merged.config.pad_token_id = base.config.pad_token_id
        merged.save_pretrained(tmp / MERGED, safe_serialization=True)
        tokenizer.save_pretrained(tmp / MERGED)

    return atomic_dir(dest, write)
