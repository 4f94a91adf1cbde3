"""The choices tokalign passes through to TRL are TRL's own: an upstream change fails here, loudly."""

from __future__ import annotations

import inspect
import re

from tokalign.bases.dpo.config import LossType as DPOLossType
from tokalign.bases.grpo.config import ImportanceLevel, ScaleRewards
from tokalign.bases.grpo.config import LossType as GRPOLossType


def test_dpo_loss_types_are_trls():
    import trl.trainer.dpo_trainer as dpo

    assert {t.value for t in DPOLossType} == set(re.findall(r'loss_type == "(\w+)"', inspect.getsource(dpo)))


def test_grpo_choices_are_trls():
    from trl import GRPOConfig

    fields = {f.name: f.metadata.get("help", "") for f in GRPOConfig.__dataclass_fields__.values()}
    for choices, field in (
        (GRPOLossType, "loss_type"),
        (ScaleRewards, "scale_rewards"),
        (ImportanceLevel, "importance_sampling_level"),
    ):
        assert all(f"{c.value}'" in fields[field] for c in choices), (field, fields[field])
    import trl.trainer.grpo_trainer as grpo

    handled = set(re.findall(r'loss_type == "(\w+)"', inspect.getsource(grpo)))
    assert handled <= {c.value for c in GRPOLossType}
