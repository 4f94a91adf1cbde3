"""Sweep points: a point's run directory is named by its overrides, so resubmitting any subset
of a sweep (`-m ... resume=auto` with the same `hydra.sweep.dir`) continues exactly those points.

`point_name` is Hydra's `hydra.sweep.subdir` for every launcher (the `tokalign_point` resolver in
conf/config.yaml) and the SLURM launcher's own.
"""

from __future__ import annotations

import fnmatch
import hashlib
from collections.abc import Sequence

# Overrides that do not make a different point: changing them keeps the run directory.
POINT_EXCLUDE = ["resume", "logger", "logger.*", "eval.*", "tags", "cache_dir"]
MAX_NAME = 120


def point_name(overrides: Sequence[str], exclude: Sequence[str] = POINT_EXCLUDE) -> str:
    """The run directory of a sweep point: its overrides, sorted, as typed (`a=1,b=x`).

    Keys matching `exclude` are left out; `/` becomes `%`; names longer than MAX_NAME keep a
    readable head and a hash of the whole."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(list(overrides))
    kept = sorted(
        o.input_line
        for o in parsed
        if not o.is_hydra_override() and not any(fnmatch.fnmatchcase(o.key_or_group, p) for p in exclude)
    )
    name = ",".join(kept).replace("/", "%") or "default"
    if len(name) > MAX_NAME:
        name = f"{name[: MAX_NAME - 9]}-{hashlib.sha1(name.encode()).hexdigest()[:8]}"
    return name


def register_resolver() -> None:
    """`${tokalign_point:${hydra.overrides.task}}` in configs (idempotent)."""
    from omegaconf import OmegaConf

    if not OmegaConf.has_resolver("tokalign_point"):
        OmegaConf.register_new_resolver("tokalign_point", lambda task: point_name(list(task)))
