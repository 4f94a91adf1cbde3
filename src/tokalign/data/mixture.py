"""Weighted dataset mixtures: `dataset.mixture=[{weight: 3, path: a.jsonl}, {weight: 1, preset: hh_rlhf}]`.

Each component is a dataset of its own: the run's `dataset` knobs that say how rows are read
(split, hold-out, columns, seed, ...), then the named `conf/dataset/` preset's (`preset:`), then
the component's own keys, so each has its own file or hub id and its own column map. Every
component is loaded as the method's data kind (its own hold-out gives its evaluation rows); the
weights are the shares of the mixed rows. Without `dataset.num_train` the mixture is as large
as it can be without repeating a row; with it, a component too small for its share repeats
(whole passes, each in a new order). Which rows, and their order, follow from `dataset.seed`.
The composition is said at start.
"""

from __future__ import annotations

import math
import random
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from tokalign.config import DatasetConfig, check_bounds, conf_dir, option
from tokalign.errors import ConfigError, DataError

KNOB = "dataset.mixture"
WEIGHT, PRESET = "weight", "preset"
# How a component's rows are read: what it inherits from the run's dataset and may set itself.
READING = ("name", "source", "hub_id", "hub_config", "path", "split", "eval_split", "columns", "num_train")
READING += ("num_eval", "eval_fraction", "seed")
# Toy tasks each have their own reward and checks: one per mixture; hub and local data mix freely.
EXTERNAL = {"hub", "local"}


def _preset(name: str, where: str) -> dict:
    """A `dataset=<name>` preset's reading knobs: a conf/dataset file's, or the schema's own task (toy_pref)."""
    default = DatasetConfig()
    path = Path(conf_dir()) / "dataset" / f"{name}.yaml"
    if name == default.name and not path.is_file():
        return {"name": default.name, "source": option(default.source)}
    if not path.is_file():
        known = sorted({default.name, *(p.stem for p in path.parent.glob("*.yaml"))})
        raise ConfigError(f"{where}.preset={name} is not a dataset preset; known: {', '.join(known)}")
    return {k: v for k, v in OmegaConf.to_container(OmegaConf.load(path)).items() if k in READING}


def components(cfg: DictConfig) -> list[tuple[DictConfig, float]]:
    """Each component's dataset config and weight (empty without a mixture); ConfigError names a bad one."""
    items = cfg.get("mixture") or []
    if not items:
        return []
    base = {k: cfg[k] for k in READING if k != "num_train"}  # the run's num_train sizes the whole mixture
    out = []
    for i, item in enumerate(items):
        where = f"{KNOB}[{i}]"
        if not isinstance(item, (DictConfig, dict)):
            raise ConfigError(
                f"{where}={item} is not a mapping: write {{weight: 1, path: <file>}} or {{weight: 1, preset: <name>}}"
            )
        own = OmegaConf.to_container(item) if isinstance(item, DictConfig) else dict(item)
        unknown = sorted(set(own) - {WEIGHT, PRESET, *READING})
        if unknown:
            raise ConfigError(
                f"{where}.{unknown[0]} is not a knob of a mixture component; known: {', '.join((WEIGHT, PRESET, *READING))}"
            )
        weight = own.pop(WEIGHT, None)
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight) or weight <= 0:
            raise ConfigError(f"{where}.weight={weight} must be a finite number > 0 (the component's share)")
        preset = _preset(str(own.pop(PRESET)), where) if PRESET in own else {}
        if own.get("path") and "source" not in own:
            own["source"] = "local"
        try:
            merged = OmegaConf.merge(OmegaConf.structured(DatasetConfig), base, preset, own)
        except OmegaConfBaseException as err:
            raise ConfigError(f"{where}: {str(getattr(err, 'msg', err)).splitlines()[0]}") from None
        component = OmegaConf.masked_copy(merged, list(READING))  # typed, without on-policy's interpolations
        check_bounds(DatasetConfig, component, where)
        out.append((component, float(weight)))
    return out


def task(component: DictConfig) -> str:
    return "local" if component.path else str(option(component.source))


def check(cfg: DictConfig) -> None:
    """The mixture's relations, before anything is loaded: components read, one toy task at most, no
    dataset.path beside it."""
    if not isinstance(cfg.get("mixture"), (ListConfig, list)) or not cfg.mixture:
        return
    if cfg.path:
        raise ConfigError(
            f"dataset.path and {KNOB} both name the data: put the file in the mixture ({{weight: 1, path: ...}})"
        )
    tasks = [task(c) for c, _ in components(cfg)]
    if len(set(tasks)) > 1 and not set(tasks) <= EXTERNAL:
        raise ConfigError(
            f"{KNOB} mixes {' and '.join(sorted(set(tasks)))}: a toy task has its own reward and checks, so it "
            "mixes only with itself; hub and local data mix freely"
        )


def shares(weights: list[float], sizes: list[int], total: int | None) -> list[int]:
    """Rows taken from each component: `total` (None: as many as fit without repeating a row) split by weight,
    rounding by largest remainder so that they add up."""
    p = [w / sum(weights) for w in weights]
    n = total if total is not None else min(math.floor(s / q) for s, q in zip(sizes, p))
    exact = [n * q for q in p]
    counts = [math.floor(x) for x in exact]
    for i in sorted(range(len(p)), key=lambda i: counts[i] - exact[i])[: n - sum(counts)]:
        counts[i] += 1
    return counts


def take(size: int, count: int, rng: random.Random) -> list[int]:
    """`count` row indices of a component of `size` rows: whole shuffled passes, the last one cut short."""
    out: list[int] = []
    while len(out) < count:
        order = list(range(size))
        rng.shuffle(order)
        out += order[: count - len(out)]
    return out


ROLES = {"prompt": "user", "completion": "assistant", "chosen": "assistant", "rejected": "assistant"}


def _text_fields(ds) -> list[str]:
    return [c for c in ROLES if c in ds.column_names and len(ds) and isinstance(ds[0][c], str)]


def _as_chat(ds):
    """Plain-text fields as one chat turn each, as the run formats plain text anyway (README: Your own data)."""
    text = _text_fields(ds)
    return ds.map(lambda r: {c: [{"role": ROLES[c], "content": r[c]}] for c in text}) if text else ds


def mix(parts: list[Any], weights: list[float], total: int | None, seed: int) -> tuple[Any, list[int]]:
    """The mixed `datasets.Dataset` (shuffled) and the rows taken from each part. Columns are those every part
    has; when parts disagree on plain text vs chat messages, plain text becomes chat turns."""
    import datasets

    counts = shares(weights, [len(p) for p in parts], total)
    common = [c for c in parts[0].column_names if all(c in p.column_names for p in parts)]
    picked = [
        p.select_columns(common).select(take(len(p), n, random.Random(f"{seed}/{i}")))
        for i, (p, n) in enumerate(zip(parts, counts))
    ]
    if len({tuple(_text_fields(p)) for p in picked if len(p)}) > 1:
        picked = [_as_chat(p) for p in picked]
    try:
        mixed = datasets.concatenate_datasets(picked)
    except ValueError as err:
        raise DataError(f"{KNOB}: the components' rows do not fit one table ({str(err).splitlines()[0]})") from None
    order = list(range(len(mixed)))
    random.Random(f"{seed}/mixture").shuffle(order)
    return mixed.select(order), counts
