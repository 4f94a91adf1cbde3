"""Frozen models beside a TRL trainer's policy: placing them, and running them without gradient."""

from __future__ import annotations

import contextlib

import torch
from trl.models import prepare_deepspeed
from trl.models.utils import disable_gradient_checkpointing


def prepare_frozen(trainer, model: torch.nn.Module) -> torch.nn.Module:
    """A frozen model ready for inference under the trainer's launcher (ZeRO-3: sharded like the policy)."""
    model.eval().requires_grad_(False)
    if trainer.is_deepspeed_enabled:
        return prepare_deepspeed(model, trainer.accelerator)
    return trainer.accelerator.prepare_model(model, evaluation_mode=True)


@contextlib.contextmanager
def frozen_forward(trainer):
    """No gradient, no activation checkpointing, the trainer's autocast."""
    with (
        torch.no_grad(),
        disable_gradient_checkpointing(trainer.model, trainer.args.gradient_checkpointing_kwargs),
        trainer.accelerator.autocast(),
    ):
        yield


def token_logps(model, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """(N, T-1) log-probs of each completion token (0 elsewhere), from a model with TRL's fused LM head."""
    labels = inputs["input_ids"].masked_fill(inputs["completion_mask"] == 0, -100)
    out = model(
        input_ids=inputs["input_ids"],
        attention_mask=inputs["attention_mask"],
        labels=labels,
        use_cache=False,
        fused_lm_head=True,
    )
    # Prompt-learning PEFT prepends virtual tokens; keep the positions of the real ones.
    return out.log_probs[:, -(labels.size(1) - 1) :]
