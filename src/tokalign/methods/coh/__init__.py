"""Chain of Hindsight (Liu, Sferrazza, Abbeel; ICLR 2024, arXiv 2302.02676): fine-tuning on feedback chains.

Each preference pair becomes a chain "prompt, marker, output, marker, output" (orders p, n, pn,
np), trained with the language-model loss on the outputs only (Eq. 2), plus λ times a
pretraining language-model loss (Eq. 3) and with forgetful causal masking (a few past tokens
hidden). It runs on SFT (TRL's SFTTrainer with its own loss); at inference the prompt is followed
by the positive marker, which the saved chat template appends. Defaults: the authors' code where
it produced the paper's numbers, the paper where the code has no value for it (docs/coh.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from omegaconf import DictConfig

from tokalign.bases.contract import DataKind, Method, MethodConfig
from tokalign.config import knob, require
from tokalign.data.hindsight import ORDERS, TOY_MARKERS


@dataclass
class Config(MethodConfig):
    algorithm: str = "coh"
    name: str = "coh"
    orders: list[str] = knob(
        help="chains to draw from for each pair, one per pair: p, n, pn, np (the authors' code: all four)",
        nonempty=True,
        factory=lambda: list(ORDERS),
    )
    positive_marker: str = knob(TOY_MARKERS["p"], help="feedback phrase before a preferred output")
    negative_marker: str = knob(TOY_MARKERS["n"], help="feedback phrase before a dispreferred output")
    last_only: bool = knob(
        False, help="train only the chain's last output (the paper's text) instead of every output (their code)"
    )
    pretrain_weight: float = knob(1.5, ge=0, help="λ of the pretraining LM term (paper App. B: 1.5; 0: off)")
    pretrain_data: Optional[str] = knob(
        None,
        help="JSON/JSONL file of {text} rows for the pretraining term; null: the toy task's SFT notes (toy_pref only)",
    )
    pretrain_rows: int = knob(2000, ge=1, help="pretraining rows to cycle through")
    fcm_min: float = knob(0.0, ge=0, lt=1, help="forgetful causal masking: least share of past tokens hidden")
    fcm_max: float = knob(
        0.05, ge=0, lt=1, help="forgetful causal masking: most share hidden (paper: 0.05; 0: plain causal mask)"
    )


def check(cfg: DictConfig) -> None:
    m = cfg.method
    bad = [o for o in m.orders if o not in ORDERS]
    require(not bad, f"method.orders={list(m.orders)}: {bad} not among {', '.join(ORDERS)}")
    require(m.fcm_min <= m.fcm_max, f"method.fcm_min={m.fcm_min} must be <= method.fcm_max={m.fcm_max}")


def train(run) -> dict:
    from tokalign.methods.coh.trainer import fit

    return fit(run)


METHOD = Method(
    name="coh",
    config=Config,
    data=DataKind.preference,
    train=train,
    check=check,
    description="Chain of Hindsight (Liu et al., ICLR 2024): SFT on chains of outputs behind feedback markers",
)
