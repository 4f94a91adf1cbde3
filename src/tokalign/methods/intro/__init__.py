"""InTRO (Zhu et al., AAAI 2026, arXiv 2511.09865): token-wise correction towards the answer-conditioned policy.

GRPO's sampling (G rationales per prompt, an exact-match reward); the rationales with a wrong
answer are dropped, and each kept one is trained with `tokalign.losses.intro_loss`: at every
token, n candidates (the sampled token and n − 1 draws from the policy) weighted by
w = π(c | x⊕y, z<t) / π(c | x, z<t), clipped to [0, w_max], where x⊕y is the question with the
gold answer appended (`posterior_template`, scored by the same weights, no gradient). The
trainer is `trainer.InTROTrainer`. See docs/intro.md.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from enum import StrEnum
from typing import Optional

from omegaconf import DictConfig

from tokalign.bases.contract import DataKind, Method
from tokalign.bases.grpo import config as grpo
from tokalign.config import knob, option, require
from tokalign.data import toy_math


class Mode(StrEnum):
    sampled = "sampled"
    expected = "expected"


@dataclass
class Config(grpo.Config):
    algorithm: str = "intro"
    name: str = "intro"
    num_generations: int = knob(4, ge=2, help="G, rationales per prompt (the paper: 4)")
    num_candidates: int = knob(5, ge=1, help="n, candidates per token, the sampled one included (the paper: 5)")
    w_max: float = knob(200.0, gt=0, help="the correction factor w is clipped to [0, w_max] (the paper: 200)")
    mode: Mode = knob(
        Mode.sampled,
        help="sampled: n − 1 candidates drawn from the policy (Alg. 1) | expected: their share summed over the vocabulary",
    )
    candidate_temperature: float = knob(1.0, gt=0, help="the added candidates are drawn from softmax(logits / this)")
    posterior_template: str = knob(
        toy_math.HINT_TEMPLATE,
        help="x⊕y, the answer-conditioned context: {x} the question, {y} the gold answer (the paper gives none)",
    )
    correction: bool = knob(
        True, help="false: q := p, so w ≡ 1 (with num_candidates=1: SFT on the own correct rationales, RAFT)"
    )
    keep_reward: float = knob(1.0, help="a rationale is kept (trained) when its reward is at least this")
    answer_column: str = knob("answer", help="the dataset column holding the gold final answer y")
    chunk_size: Optional[int] = knob(
        None, ge=1, help="mode=expected: positions per chunk (bounded float32 memory); null: all at once"
    )


def check(cfg: DictConfig) -> None:
    grpo.check(cfg)
    m = cfg.method
    for field in ("{x}", "{y}"):
        require(field in m.posterior_template, f"method.posterior_template must contain {field}")
    require(m.num_iterations == 1, f"method.num_iterations={m.num_iterations}: InTRO makes one update per batch (1)")
    require(m.beta == 0, f"method.beta={m.beta}: InTRO has no KL to a reference (0)")


def train(run) -> dict:
    from tokalign.bases.trl import run_trainer
    from tokalign.methods.intro.trainer import InTROTrainer

    m = run.cfg.method
    trainer_cls = functools.partial(
        InTROTrainer,
        num_candidates=m.num_candidates,
        w_max=m.w_max,
        mode=option(m.mode),
        candidate_temperature=m.candidate_temperature,
        posterior_template=m.posterior_template,
        correction=m.correction,
        keep_reward=m.keep_reward,
        answer_column=m.answer_column,
        chunk_size=m.chunk_size,
    )
    trainer = grpo.build_trainer(run, trainer_cls)
    return run_trainer(run, trainer) | trainer.usage_summary()


def view(ctx):
    from tokalign.methods.intro.view import intro_view

    return intro_view(ctx)


METHOD = Method(
    name="intro",
    config=Config,
    data=DataKind.prompt,
    train=train,
    check=check,
    view=view,
    description="InTRO in-token rationality optimisation (arXiv 2511.09865) on GRPO's sampling",
)
