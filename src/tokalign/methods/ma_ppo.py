"""MA-PPO: PPO over macro actions (MA-RLHF, Chai et al., ICLR 2025), the PPO loop of `ppo`.

Only the defaults differ: responses are cut every n = 5 tokens (the paper's setting).
"""

from __future__ import annotations

from dataclasses import dataclass

from tokalign.methods import ppo

DATA_KIND = ppo.DATA_KIND


@dataclass
class Config(ppo.Config):
    name: str = "ma_ppo"
    n: int = 5


train = ppo.train
