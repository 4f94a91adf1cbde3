"""PPO (token level) and MA-RLHF's macro-action PPO: the loop in `tokalign.bases.ppo`, declared as a method.

`method=ma_ppo` is a preset of this method (n=5); `tokalign.bases.ppo.config` documents the conventions.
"""

from __future__ import annotations

from tokalign.bases.contract import DataKind, Method
from tokalign.bases.ppo.config import Config, check


def train(run) -> dict:
    from tokalign.bases.ppo.loop import fit

    return fit(run)


def view(ctx):
    from tokalign.bases.ppo.view import macro_view

    return macro_view(ctx)


METHOD = Method(
    name="ppo",
    config=Config,
    data=DataKind.prompt,
    train=train,
    check=check,
    view=view,
    description="PPO with a critic, GAE and KL-in-reward; macro actions (MA-RLHF) with method=ma_ppo",
    lora=True,
)
