"""What every TRL-based method shares: training arguments from `cfg.trainer`, logging, guarded saving."""

from __future__ import annotations

import math
from typing import Any

from omegaconf import OmegaConf
from transformers import TrainerCallback

from tokalign.artifacts.checkpoint import latest_checkpoint, seal
from tokalign.artifacts.tracking import say
from tokalign.cluster import preemption
from tokalign.cluster.distributed import backend, deepspeed_config
from tokalign.config import option, world_size
from tokalign.errors import DivergenceError


def trl_args(run, **method_args: Any) -> dict[str, Any]:
    """Keyword arguments for a TRL `*Config`, from the shared trainer knobs plus the method's."""
    t, cfg = run.cfg.trainer, run.cfg
    precision = option(t.precision)
    args = dict(
        output_dir=str(run.dir / "checkpoints"),
        learning_rate=t.learning_rate,
        lr_scheduler_type=option(t.lr_scheduler),
        lr_scheduler_kwargs=OmegaConf.to_container(t.lr_scheduler_kwargs),
        adam_beta1=t.adam_betas[0],
        adam_beta2=t.adam_betas[1],
        warmup_steps=t.warmup_ratio,
        weight_decay=t.weight_decay,
        max_grad_norm=t.max_grad_norm,
        per_device_train_batch_size=t.per_device_batch_size,
        per_device_eval_batch_size=t.per_device_batch_size,
        gradient_accumulation_steps=t.gradient_accumulation_steps,
        max_steps=t.max_steps if t.max_steps > 0 else -1,
        num_train_epochs=t.num_epochs,
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        **{_CHECKPOINTING: t.gradient_checkpointing},
        logging_steps=t.logging_steps,
        logging_first_step=True,  # a run shorter than logging_steps still logs its first and last loss
        save_strategy="steps" if t.save_steps > 0 else "no",
        save_steps=max(t.save_steps, 1),
        save_total_limit=t.save_total_limit,
        eval_strategy="no",  # eval.every_steps: tokalign's generation evaluation (EvaluationCallback)
        seed=cfg.seed,
        data_seed=cfg.seed,
        report_to="none",
        dataloader_num_workers=t.num_workers,
        dataloader_pin_memory=_has_gpu(),  # pinning needs an accelerator; torch warns on every loader otherwise
        disable_tqdm=False,
        max_length=t.max_length,
        # The HF default replaces a NaN/inf step loss by the running mean, hiding divergence.
        logging_nan_inf_filter=False,
    )
    launcher = cfg.launcher
    if launcher.name == "ddp" and world_size(launcher) > 1:
        import torch

        # Without use_cpu, accelerate treats CPU ranks as unrelated single processes.
        args.update(
            ddp_backend=backend(launcher.backend),
            use_cpu=not torch.cuda.is_available(),
            ddp_find_unused_parameters=False,
        )
    elif launcher.name == "deepspeed":
        args.update(deepspeed=deepspeed_config(cfg), accelerator_config={"use_configured_state": True})
    args.update(method_args)
    return args


def _checkpointing_name() -> str:
    """Newer transformers call `gradient_checkpointing` `activation_checkpointing` (the old name warns);
    5.17, the oldest supported (the GPU image's), knows only the old one."""
    import dataclasses

    from transformers import TrainingArguments

    names = {f.name for f in dataclasses.fields(TrainingArguments)}
    return "activation_checkpointing" if "activation_checkpointing" in names else "gradient_checkpointing"


_CHECKPOINTING = _checkpointing_name()


def _has_gpu() -> bool:
    import torch

    return torch.cuda.is_available()


def peft_config(run, task: str = "CAUSAL_LM"):
    """The run's LoRA config for a TRL trainer (None: LoRA off); task SEQ_CLS keeps the score head trainable."""
    from tokalign.modeling.lora import lora_config

    return lora_config(run.cfg.model.lora, task)


def _finite_parameters(model) -> bool:
    """Every parameter this process holds is finite (ZeRO-3 shards: this rank's part)."""
    import torch

    for p in model.parameters():
        data = getattr(p, "ds_tensor", p)
        if data.numel() and not torch.isfinite(data).all():
            return False
    return True


class TrackerCallback(TrainerCallback):
    """Sends the trainer's logs to the run's tracker (metrics.jsonl + W&B); stops before a bad save.

    The first and the last step are always logged (with the logging_steps between them).

    Before every checkpoint the loss and gradient norm are logged (the logged loss sums every
    step since the previous log, so a NaN anywhere stays NaN) and the weights are checked, so a
    diverged model is never saved: a `DivergenceError` stops the run first.
    """

    def __init__(self, tracker):
        self.tracker = tracker

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step >= state.max_steps:  # the last loss, whatever logging_steps
            control.should_log = True
        if control.should_save:
            control.should_log = True
            if model is not None and not _finite_parameters(model):
                raise DivergenceError(
                    f"the weights became non-finite at step {state.global_step}; nothing was saved. "
                    "Lower trainer.learning_rate or check the data; resume=auto continues the last good checkpoint"
                )

    def on_log(self, args, state, control, logs=None, **kwargs):
        logs = dict(logs or {})
        for key in ("loss", "grad_norm", "eval_loss"):
            if key in logs and logs[key] is not None and not math.isfinite(float(logs[key])):
                raise DivergenceError(
                    f"{key} became {logs[key]} at step {state.global_step}; nothing was saved. "
                    "Lower trainer.learning_rate or check the data; resume=auto continues the last good checkpoint"
                )
        row = {(f"eval/{k[5:]}" if k.startswith("eval_") else f"train/{k}"): v for k, v in logs.items()}
        self.tracker.log(row, step=state.global_step)


