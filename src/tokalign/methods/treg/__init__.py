"""T-REG (Zhou et al., ACL 2025, arXiv 2412.02685): DPO regularised by self-generated token rewards.

The loss is `tokalign.losses.treg_loss`, the trainer `trainer.TREGTrainer`; r̂ comes from the
starting policy (or `method.token_reward_model`) contrasting a "better" and a "worse" revision
of each prompt, and is precomputed once per dataset and cached like TGDPO's guidance.
See docs/treg.md.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from enum import StrEnum
from typing import Optional

from omegaconf import DictConfig

from tokalign.bases.contract import DataKind, Method, MethodConfig
from tokalign.config import knob, option, require
from tokalign.methods.treg.prompts import BETTER, PLACEHOLDER, WORSE


class Weighting(StrEnum):
    adaptive = "adaptive"
    static = "static"


@dataclass
class Config(MethodConfig):
    algorithm: str = "treg"
    name: str = "treg"
    beta: float = knob(0.1, gt=0, help="DPO's KL coefficient (T-REG's own value is not public; tokalign's DPO default)")
    alpha: float = knob(
        0.25, ge=0, help="regulariser strength (searched: 0.1 / 0.25 / 0.5); >= 2 can flip a token's 1 ± α r̂"
    )
    weighting: Weighting = knob(
        Weighting.adaptive, help="adaptive: w = σ(−z), detached (DPO's gradient scale) | static: w = 1 (their ablation)"
    )
    token_reward_model: Optional[str] = knob(
        None,
        help="the model that scores the revisions (path or hub id); "
        "null: the reference (the starting policy, as the paper)",
    )
    better_prompt: str = knob(BETTER, help="revision asking for a better response; {prompt} is the user's last turn")
    worse_prompt: str = knob(WORSE, help="revision asking for a worse response; {prompt} is the user's last turn")
    precompute: bool = knob(
        True, help="reference log-probs and r̂ once per dataset (all processes; ZeRO-3: sharded weights), cached on disk"
    )


def check(cfg: DictConfig) -> None:
    m = cfg.method
    for key in ("better_prompt", "worse_prompt"):
        require(PLACEHOLDER in m[key], f"method.{key} must contain {PLACEHOLDER} (where the user's turn goes)")
    require(
        m.better_prompt != m.worse_prompt,
        "method.better_prompt equals method.worse_prompt: every token reward r̂ would be 0 (plain DPO)",
    )
    if m.alpha >= 2:
        warnings.warn(
            f"method.alpha={m.alpha} >= 2: with |r̂| < 0.5 a token's factor 1 ± α r̂ can turn negative "
            "and flip its gradient (the searched values are 0.1 / 0.25 / 0.5)",
            stacklevel=2,
        )


def train(run) -> dict:
    from tokalign.bases.dpo.dpo_models import load_frozen
    from tokalign.bases.dpo.token_level import train_token_dpo
    from tokalign.methods.treg.trainer import TREGTrainer

    m = run.cfg.method
    return train_token_dpo(
        run,
        TREGTrainer,
        lambda: dict(
            alpha=m.alpha,
            weighting=option(m.weighting),
            better_prompt=m.better_prompt,
            worse_prompt=m.worse_prompt,
            token_reward_model=load_frozen(run, m.token_reward_model, "token reward model")
            if m.token_reward_model
            else None,
        ),
    )


def view(ctx):
    from tokalign.methods.treg.view import treg_view

    return treg_view(ctx)


METHOD = Method(
    name="treg",
    config=Config,
    data=DataKind.preference,
    train=train,
    check=check,
    view=view,
    description="T-REG (Zhou et al., ACL 2025): DPO regularised by self-generated token rewards",
    lora=True,
)
