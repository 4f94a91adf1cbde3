"""QLoRA: the trained model's frozen base loaded quantized by bitsandbytes (`model.quantization=4bit|8bit`).

Only the model a run trains is quantized (the policy of a TRL-based method, a reward model);
its LoRA adapters train in the compute dtype. Frozen models read by the method, evaluation and
`model/merged` (the adapter merged into a full-precision base, the usual QLoRA practice) load
unquantized. `check_available` runs before anything is loaded or written: bitsandbytes
quantizes on CUDA only.
"""

from __future__ import annotations

import importlib.util
from typing import Any

from tokalign.errors import ConfigError


def _setting(model_cfg: Any) -> str:
    return str(getattr(model_cfg.quantization, "value", model_cfg.quantization))


def check_available(model_cfg: Any) -> None:
    """One line naming what a quantized run lacks here: the bitsandbytes package, a CUDA GPU, or both."""
    setting = _setting(model_cfg)
    if setting == "none":
        return
    import torch

    missing = []
    if importlib.util.find_spec("bitsandbytes") is None:
        missing.append("the bitsandbytes package (pip install 'tokalign[qlora]')")
    if not torch.cuda.is_available():
        missing.append("a CUDA GPU (none is visible here)")
    if missing:
        raise ConfigError(
            f"model.quantization={setting} needs " + " and ".join(missing) + "; or model.quantization=none"
        )


def load_kwargs(model_cfg: Any) -> dict[str, Any]:
    """`from_pretrained` arguments of the quantized base (empty when model.quantization=none): NF4 with double
    quantization, or LLM.int8, each process's copy on its own GPU."""
    setting = _setting(model_cfg)
    if setting == "none":
        return {}
    import torch
    from accelerate import PartialState
    from transformers import BitsAndBytesConfig

    dtype = str(getattr(model_cfg.dtype, "value", model_cfg.dtype))
    compute = torch.float16 if dtype == "float16" else torch.bfloat16
    config = (
        BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=compute,
            bnb_4bit_quant_storage=compute,
        )
        if setting == "4bit"
        else BitsAndBytesConfig(load_in_8bit=True)
    )
    return {"quantization_config": config, "device_map": {"": PartialState().local_process_index}}
