"""DPO settings (TRL's DPOTrainer knobs), shared by `method=dpo` and the DPO models other methods build."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from tokalign.bases.contract import MethodConfig
from tokalign.config import knob


class LossType(StrEnum):
    """TRL 1.16's DPO loss types (a test keeps them equal to TRL's)."""

    sigmoid = "sigmoid"
    hinge = "hinge"
    ipo = "ipo"
    exo_pair = "exo_pair"
    nca_pair = "nca_pair"
    robust = "robust"
    bco_pair = "bco_pair"
    sppo_hard = "sppo_hard"
    aot = "aot"
    aot_unpaired = "aot_unpaired"
    apo_zero = "apo_zero"
    apo_down = "apo_down"
    discopop = "discopop"
    sft = "sft"
    sigmoid_norm = "sigmoid_norm"


@dataclass
class Config(MethodConfig):
    algorithm: str = "dpo"
    name: str = "dpo"
    beta: float = knob(0.1, gt=0, help="KL coefficient: the temperature of the implicit reward")
    label_smoothing: float = knob(0.0, ge=0, lt=0.5, help="conservative DPO's label noise (sigmoid loss)")
    loss_type: LossType = knob(LossType.sigmoid, help="TRL's DPO loss")
    precompute_ref_log_probs: bool = knob(False, help="reference log-probs computed once before training")
    reverse: bool = knob(False, help="train on swapped pairs: a reverse-DPO model (a contrastive teacher)")


def swapped(data):
    """Preference rows with chosen and rejected exchanged."""
    return data.rename_columns({"chosen": "rejected", "rejected": "chosen"})
