"""D³S-GRPO: dynamic dual-level down-sampling (arXiv 2509.22115), and PODS as its preset.

GRPO's knobs plus the selection: per group of G = num_generations rollouts keep N samples
(max-variance subset), among their tokens keep the top K fraction by |A|·H, with (N, K) moving
linearly from (n_init, k_init) to (n_final, k_final) over training. PODS (Xu et al., 2025) is
this method with renormalize=true, K = 1 and a constant N (`method=pods`, a preset). Generation
batches are not split across accumulation steps (steps_per_generation = 1): every micro-batch
is selected from its own rollouts.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from enum import StrEnum

from omegaconf import DictConfig

from tokalign.bases.contract import DataKind, Method
from tokalign.bases.grpo import config as grpo
from tokalign.config import knob, option, require


class Schedule(StrEnum):
    linear = "linear"
    constant = "constant"


class SampleScope(StrEnum):
    group = "group"
    batch = "batch"


class TokenScope(StrEnum):
    batch = "batch"
    sequence = "sequence"


class TokenNormalization(StrEnum):
    kept = "kept"
    all = "all"


@dataclass
class Config(grpo.Config):
    algorithm: str = "d3s_grpo"
    name: str = "d3s_grpo"
    n_init: int = knob(4, ge=2, help="samples kept per group at the start (<= num_generations)")
    n_final: int = knob(6, ge=2, help="samples kept per group at the end")
    k_init: float = knob(0.2, gt=0, le=1, help="share of the kept samples' tokens trained on, at the start")
    k_final: float = knob(0.5, gt=0, le=1, help="that share at the end")
    schedule: Schedule = knob(Schedule.linear, help="linear: (N, K) move with progress | constant: (n_init, k_init)")
    sample_scope: SampleScope = knob(
        SampleScope.group, help="group: N per group | batch: N x groups from the pooled batch"
    )
    token_scope: TokenScope = knob(TokenScope.batch, help="batch: rank all kept tokens together | sequence: per row")
    renormalize: bool = knob(False, help="PODS: re-normalise the kept samples' advantages within each group")
    token_normalization: TokenNormalization = knob(
        TokenNormalization.kept, help="kept: loss over kept tokens | all: over all (TRL top-entropy style)"
    )


def check(cfg: DictConfig) -> None:
    grpo.check(cfg)
    m = cfg.method
    for key in ("n_init", "n_final") if option(m.schedule) == "linear" else ("n_init",):
        require(
            m[key] <= m.num_generations,
            f"method.{key}={m[key]} keeps more samples than a group has (method.num_generations={m.num_generations})",
        )


def train(run) -> dict:
    from tokalign.bases.trl import run_trainer
    from tokalign.methods.d3s_grpo.trainer import D3SGRPOTrainer

    m = run.cfg.method
    trainer_cls = functools.partial(
        D3SGRPOTrainer,
        n_init=m.n_init,
        n_final=m.n_final,
        k_init=m.k_init,
        k_final=m.k_final,
        schedule=option(m.schedule),
        sample_scope=option(m.sample_scope),
        token_scope=option(m.token_scope),
        renormalize=m.renormalize,
        token_normalization=option(m.token_normalization),
    )
    trainer = grpo.build_trainer(run, trainer_cls, steps_per_generation=1)
    return run_trainer(run, trainer) | trainer.usage_summary()


def view(ctx):
    from tokalign.methods.d3s_grpo.view import d3s_view

    return d3s_view(ctx)


METHOD = Method(
    name="d3s_grpo",
    config=Config,
    data=DataKind.prompt,
    train=train,
    check=check,
    view=view,
    description="D³S dual-level down-sampling for GRPO (arXiv 2509.22115); PODS as a preset",
    lora=True,
)
