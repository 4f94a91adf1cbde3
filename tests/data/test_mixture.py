"""dataset.mixture: weighted shares of several datasets, each read with its own knobs, deterministic from the
seed, checked before anything is loaded."""

from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from tests.conftest import compose_config
from tests.test_bad_input import _probe
from tokalign.data import mixture
from tokalign.data.loading import load_split, load_training_rows, task_of
from tokalign.errors import ConfigError


def test_shares_follow_the_weights_and_add_up():
    assert mixture.shares([3, 1], [36, 27], None) == [36, 12]  # as many as fit without repeating a row
    assert mixture.shares([3, 1], [36, 27], 100) == [75, 25]
    assert sorted(mixture.shares([1, 1, 1], [10, 10, 10], 10)) == [3, 3, 4]
    assert sum(mixture.shares([0.2, 0.3, 0.5], [5, 50, 500], 77)) == 77


def test_a_component_too_small_repeats_in_whole_passes():
    picked = mixture.take(4, 10, random.Random(0))
    counts = Counter(picked)
    assert sorted(counts) == [0, 1, 2, 3] and sorted(counts.values()) == [2, 2, 3, 3]
    assert sorted(picked[:4]) == [0, 1, 2, 3] and sorted(picked[4:8]) == [0, 1, 2, 3]


@pytest.fixture
def files(tmp_path) -> tuple[Path, Path]:
    """a: 40 plain-text rows under other column names; b: 30 chat rows."""
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    a.write_text("".join(json.dumps({"question": f"a{i}?", "completion": f"A{i}"}) + "\n" for i in range(40)))
    chat = (
        {"prompt": [{"role": "user", "content": f"b{i}?"}], "completion": [{"role": "assistant", "content": f"B{i}"}]}
        for i in range(30)
    )
    b.write_text("".join(json.dumps(r) + "\n" for r in chat))
    return a, b


def _dataset(a: Path, b: Path, *extra: str):
    spec = f"[{{weight: 3, path: {a}, columns: {{prompt: question}}}}, {{weight: 1, path: {b}}}]"
    return compose_config("method=sft", f"dataset.mixture={spec}", *extra).dataset


def _source(row) -> str:
    return row["prompt"][-1]["content"][0]


def test_rows_mix_by_weight_each_with_its_own_column_map(files):
    a, b = files
    data, note = load_training_rows(_dataset(*files), "sft")
    sources = Counter(_source(r) for r in data)
    assert sources == {"a": 36, "b": 12}  # 40 and 30 rows, a tenth of each held out: 36 fit with 12 of b
    assert f"36 from dataset.path={a} (weight 3, 36 rows)" in note and f"12 from dataset.path={b}" in note
    assert all(isinstance(r["prompt"], list) for r in data)  # a's plain text became chat turns like b's
    assert [_source(r) for r in data][:12].count("a") < 12  # shuffled together, not one block after the other
    again, _ = load_training_rows(_dataset(*files), "sft")
    assert list(again) == list(data)  # deterministic from the seed
    other, _ = load_training_rows(_dataset(*files, "dataset.seed=1"), "sft")
    assert list(other) != list(data) and Counter(_source(r) for r in other) == sources

    bigger, note = load_training_rows(_dataset(*files, "dataset.num_train=100"), "sft")
    assert Counter(_source(r) for r in bigger) == {"a": 75, "b": 25}
    assert "75 from" in note and "repeated" in note
    held = load_split(_dataset(*files), "sft", "eval")
    assert Counter(_source(r) for r in held) == {"a": 4, "b": 1}  # the held-out rows of each, by weight
    assert not {r["completion"][0]["content"] for r in held} & {r["completion"][0]["content"] for r in data}


def test_presets_mix_and_name_the_task():
    d = compose_config(
        "method=grpo", "dataset.mixture=[{weight: 1, preset: toy_math}, {weight: 1, preset: toy_math, seed: 7}]"
    ).dataset
    assert task_of(d) == "toy_math"
    rows, _ = load_training_rows(d, "prompt")
    assert len(rows) == 4000 and "answer" in rows.column_names


@pytest.mark.parametrize(
    "spec,message",
    [
        ("[{weight: 0, preset: toy_math}]", "dataset.mixture[0].weight=0 must be a finite number > 0"),
        ("[{preset: toy_math}]", "dataset.mixture[0].weight=None must be"),
        (
            "[{weight: 1, preset: toy_math}, {weight: 1, path: x.jsonl, pairs: on_policy}]",
            "mixture[1].pairs is not a knob",
        ),
        ("[{weight: 1, preset: no_such}]", "dataset.mixture[0].preset=no_such is not a dataset preset"),
        ("[{weight: 1, preset: toy_math}, {weight: 1, preset: toy_pref}]", "mixes toy_math and toy_pref"),
        ("[{weight: 1, preset: toy_math, num_eval: 0}]", "dataset.mixture[0].num_eval=0 is out of range"),
        ("[{weight: 1, source: toy_maths}]", "dataset.mixture[0]"),
        ("[toy_math]", "dataset.mixture[0]=toy_math is not a mapping"),
    ],
)
def test_a_bad_mixture_is_one_line_at_validation(spec, message):
    with pytest.raises(ConfigError) as err:
        compose_config("method=grpo", f"dataset.mixture={spec}")
    assert message in str(err.value) and "\n" not in str(err.value)


def test_a_path_beside_a_mixture_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="dataset.path and dataset.mixture both name the data"):
        compose_config(f"dataset.path={tmp_path}/x.jsonl", "dataset.mixture=[{weight: 1, preset: toy_pref}]")


def test_a_missing_component_file_is_one_line_before_anything_is_written(tmp_path, capsys):
    run = tmp_path / "run"
    missing = tmp_path / "missing.jsonl"
    spec = f"[{{weight: 1, path: {missing}}}]"
    line = _probe(capsys, "train", f"hydra.run.dir={run}", "logger=none", "method=sft", f"dataset.mixture={spec}")
    assert line == f"tokalign: error: dataset.path={missing} does not exist"
    assert not run.exists() or not any(run.iterdir())


def test_components_inherit_the_runs_reading_knobs():
    d = compose_config("dataset.num_eval=5", "dataset.mixture=[{weight: 2, preset: toy_pref}]").dataset
    ((component, weight),) = mixture.components(d)
    assert weight == 2.0 and component.num_eval == 5 and component.num_train is None
    assert OmegaConf.select(component, "on_policy") is None  # only what reading rows needs
