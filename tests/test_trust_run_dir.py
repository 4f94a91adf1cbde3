"""A run directory is data, never code: `eval` and `inspect` import no function its config names,
load no pickle, follow no path or link out of it, and resolve no interpolation, unless the command
line says `trust_run_code=true` (which lists what it trusts). Each probe is a stranger's directory."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import yaml

from tests.conftest import copy_run, run_cli
from tests.test_bad_input import _probe

MARKER_MODULE = """
from pathlib import Path
Path(__file__).with_name("ran").write_text("code from the run directory ran")

def reward(prompts, completions, **_):
    return [1.0] * len(completions)
"""


def length_reward(prompts, completions, **_):
    """The user's own reward, named on the command line."""
    return [float(len(c if isinstance(c, str) else c[-1]["content"])) for c in completions]


def _hostile(finished_run: Path, tmp_path: Path, monkeypatch, **changes) -> Path:
    """A copy of a finished run with a marker-writing module inside it (importable, as from its own
    directory), no eval.json, and `changes` ({dotted key: value}) written into its resolved.yaml."""
    run = copy_run(finished_run, tmp_path / "stranger")
    (run / "evil_marker.py").write_text(MARKER_MODULE)
    (run / "eval.json").unlink()
    monkeypatch.syspath_prepend(str(run))
    cfg = yaml.safe_load((run / "resolved.yaml").read_text())
    for key, value in changes.items():
        node = cfg
        *parents, last = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
    (run / "resolved.yaml").write_text(yaml.safe_dump(cfg))
    return run


@pytest.mark.parametrize(
    "key,value",
    [
        ("eval.reward", "evil_marker:reward"),
        ("eval.reward", "os:system"),
        ("eval.extra_rewards", ["pty:spawn"]),
        ("eval.reward", [{"reward": "gold", "weight": 0.5}, {"reward": "evil_marker.reward", "weight": 0.5}]),
    ],
)
def test_eval_imports_no_function_the_run_dir_names(finished_run, tmp_path, monkeypatch, capsys, key, value):
    run = _hostile(finished_run, tmp_path, monkeypatch, **{key: value})
    line = _probe(capsys, "eval", f"run_dir={run}")
    assert "is code named by" in line and "resolved.yaml" in line and "trust_run_code=true" in line
    assert not (run / "ran").exists() and not (run / "eval.json").exists()


def test_trust_run_code_imports_it_and_shows_it_first(finished_run, tmp_path, monkeypatch, capsys):
    run = _hostile(finished_run, tmp_path, monkeypatch, **{"eval.reward": "evil_marker:reward"})
    run_cli("eval", f"run_dir={run}", "trust_run_code=true")
    err = capsys.readouterr().err
    assert "trust_run_code=true" in err and "eval.reward=evil_marker:reward" in err
    assert (run / "ran").exists() and (run / "eval.json").exists()


def test_the_users_own_reward_runs_and_the_configs_paths_stay_unused(finished_run, tmp_path, monkeypatch, capsys):
    elsewhere = tmp_path / "elsewhere"
    run = _hostile(
        finished_run,
        tmp_path,
        monkeypatch,
        **{"eval.reward": "os:system", "cache_dir": str(elsewhere), "run_name": "../../../escape"},
    )
    run_cli("eval", f"run_dir={run}", f"eval.reward={__name__}:length_reward", "eval.export=[mt_bench]")
    capsys.readouterr()
    assert (run / "eval.json").exists() and not (run / "ran").exists()
    assert not elsewhere.exists()  # the cache is the reader's, not the directory's
    written = [p for p in tmp_path.rglob("*.jsonl") if "export" in p.parts]
    assert written and all(p.resolve().is_relative_to(run.resolve()) for p in written)


def test_inspect_imports_no_function_the_run_dir_names(finished_run, tmp_path, monkeypatch, capsys):
    run = _hostile(
        finished_run,
        tmp_path,
        monkeypatch,
        method={"name": "grpo", "algorithm": "grpo", "reward": "evil_marker:reward"},
    )
    line = _probe(capsys, "inspect", f"run_dir={run}")
    assert "method.reward=evil_marker:reward is code named by" in line
    assert not (run / "ran").exists() and not (run / "inspect.html").exists()


class _Payload:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "unpickled"))


@pytest.mark.parametrize("command", ["eval", "inspect"])
def test_a_pickle_in_the_model_is_never_loaded(finished_run, tmp_path, monkeypatch, capsys, command):
    run = _hostile(finished_run, tmp_path, monkeypatch)
    marker = tmp_path / "unpickled"
    (run / "model" / "pytorch_model.bin").write_bytes(pickle.dumps(_Payload(marker)))
    line = _probe(capsys, command, f"run_dir={run}")
    assert "holds pickled files (pytorch_model.bin)" in line and not marker.exists()


def test_paths_and_templates_of_the_config_do_not_reach_out(finished_run, tmp_path, monkeypatch, capsys):
    outside = tmp_path / "questions.jsonl"
    outside.write_text('{"instruction": "secret"}\n')
    run = _hostile(
        finished_run, tmp_path, monkeypatch, **{"eval.export": ["alpaca_eval"], "eval.export_questions": str(outside)}
    )
    assert "reaches outside the run directory" in _probe(capsys, "eval", f"run_dir={run}")
    run = _hostile(finished_run, tmp_path / "b", monkeypatch, run_name="${oc.env:HOME}")
    assert "run_name holds an interpolation" in _probe(capsys, "eval", f"run_dir={run}")
    (run / "resolved.yaml").write_text("model: !!python/object/apply:os.system ['touch ran']\n")
    assert "is not readable YAML" in _probe(capsys, "eval", f"run_dir={run}")
    assert not (run / "ran").exists()


@pytest.mark.parametrize("name", ["eval.json", "inspect.html", "export"])
def test_a_link_out_of_the_run_dir_is_refused(finished_run, tmp_path, monkeypatch, capsys, name):
    run = _hostile(finished_run, tmp_path, monkeypatch)
    victim = tmp_path / "victim"
    victim.mkdir() if name == "export" else victim.write_text("keep me")
    (run / name).unlink(missing_ok=True)
    (run / name).symlink_to(victim)
    command = "inspect" if name == "inspect.html" else "eval"
    line = _probe(capsys, command, f"run_dir={run}", *(["eval.export=[alpaca_eval]"] if name == "export" else []))
    assert f"{run / name} is a symbolic link to {victim}, outside it" in line
    assert (list(victim.iterdir()) == []) if name == "export" else victim.read_text() == "keep me"
