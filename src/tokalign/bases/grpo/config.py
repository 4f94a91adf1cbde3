"""GRPO settings and the trainer built from them (TRL's GRPOTrainer), shared by the GRPO family.

`trainer.per_device_batch_size` counts completions (TRL's convention): with every process, a
multiple of `num_generations`. The trainer adds token accounting to TRL's logs so that every
GRPO-family run reports the same usage figures (kept samples and tokens per step, cumulative
trained tokens, sample usefulness, accuracy on a verifiable reward). `rollout.engine=vllm`
hands generation to TRL's own vLLM integration (colocated or a `trl vllm-serve` server).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Optional

from omegaconf import II, DictConfig

from tokalign import rewards
from tokalign.bases.contract import MethodConfig
from tokalign.config import knob, option, require, world_size


class LossType(StrEnum):
    """TRL 1.16's GRPO loss types (a test keeps them equal to TRL's)."""

    grpo = "grpo"
    bnpo = "bnpo"
    dr_grpo = "dr_grpo"
    dapo = "dapo"
    cispo = "cispo"
    sapo = "sapo"
    luspo = "luspo"
    vespo = "vespo"


class ScaleRewards(StrEnum):
    group = "group"
    batch = "batch"
    none = "none"


class ImportanceLevel(StrEnum):
    token = "token"
    sequence = "sequence"  # GSPO


@dataclass
class Config(MethodConfig):
    algorithm: str = "grpo"
    name: str = "grpo"
    num_generations: int = knob(8, ge=2, help="G, completions per prompt")
    max_completion_length: int = knob(II("model.max_new_tokens"), ge=1, help="longest completion")
    temperature: float = knob(1.0, gt=0, help="sampling temperature")
    top_p: float = knob(1.0, gt=0, le=1, help="nucleus sampling")
    loss_type: LossType = knob(
        LossType.dapo, help="TRL's loss aggregation: grpo | bnpo | dr_grpo | dapo | cispo | sapo | luspo | vespo"
    )
    beta: float = knob(0.0, ge=0, help="KL coefficient (0: no reference model)")
    epsilon: float = knob(0.2, gt=0, help="clip range")
    epsilon_high: Optional[float] = knob(None, gt=0, help="upper clip range; null: epsilon")
    importance_sampling_level: ImportanceLevel = knob(ImportanceLevel.token, help="token | sequence (GSPO)")
    scale_rewards: ScaleRewards = knob(ScaleRewards.group, help="advantage scaling: group | batch | none")
    num_iterations: int = knob(1, ge=1, help="μ, optimisation passes per generation batch")
    mask_truncated_completions: bool = knob(False, help="no loss on completions cut at max_completion_length")
    reward: Any = knob("task", help="the reward (spellings: see the README); a list is a weighted sum")
    rewards: Optional[list[Any]] = knob(None, help="deprecated: use reward=[{reward: module:function, weight: w}]")


def check(cfg: DictConfig) -> None:
    m, t = cfg.method, cfg.trainer
    rewards.parse(rewards.configured(m, "method.reward"), "method.reward")
    completions = t.per_device_batch_size * world_size(cfg.launcher)
    require(
        completions % m.num_generations == 0,
        f"trainer.per_device_batch_size={t.per_device_batch_size} x {world_size(cfg.launcher)} process(es) = "
        f"{completions} completions per step is not a multiple of method.num_generations={m.num_generations}",
    )


def grpo_args(run, **extra: Any):
    """A TRL GRPOConfig from the shared trainer knobs, the method's GRPO knobs and the rollout engine."""
    from trl import GRPOConfig

    from tokalign.bases.trl import trl_args
    from tokalign.modeling.vllm_engine import trl_vllm_args

    m = run.cfg.method
    extra = trl_vllm_args(run.cfg.get("rollout")) | extra
    args = trl_args(
        run,
        num_generations=m.num_generations,
        max_completion_length=m.max_completion_length,
        temperature=m.temperature,
        top_p=m.top_p,
        loss_type=option(m.loss_type),
        beta=m.beta,
        epsilon=m.epsilon,
        epsilon_high=m.epsilon_high,
        importance_sampling_level=option(m.importance_sampling_level),
        scale_rewards=option(m.scale_rewards),
        num_iterations=m.num_iterations,
        mask_truncated_completions=m.mask_truncated_completions,
        log_completions=False,
        **extra,
    )
    args.pop("max_length")  # GRPO bounds the completion instead (max_completion_length)
    return GRPOConfig(**args)


def build_trainer(run, trainer_cls=None, **extra_args: Any):
    from tokalign.bases.grpo.trainer import AccountingGRPOTrainer
    from tokalign.bases.trl import peft_config
    from tokalign.modeling.vllm_engine import require_vllm, uses_vllm

    if uses_vllm(run.cfg.get("rollout")):
        require_vllm(f"{run.cfg.method.name} rollouts")
    spec = rewards.configured(run.cfg.method, "method.reward")
    funcs, weights = rewards.functions(spec, run.cfg.dataset, "method.reward")
    verifiable = [
        f.__name__
        for f, t in zip(funcs, rewards.parse(spec, "method.reward"))
        if rewards.is_verifiable(t.reward, run.cfg.dataset)
    ]
    return (trainer_cls or AccountingGRPOTrainer)(
        model=run.load_policy(),
        reward_funcs=funcs,
        args=grpo_args(run, reward_weights=weights, **extra_args),
        train_dataset=run.train_data,
        processing_class=run.tokenizer,
        peft_config=peft_config(run),
        accuracy_reward=verifiable[0] if verifiable else None,
    )