class EvaluationCallback(TrainerCallback):
    """Every eval.every_steps steps, the run's generation evaluation of the policy in training
    (`RunContext.evaluate_during`: eval/* rows, and the best policy kept with eval.keep=best)."""

    def __init__(self, run):
        self.run = run

    def on_step_end(self, args, state, control, model=None, **kwargs):
        every = self.run.cfg.eval.every_steps
        if model is not None and every > 0 and state.global_step % every == 0:
            self.run.evaluate_during(model, state.global_step)


class SealCallback(TrainerCallback):
    """Seals each checkpoint once every rank has written its part (see tokalign.artifacts.checkpoint)."""

    def on_save(self, args, state, control, **kwargs):
        import torch.distributed as dist

        if dist.is_initialized():
            dist.barrier()
        if state.is_world_process_zero:
            seal(f"{args.output_dir}/checkpoint-{state.global_step}")


class PreemptionCallback(TrainerCallback):
    """SIGTERM or Ctrl-C stops at the next step (after sealing the checkpoint due at that step, if
    one is); SIGUSR2 saves a checkpoint there first, then hands the process over to the
    scheduler's handler (tokalign.cluster.preemption). Added after SealCallback."""

    def __init__(self):
        self.handing_over = False
        self.stopping: preemption.Request | None = None

    def on_train_begin(self, args, state, control, **kwargs):
        preemption.install()  # run_trainer uninstalls

    def on_step_end(self, args, state, control, **kwargs):
        request = preemption.poll()
        if request.stop:
            if control.should_save:  # due at this step: sealed first, then on_save stops
                self.stopping = request
                return
            raise _stopped(args, state, request)
        if request.checkpoint:
            control.should_save = control.should_log = self.handing_over = True

    def on_save(self, args, state, control, **kwargs):
        if self.stopping is not None:
            raise _stopped(args, state, self.stopping)
        if self.handing_over:
            say(f"preempted: saved checkpoint-{state.global_step}, handing over for requeue")
            preemption.hand_over()


def _stopped(args, state, request) -> preemption.Stopped:
    last = latest_checkpoint(args.output_dir)
    return request.stopped(
        f"at step {state.global_step}", f"resume=auto continues from {last}" if last else "no sealed checkpoint yet"
    )


def _check_final(model, state_dict, step: int, output_dir: str) -> None:
    """The final weights are finite before they are written (a run shorter than logging_steps logs no loss)."""
    import torch

    tensors = (
        state_dict.values() if state_dict is not None else (getattr(p, "ds_tensor", p) for p in model.parameters())
    )
    if all(torch.isfinite(t).all() for t in tensors if t.numel()):
        return
    last = latest_checkpoint(output_dir)
    raise DivergenceError(
        f"the weights are non-finite after the last step ({step}); the final model was not saved. "
        "Lower trainer.learning_rate or check the data; "
        + (f"{last} is the last finite checkpoint" if last else "no checkpoint was sealed")
    )


def run_trainer(run, trainer) -> dict[str, Any]:
    """Train (resuming when asked), save the final model atomically, return the last logged values."""
    from transformers.integrations import is_deepspeed_zero3_enabled

    from tokalign.modeling.lora import describe_parameters

    if run.rank == 0 and not getattr(run, "nested", False):  # a nested run's outer run says what it builds
        say(describe_parameters(trainer.model, "trained model"))
    trainer.add_callback(TrackerCallback(run.tracker))
    trainer.add_callback(EvaluationCallback(run))
    trainer.add_callback(SealCallback())
    trainer.add_callback(PreemptionCallback())
    resume = run.resume_checkpoint()
    try:
        result = trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    finally:
        preemption.uninstall()
    # Under ZeRO-3 each rank holds a shard: every rank takes part in gathering the weights.
    state_dict = trainer.accelerator.get_state_dict(trainer.model_wrapped) if is_deepspeed_zero3_enabled() else None
    model = trainer.accelerator.unwrap_model(trainer.model)  # a PEFT model is saved as its adapter
    _check_final(model, state_dict, trainer.state.global_step, str(run.dir / "checkpoints"))
    run.save_model(model, trainer.processing_class, state_dict=state_dict)
    history = [h for h in trainer.state.log_history if "loss" in h]
    return {
        "train/loss_first": history[0]["loss"] if history else None,
        "train/loss_last": history[-1]["loss"] if history else None,
        "train/runtime_s": result.metrics.get("train_runtime"),
        "train/steps": trainer.state.global_step,
    }
