"""D³S-GRPO: dynamic dual-level down-sampling (arXiv 2509.22115; METHODS.md §4), and PODS.

GRPO's knobs (tokalign.methods.grpo) plus the selection: per group of G = num_generations
rollouts keep N samples (max-variance subset), among their tokens keep the top K fraction by
|A|·H, with (N, K) moving linearly from (n_init, k_init) to (n_final, k_final) over training.
PODS (Xu et al., 2025) is this method with renormalize=true, K = 1 and a constant N
(`method=pods`). Generation batches are not split across accumulation steps here
(steps_per_generation = 1): every micro-batch is selected from its own rollouts.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from tokalign.methods import grpo
from tokalign.methods.common import run_trainer

DATA_KIND = "prompt"


@dataclass
class Config(grpo.Config):
    name: str = "d3s_grpo"
    n_init: int = 4  # samples kept per group at the start (clamped to [2, G])
    n_final: int = 6
    k_init: float = 0.2  # share of kept samples' tokens that keep loss weight, at the start
    k_final: float = 0.5
    schedule: str = "linear"  # linear | constant (n_init, k_init throughout)
    sample_scope: str = "group"  # group: N per group | batch: N·groups from the pooled batch
    token_scope: str = "batch"  # batch: rank all kept tokens together | sequence: per row
    renormalize: bool = False  # PODS: re-standardise kept advantages within each group
    token_normalization: str = "kept"  # kept | all (TRL top-entropy style)


def train(run) -> dict:
    from tokalign.trainers.d3s import D3SGRPOTrainer

    m = run.cfg.method
    trainer_cls = functools.partial(
        D3SGRPOTrainer, n_init=m.n_init, n_final=m.n_final, k_init=m.k_init, k_final=m.k_final,
        schedule=m.schedule, sample_scope=m.sample_scope, token_scope=m.token_scope,
        renormalize=m.renormalize, token_normalization=m.token_normalization,
    )
    trainer = grpo.build_trainer(run, trainer_cls, steps_per_generation=1)
    return run_trainer(run, trainer) | trainer.usage_summary()
