"""PPO settings for RLHF (token level) and its macro-action form (MA-RLHF, Chai et al., ICLR 2025).

One loop for both, split by stage: `rollout` samples responses, `scoring` computes the old,
reference and value estimates and the per-token rewards, `advantages` cuts responses into
macro actions (`termination=fixed, n=1` is plain token-level PPO) and runs GAE over them,
`update` takes the clipped policy and value steps, `loop` drives iterations, checkpoints and
logging. The maths lives in `tokalign.losses`. `method=ma_ppo` is a preset of this method (n=5).

Batch sizes: a rollout holds `per_device_batch_size × gradient_accumulation_steps ×
num_mini_batches` prompts per process; one optimizer step sees `per_device_batch_size ×
gradient_accumulation_steps` of them. `trainer.max_steps` counts PPO iterations.

Defaults follow the MA-RLHF authors' code (ernie-research/MA-RLHF, DeepSpeed-Chat
`dschat/rlhf/ppo_trainer.py`) in its conventions: log-probs of the model's own logits (not the
sampling temperature's), each response's loss a mean over its tokens, the scored last token a
macro action of its own, `ppl` cuts before the rise. Two choices keep the paper's formulas and
the usual PPO instead (`experiment=ma_rlhf` switches them to their code's): macro rewards are
summed (`reward_aggregation`) and advantages whitened. docs/ma_rlhf.md lists every convention,
its option and where tokalign departs from their code.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from enum import StrEnum
from typing import Any, Optional

from omegaconf import II, DictConfig

from tokalign import rewards
from tokalign.bases.contract import MethodConfig
from tokalign.config import knob, option, require


class Termination(StrEnum):
    fixed = "fixed"
    randomized = "randomized"
    parsing = "parsing"
    ppl = "ppl"


class ValueWeighting(StrEnum):
    equal = "equal"
    position = "position"
    last = "last"


class RewardAggregation(StrEnum):
    sum = "sum"
    mean = "mean"


class LossLevel(StrEnum):
    token = "token"
    segment = "segment"


class KLEstimator(StrEnum):
    k1 = "k1"
    k3 = "k3"


class LogprobTemperature(StrEnum):
    one = "one"
    sampling = "sampling"


class LossNormalization(StrEnum):
    sequence = "sequence"
    token = "token"


class PplBoundary(StrEnum):
    before_rise = "before_rise"
    at_rise = "at_rise"


class LengthSampling(StrEnum):
    shuffle = "shuffle"
    iid = "iid"


class CriticInit(StrEnum):
    auto = "auto"
    policy = "policy"
    reward_model = "reward_model"


@dataclass
class Config(MethodConfig):
    algorithm: str = "ppo"
    name: str = "ppo"
    # Reward
    reward: Any = knob("task", help="the score at the last response token (spellings: see the README)")
    reward_model: Optional[str] = knob(None, help="deprecated: use reward=model:<path>")
    score_clip: Optional[float] = knob(None, gt=0, help="clip the score to ±score_clip (MA-RLHF's code: 2.5)")
    kl_coef: float = knob(0.05, ge=0, help="β_KL of the per-token KL penalty in the reward")
    kl_estimator: KLEstimator = knob(
        KLEstimator.k1, help="k1: log π_old − log π_ref | k3: Schulman's non-negative estimator"
    )
    kl_limit: float = knob(
        1000.0, gt=0, help="stop as diverged when the mean per-response KL to the reference exceeds this"
    )
    whiten_rewards: bool = knob(False, help="rescale rewards over the rollout before GAE")
    whiten_advantages: bool = knob(True, help="whiten advantages over the rollout's valid tokens (all ranks)")
    logprob_temperature: LogprobTemperature = knob(
        LogprobTemperature.one,
        help="log-probs of the KL penalty, the PPO ratio and the ppl rule: one = the model's own "
        "logits (MA-RLHF's and OpenRLHF's code) | sampling = logits / temperature (TRL)",
    )
    # Critic
    critic_init: CriticInit = knob(
        CriticInit.auto, help="auto: the reward model when the reward is one, else the policy"
    )
    critic_learning_rate: Optional[float] = knob(None, gt=0, help="null: trainer.learning_rate")
    # Rollout
    max_new_tokens: int = knob(II("model.max_new_tokens"), ge=1, help="longest sampled response")
    temperature: float = knob(0.8, gt=0, help="sampling temperature (their recipe: 0.8)")
    top_k: int = knob(50, ge=0, help="top-k sampling (0: off)")
    top_p: float = knob(1.0, gt=0, le=1, help="nucleus sampling")
    # PPO
    gamma: float = knob(1.0, ge=0, le=1, help="discount")
    lam: float = knob(0.95, ge=0, le=1, help="GAE λ")
    clip_eps: float = knob(0.2, gt=0, help="policy ratio clip ε")
    clip_eps_value: float = knob(0.2, gt=0, help="value clip ε_v")
    num_ppo_epochs: int = knob(1, ge=1, help="passes over each rollout")
    num_mini_batches: int = knob(1, ge=1, help="optimizer steps per pass")
    loss_normalization: LossNormalization = knob(
        LossNormalization.sequence,
        help="sequence: each response's mean over its tokens, then the mean over responses "
        "(their code; batch-mates never change a response's loss) | token: the mean over "
        "a micro-batch's tokens",
    )
    # Macro actions (termination=fixed, n=1: token-level PPO)
    termination: Termination = knob(Termination.fixed, help="fixed | randomized | parsing | ppl")
    n: int = knob(1, ge=1, help="fixed: tokens per macro action (1: token-level PPO; MA-RLHF: 5)")
    lengths: list[int] = knob(
        help="randomized: segment lengths to draw from", ge=1, nonempty=True, factory=lambda: [1, 2, 3, 5, 10]
    )
    length_sampling: LengthSampling = knob(
        LengthSampling.shuffle,
        help="randomized: shuffle = lengths × length_repeats "
        "shuffled, each used once, the rest one segment (their code) | iid draws",
    )
    length_repeats: Optional[int] = knob(
        None,
        ge=1,
        help="randomized, shuffle: copies of lengths (their --repeat_times); null: enough to cover the response",
    )
    ppl_boundary: PplBoundary = knob(
        PplBoundary.before_rise,
        help="ppl: a macro action starts at the token before the "
        "perplexity rise (their code) | at_rise: at the token whose perplexity rose",
    )
    last_token_alone: bool = knob(
        True,
        help="the scored last token is a macro action of its own (their code), so averaging never dilutes the score",
    )
    max_segment_len: Optional[int] = knob(None, ge=1, help="cap on a segment's length (any rule)")
    spacy_model: Optional[str] = knob(None, help="parsing: a spaCy pipeline; null: the offline chunker")
    value_weighting: ValueWeighting = knob(
        ValueWeighting.equal, help="macro value: equal (their default) | position | last"
    )
    reward_aggregation: RewardAggregation = knob(
        RewardAggregation.sum, help="macro reward: sum | mean (their code; divides the KL coefficient by n)"
    )
    policy_loss_level: LossLevel = knob(
        LossLevel.token, help="token (their code) | segment (joint ratio per macro action)"
    )


def settings(method_cfg: DictConfig, schema: type = Config):
    """The method config as a plain `schema` instance (enums as their string values); a method built on
    this loop passes its own `Config` subclass."""
    return schema(**{f.name: option(method_cfg[f.name]) for f in fields(schema) if f.name in method_cfg})


def logprob_temperature(m) -> float:
    """The temperature of the distribution whose log-probs the loop computes (`m.logprob_temperature`)."""
    return m.temperature if m.logprob_temperature == "sampling" else 1.0


def reward_spec(method_cfg: DictConfig) -> Any:
    return rewards.configured(method_cfg, "method.reward")


def check(cfg: DictConfig) -> None:
    m = cfg.method
    require(
        option(cfg.model.quantization) == "none",
        f"method={m.name} does not load quantized models (its own loop moves whole models between devices): "
        "set model.quantization=none (LoRA alone works)",
    )
    terms = rewards.parse(reward_spec(m), "method.reward")
    prompt_budget = cfg.trainer.max_length - m.max_new_tokens
    require(
        prompt_budget >= 1,
        f"trainer.max_length={cfg.trainer.max_length} leaves no room for a prompt after "
        f"method.max_new_tokens={m.max_new_tokens}",
    )
    require(
        option(m.critic_init) != "reward_model" or rewards.reward_model_path(reward_spec(m)) is not None,
        "method.critic_init=reward_model needs method.reward=model:<reward model or reward run dir>",
    )
    require(
        not (
            cfg.launcher.name == "deepspeed"
            and cfg.launcher.zero_stage == 3
            and len(terms) > 1
            and any(t.reward.startswith("model:") for t in terms)
        ),
        "method.reward: under launcher.zero_stage=3 a reward model must be the only reward term (its weights are "
        "sharded and served by its own inference engine)",
    )
