"""GRPO (Shao et al., 2024) with TRL's GRPOTrainer: the baseline D³S and PODS compare to.

`trainer.per_device_batch_size` counts completions (TRL's convention): it must be a multiple of
`num_generations`. The trainer adds token accounting to TRL's logs so that every GRPO-family run
reports the same usage figures (kept samples and tokens per step, cumulative trained tokens,
sample usefulness, accuracy on the task's verifiable reward).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any, Optional

from omegaconf import OmegaConf

from tokalign.data.loading import task_of
from tokalign.methods.common import peft_config, run_trainer, trl_args

DATA_KIND = "prompt"


@dataclass
class Config:
    name: str = "grpo"
    num_generations: int = 8  # G, completions per prompt
    max_completion_length: int = 24
    temperature: float = 1.0
    top_p: float = 1.0
    loss_type: str = "dapo"  # TRL: grpo | bnpo | dr_grpo | dapo | cispo | sapo | luspo | vespo
    beta: float = 0.0  # KL coefficient (0: no reference model)
    epsilon: float = 0.2
    epsilon_high: Optional[float] = None  # None: epsilon
    importance_sampling_level: str = "token"  # "sequence" is GSPO
    scale_rewards: str = "group"  # group | batch | none
    num_iterations: int = 1  # μ, optimisation passes per generation batch
    mask_truncated_completions: bool = False
    # [{_target_: module.function, weight: 1.0, **kwargs}]; empty: the dataset's verifiable reward
    rewards: list[Any] = field(default_factory=list)


def resolve_rewards(run) -> tuple[list, list[float]]:
    """Reward callables and weights from `method.rewards` (functions named by `_target_`)."""
    from hydra.utils import get_object

    from tokalign.rewards import TASK_REWARDS

    specs = OmegaConf.to_container(run.cfg.method.rewards, resolve=True) if run.cfg.method.rewards else []
    if not specs:
        d = run.cfg.dataset
        task = task_of(d)
        if task not in TASK_REWARDS:
            raise ValueError(
                f"dataset {d.name!r} has no built-in reward: set method.rewards, e.g. "
                "'method.rewards=[{_target_: tokalign.rewards.math_verify_reward, weight: 1.0}]'"
            )
        return [TASK_REWARDS[task]], [1.0]
    funcs, weights = [], []
    for spec in specs:
        spec = dict(spec)
        target = spec.pop("_target_", None)
        if target is None:
            raise ValueError(f"method.rewards entry {spec} has no _target_")
        weights.append(float(spec.pop("weight", 1.0)))
        func = get_object(target)
        if not callable(func):
            raise ValueError(f"method.rewards: {target} is not callable")
        funcs.append(functools.partial(func, **spec) if spec else func)
    return funcs, weights


def grpo_args(run, **extra: Any):
    """A TRL GRPOConfig from the shared trainer knobs and the method's GRPO knobs."""
    from trl import GRPOConfig

    m = run.cfg.method
    args = trl_args(
        run, num_generations=m.num_generations, max_completion_length=m.max_completion_length,
        temperature=m.temperature, top_p=m.top_p, loss_type=m.loss_type, beta=m.beta, epsilon=m.epsilon,
        epsilon_high=m.epsilon_high, importance_sampling_level=m.importance_sampling_level,
        scale_rewards=m.scale_rewards, num_iterations=m.num_iterations,
        mask_truncated_completions=m.mask_truncated_completions, log_completions=False, **extra,
    )
    args.pop("max_length")  # GRPO bounds the completion instead (max_completion_length)
    return GRPOConfig(**args)


def build_trainer(run, trainer_cls=None, **extra_args: Any):
    from tokalign.trainers.grpo import AccountingGRPOTrainer

    funcs, weights = resolve_rewards(run)
    return (trainer_cls or AccountingGRPOTrainer)(
        model=run.load_policy(),
        reward_funcs=funcs,
        args=grpo_args(run, reward_weights=weights, **extra_args),
        train_dataset=run.train_data,
        processing_class=run.tokenizer,
        peft_config=peft_config(run),
    )


def train(run) -> dict:
    trainer = build_trainer(run)
    return run_trainer(run, trainer) | trainer.usage_summary()
