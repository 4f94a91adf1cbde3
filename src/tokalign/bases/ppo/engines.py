"""Where the loop's models live: one process, DDP (accelerate), or DeepSpeed ZeRO engines.

Under `launcher=deepspeed` the policy and the critic are two DeepSpeed engines built by
accelerate from the run's DeepSpeed JSON (`tokalign.cluster.distributed.deepspeed_config`); each steps
its own optimizer through its engine, since accelerate's `backward` drives only the first
engine it prepared. The frozen models (reference, reward model, a method's extra ones) become
inference engines (TRL's `prepare_deepspeed`): sharded under ZeRO-3, plain copies in the
engines' precision otherwise. Under ZeRO-3 generation runs on gathered weights.
Everything else is the same code on every backend.
"""

from __future__ import annotations

import math
from contextlib import contextmanager

import torch

from tokalign.errors import DivergenceError
from tokalign.losses import whiten


def make_accelerator(cfg):
    """The run's `Accelerator`: DeepSpeed (from the run's JSON) under `launcher=deepspeed`, else DDP or one process."""
    from accelerate import Accelerator
    from accelerate.utils import DeepSpeedPlugin

    from tokalign.cluster.distributed import deepspeed_config
    from tokalign.config import option

    precision = option(cfg.trainer.precision)
    mixed = "no" if precision == "fp32" else precision
    if cfg.launcher.name == "deepspeed":
        # Built before any model: under ZeRO-3 transformers then loads every model as shards.
        return Accelerator(mixed_precision=mixed, deepspeed_plugin=DeepSpeedPlugin(hf_ds_config=deepspeed_config(cfg)))
    # cpu=True on CPU-only machines: otherwise accelerate treats CPU ranks as unrelated single processes
    return Accelerator(mixed_precision=mixed, cpu=not torch.cuda.is_available())


def uses_deepspeed(accelerator) -> bool:
    from accelerate.utils import DistributedType

    return accelerator.distributed_type == DistributedType.DEEPSPEED


def zero_stage(accelerator) -> int:
    return accelerator.state.deepspeed_plugin.zero_stage if uses_deepspeed(accelerator) else 0


class Trained:
    """A trained model's backward pass and optimizer step, on whichever backend prepared it.

    `backward` once per micro-batch, `step` once per minibatch (every `accumulation` micro-batches):
    it clips the gradient to `max_grad_norm` (0: no clipping), steps, and returns the norm before
    clipping; a non-finite norm stops the run before anything is saved.
    """

    def __init__(self, model, optimizer, accelerator, *, accumulation: int, max_grad_norm: float, what: str):
        self.model, self.optimizer, self.accelerator = model, optimizer, accelerator
        self.accumulation, self.max_grad_norm, self.what = accumulation, max_grad_norm, what
        self.deepspeed = uses_deepspeed(accelerator)

    def backward(self, loss: torch.Tensor) -> None:
        if self.deepspeed:  # the engine divides by its gradient_accumulation_steps and steps at its boundary
            self.model.backward(loss)
            self.model.step()
        else:
            self.accelerator.backward(loss / self.accumulation)

    def step(self) -> float:
        if self.deepspeed:  # clipped (gradient_clipping) and stepped by the engine; skipped when not finite
            norm = self.model.get_global_grad_norm()
            norm = float("nan") if norm is None else float(norm)
        else:
            limit = self.max_grad_norm if self.max_grad_norm > 0 else float("inf")
            norm = float(self.accelerator.clip_grad_norm_(self.model.parameters(), limit))
        if not math.isfinite(norm):
            raise DivergenceError(
                f"the {self.what} gradient norm became {norm}; nothing was saved. "
                "Lower trainer.learning_rate; resume=auto continues the last good checkpoint"
            )
        if not self.deepspeed:
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
        return norm


def prepare_frozen(model, accelerator):
    """A model that only scores: no gradients, eval mode, on the device; an inference engine under DeepSpeed."""
    model.requires_grad_(False).eval()
    if not uses_deepspeed(accelerator):
        return model.to(accelerator.device)
    from trl.models import prepare_deepspeed

    return prepare_deepspeed(model, accelerator)


@contextmanager
def generation_model(model, accelerator):
    """The policy as `generate` needs it: unwrapped, with its whole weights gathered under ZeRO-3 (each
    rank then generates alone, whatever its responses' lengths)."""
    if zero_stage(accelerator) == 3:
        from trl.models import unwrap_model_for_generation

        with unwrap_model_for_generation(model, accelerator) as unwrapped:
            yield unwrapped
    else:
        yield accelerator.unwrap_model(model)


def rollout_whiten(accelerator):
    """`losses.whiten` over the whole rollout: in one process the function itself; under several, over
    every rank's rows (gathered), so a run's advantages do not depend on its number of processes."""
    if accelerator.num_processes == 1:
        return whiten

    def whiten_all(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool) -> torch.Tensor:
        every_x = accelerator.gather(accelerator.pad_across_processes(x, dim=1))  # every rank holds as many rows
        every_mask = accelerator.gather(accelerator.pad_across_processes(mask, dim=1))
        start = accelerator.process_index * len(x)
        return whiten(every_x, every_mask, shift_mean)[start : start + len(x), : x.shape[1]]

    return whiten_all


def whole_state_dict(accelerator, model):
    """The full weights of a model ZeRO-3 holds as shards (every rank must call); None elsewhere."""
    return accelerator.get_state_dict(model) if zero_stage(accelerator) == 3 else None


def all_finite(accelerator, *models) -> bool:
    """Every weight of every model is finite, on every rank (ZeRO-3 ranks check their shards)."""
    ok = all(torch.isfinite(getattr(p, "ds_tensor", p)).all() for model in models for p in model.parameters())
    return bool(accelerator.gather(torch.tensor([float(ok)], device=accelerator.device)).min() > 0)
