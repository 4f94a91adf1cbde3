"""PPO for RLHF (token level) and its macro-action form (MA-RLHF, Chai et al., ICLR 2025).

One loop for both: a PPO iteration samples responses, scores them, cuts them into macro
actions (``segment_macro_actions``; ``termination=fixed, n=1`` is plain token-level PPO),
runs GAE over the segments (``macro_gae``) and takes ``num_ppo_epochs`` passes of
minibatch updates of the policy (``ppo_policy_loss``) and critic (``ppo_value_loss``).
The maths lives in ``tokalign.losses`` (METHODS.md §3); this module gathers per-token tensors.

Batch sizes: a rollout holds ``per_device_batch_size × gradient_accumulation_steps ×
num_mini_batches`` prompts; one optimizer step sees ``per_device_batch_size ×
gradient_accumulation_steps`` of them. ``trainer.max_steps`` counts PPO iterations.
Models, optimizers and the step go through ``accelerate`` so the same loop runs under DDP.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from enum import Enum
from typing import Optional

from tokalign.config import option

DATA_KIND = "prompt"


class Termination(str, Enum):
    fixed = "fixed"
    randomized = "randomized"
    parsing = "parsing"
    ppl = "ppl"


class ValueWeighting(str, Enum):
    equal = "equal"
    position = "position"
    last = "last"


class RewardAggregation(str, Enum):
    sum = "sum"
    mean = "mean"


class LossLevel(str, Enum):
    token = "token"
    segment = "segment"


class KLEstimator(str, Enum):
    k1 = "k1"
    k3 = "k3"


class CriticInit(str, Enum):
    auto = "auto"
    policy = "policy"
    reward_model = "reward_model"


@dataclass
class Config:
    name: str = "ppo"
    # Reward: task (the dataset's programmatic reward) | gold | exact_match | model | pkg.module:function
    reward: str = "task"
    reward_model: Optional[str] = None  # a model dir or a method=reward run dir (reward=model)
    score_clip: Optional[float] = None  # MA-RLHF's code clips the RM score to ±2.5
    kl_coef: float = 0.05
    kl_estimator: KLEstimator = KLEstimator.k1
    whiten_rewards: bool = False
    whiten_advantages: bool = True
    # Critic: a scalar head at every position; auto = the reward model when there is one
    critic_init: CriticInit = CriticInit.auto
    critic_learning_rate: Optional[float] = None  # None: trainer.learning_rate
    # Rollout
    max_new_tokens: int = 48
    temperature: float = 0.8
    top_k: int = 50
    top_p: float = 1.0
    # PPO
    gamma: float = 1.0
    lam: float = 0.95
    clip_eps: float = 0.2
    clip_eps_value: float = 0.2
    num_ppo_epochs: int = 1
    num_mini_batches: int = 1
    # Macro actions (termination=fixed, n=1: token-level PPO)
    termination: Termination = Termination.fixed
    n: int = 1
    lengths: list[int] = field(default_factory=lambda: [1, 2, 3, 5, 10])
    max_segment_len: Optional[int] = None
    spacy_model: Optional[str] = None  # parsing: a spaCy pipeline name; None = the offline chunker
    value_weighting: ValueWeighting = ValueWeighting.equal
    reward_aggregation: RewardAggregation = RewardAggregation.sum
    policy_loss_level: LossLevel = LossLevel.token


def settings(method_cfg) -> Config:
    """The method config as a plain ``Config`` (enums as their string values)."""
    return Config(**{f.name: option(method_cfg[f.name]) for f in fields(Config) if f.name in method_cfg})


def train(run) -> dict:
    from tokalign.trainers.ppo import fit

    return fit(run)
