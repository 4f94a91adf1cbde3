"""Knobs: ranges checked for numbers and lists, unknown keys caught with a suggestion, choices
equal to the libraries' own lists."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from omegaconf import OmegaConf

from tokalign.config import LRScheduler, check_bounds, knob
from tokalign.errors import ConfigError


@dataclass
class Inner:
    rate: float = knob(0.5, gt=0, le=1, help="a share")


@dataclass
class Outer:
    steps: int = knob(3, ge=0, help="steps")
    ks: list[int] = knob(help="sizes", ge=1, factory=lambda: [1, 2])
    inner: Inner = knob(help="nested", factory=Inner)


@pytest.mark.parametrize(
    "change,message",
    [
        ({"steps": -1}, "x.steps=-1 is out of range: expected >= 0"),
        ({"ks": [1, 0]}, r"x.ks=\[1, 0\] is out of range: expected >= 1"),
        ({"inner": {"rate": 0.0}}, "x.inner.rate=0.0 is out of range: expected > 0 and <= 1"),
        ({"inner": {"rat": 0.3}}, "x.inner.rat is not a knob here; did you mean rate"),
        ({"stepz": 1}, "x.stepz is not a knob here; did you mean steps"),
    ],
)
def test_bounds_and_unknown_keys(change, message):
    node = OmegaConf.merge(OmegaConf.to_container(OmegaConf.structured(Outer)), change)
    with pytest.raises(ConfigError, match=message):
        check_bounds(Outer, node, "x")


def test_defaults_are_in_range():
    check_bounds(Outer, OmegaConf.structured(Outer), "x")


def test_learning_rate_schedules_are_transformers_own():
    from transformers import SchedulerType

    assert {s.value for s in LRScheduler} == {s.value for s in SchedulerType}
