"""Text2Grad (Wang et al., ICLR 2026, arXiv 2505.22338): PPO on span-level rewards from critiques.

A critic names good and poor spans of each sampled response; the tokens of a good span earn +1,
of a poor span −1, every token pays the KL penalty, and no sequence score is added:
r_t = w_t δ_t − β_KL KL_t (`tokalign.losses.text2grad_token_rewards`). It runs the PPO loop of
`tokalign.bases.ppo` (its declared base), so every PPO knob applies. The critic is a generative
model answering in the paper's JSON (`critic_model`) or, on the toy preference task, its oracle
(`toy_pref.critique`, from the gold rule). Defaults are the authors' SLF5K script where it produced
the paper's numbers; their clause-restarting GAE is an option (docs/text2grad.md says why).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Optional

from omegaconf import DictConfig

from tokalign.bases.contract import DataKind, Method
from tokalign.bases.ppo import config as ppo
from tokalign.config import knob, option, require


class GaeRestart(StrEnum):
    none = "none"
    punctuation = "punctuation"


@dataclass
class Config(ppo.Config):
    algorithm: str = "text2grad"
    name: str = "text2grad"
    # The PPO knobs whose values in their SLF5K script differ from PPO's defaults
    kl_coef: float = knob(0.2, ge=0, help="β_KL of the per-token KL penalty (their init_kl_coef 0.2; fixed here)")
    num_ppo_epochs: int = knob(4, ge=1, help="passes over each rollout (their script: 4)")
    # Text2Grad
    critic_model: Optional[str] = knob(
        None,
        help="a generative critic (path or hub id) answering JSON {textual_feedback, good_spans, poor_spans}; "
        "null: the toy task's oracle critic (toy_pref.critique, from its gold rule)",
    )
    critic_max_new_tokens: int = knob(256, ge=1, help="longest critique the generative critic writes")
    label_coef: float = knob(
        1.0, ge=0, help="weight of the span labels δ (0: no critic is asked; with score_coef=1 this is PPO exactly)"
    )
    length_weighting: bool = knob(
        True,
        help="scale δ by 1/(1+exp(clip(α(ℓ−L*)−6, −10, 6))), ℓ from the first label (their SLF5K code; "
        "false: the paper's δ)",
    )
    target_length: int = knob(48, ge=0, help="L* of the length weight (their code: 48)")
    length_alpha: float = knob(1.0, gt=0, help="α of the length weight (their code: 1)")
    score_coef: float = knob(0.0, ge=0, help="weight of the scalar score on the last token (the paper: 0, labels only)")
    gae_restart: GaeRestart = knob(
        GaeRestart.none,
        help="none: GAE over the whole response (the paper) | punctuation: their code's, the token after "
        "each , . ? ! dropped and GAE restarted there",
    )


def check(cfg: DictConfig) -> None:
    from tokalign.data.loading import task_of

    ppo.check(cfg)
    m = cfg.method
    require(
        m.critic_model is not None or task_of(cfg.dataset) == "toy_pref",
        f"method.critic_model is null, and the oracle critic reads the toy preference task only, not "
        f"{task_of(cfg.dataset)}: pass method.critic_model=<a generative critic> or dataset=toy_pref",
    )
    require(
        option(m.termination) == "fixed" and m.n == 1,
        "text2grad labels tokens: it needs token-level PPO (method.termination=fixed, method.n=1)",
    )


def train(run) -> dict:
    from tokalign.methods.text2grad.loop import fit

    return fit(run)


def view(ctx):
    from tokalign.methods.text2grad.view import text2grad_view

    return text2grad_view(ctx)


METHOD = Method(
    name="text2grad",
    config=Config,
    data=DataKind.prompt,
    train=train,
    check=check,
    view=view,
    description="Text2Grad (Wang et al., ICLR 2026): PPO on token rewards from a critique's good and poor spans",
)
