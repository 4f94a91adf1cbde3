"""RLTF (Song, Chen et al., arXiv 2602.02482): RL from text feedback, on GRPO's sampling.

Two-turn rollouts: an attempt y0; when the critic finds it wrong, a revision y1 of the prompt
that holds the attempt and the critique (`revision_template`). Both turns are trained as
multi-turn GRPO (`tokalign.losses.rltf_turn_advantages`, γ, group-centred, no std). RLTF adds
self-distillation (`sd_coef` κ: each revision trained as an answer to the first-turn prompt,
`rltf_sd_loss`) and feedback modelling (`fm_coef` λ_FM: the critique's NLL given the question
and the attempt, `feedback_modeling_loss`). The test is single-turn. The trainer is
`trainer.RLTFTrainer`. See docs/rltf.md.
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Optional

from omegaconf import DictConfig

from tokalign.bases.contract import DataKind, Method
from tokalign.bases.grpo import config as grpo
from tokalign.config import knob, option, require
from tokalign.data import toy_math
from tokalign.errors import ConfigError

CRITICS = {"toy_math": "tokalign.data.toy_math:critique"}
VERDICT = "the final answer is wrong"
FEEDBACK_PROMPT = (
    "You are given a question and your previous attempt below. Your task is provide a critique of the attempt. "
    "Question: {prompt} Previous attempt: {attempt} Critique:"
)


class SDSchedule(StrEnum):
    constant = "constant"
    linear = "linear"


class SDAdvantage(StrEnum):
    second_turn = "second_turn"
    first_turn = "first_turn"


@dataclass
class Config(grpo.Config):
    algorithm: str = "rltf"
    name: str = "rltf"
    num_generations: int = knob(8, ge=2, help="G, first-turn attempts per prompt (the release: 8)")
    scale_rewards: grpo.ScaleRewards = knob(
        grpo.ScaleRewards.none, help="none: RLTF's advantages are centred, not scaled (the release); the only choice"
    )
    gamma: float = knob(0.1, ge=0, le=1, help="γ: a turn's return adds γ × the next turn's (the release: 0.1)")
    sd_coef: float = knob(0.1, ge=0, help="κ, self-distillation weight (the release: 0.1; 0: off)")
    sd_schedule: SDSchedule = knob(
        SDSchedule.constant, help="constant: κ throughout | linear: 0 → κ over training (the release's math runs)"
    )
    sd_advantage: SDAdvantage = knob(
        SDAdvantage.second_turn,
        help="second_turn: the revision's group-centred advantage (what the release's runs used) | "
        "first_turn: r1 − the group's mean first-turn reward (the paper's baseline)",
    )
    logprob_floor: Optional[float] = knob(
        -5.0, help="SD trains a revision token only where log π(y1_t | x0) >= this (null: every token, plain AWR)"
    )
    fm_coef: float = knob(0.0, ge=0, help="λ_FM, feedback-modelling weight (the release: 0.1 in its fm runs; 0: off)")
    critic: str = knob(
        "auto",
        help="the critic: auto (toy_math's on dataset toy_math, else verdict) | toy_math | verdict (a reward below "
        f"solved_reward gets '{VERDICT}') | module:function(prompt, completion) -> str | None",
    )
    solved_reward: float = knob(1.0, help="critic=verdict: a first-turn reward at least this needs no second turn")
    revision_template: str = knob(
        toy_math.REVISION_TEMPLATE,
        help="the second-turn prompt x1: {prompt} the question, {attempt} y0, {critique} c0",
    )
    feedback_template: str = knob(
        FEEDBACK_PROMPT, help="the FM prompt the critique is predicted from: {prompt} the question, {attempt} y0"
    )


def resolve_critic(spec: str, dataset: str) -> Optional[Callable[[str, str], Optional[str]]]:
    """The critic function a `method.critic` value names; None for the verdict critic."""
    if spec == "auto":
        spec = "toy_math" if dataset == "toy_math" else "verdict"
    if spec == "verdict":
        return None
    module, _, name = CRITICS.get(spec, spec).partition(":")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError):
        raise ConfigError(
            f"method.critic={spec!r} is not a critic: auto, verdict, {', '.join(CRITICS)} or module:function"
        ) from None


def check(cfg: DictConfig) -> None:
    grpo.check(cfg)
    m = cfg.method
    resolve_critic(m.critic, cfg.dataset.source)
    require(
        m.critic != "toy_math" or cfg.dataset.source == "toy_math",
        f"method.critic=toy_math reads toy_math prompts, not dataset.source={cfg.dataset.source}: use auto, verdict or module:function",
    )
    for field in ("{prompt}", "{attempt}", "{critique}"):
        require(field in m.revision_template, f"method.revision_template must contain {field}")
    for field in ("{prompt}", "{attempt}"):
        require(field in m.feedback_template, f"method.feedback_template must contain {field}")
    require(m.num_iterations == 1, f"method.num_iterations={m.num_iterations}: RLTF makes one update per batch (1)")
    require(
        option(m.scale_rewards) == "none",
        f"method.scale_rewards={option(m.scale_rewards)}: RLTF's multi-turn advantages are centred without scaling (none)",
    )


def train(run) -> dict:
    from tokalign.bases.trl import run_trainer
    from tokalign.methods.rltf.trainer import RLTFTrainer

    m = run.cfg.method
    trainer_cls = functools.partial(
        RLTFTrainer,
        critic=resolve_critic(m.critic, run.cfg.dataset.source),
        solved_reward=m.solved_reward,
        gamma=m.gamma,
        sd_coef=m.sd_coef,
        sd_schedule=option(m.sd_schedule),
        sd_advantage=option(m.sd_advantage),
        logprob_floor=m.logprob_floor,
        fm_coef=m.fm_coef,
        revision_template=m.revision_template,
        feedback_template=m.feedback_template,
    )
    trainer = grpo.build_trainer(run, trainer_cls, steps_per_generation=1)
    return run_trainer(run, trainer) | trainer.usage_summary()


def view(ctx):
    from tokalign.bases.grpo.view import group_view

    return group_view(ctx)  # the first turn, the one evaluated: GRPO's group view


METHOD = Method(
    name="rltf",
    config=Config,
    data=DataKind.prompt,
    train=train,
    check=check,
    view=view,
    description="RLTF two-turn RL from text feedback (arXiv 2602.02482): self-distillation, feedback modelling",
    lora=True,  # the release trains LoRA adapters (r 32); the SD and FM forwards go through them like TRL's
)
