"""Bad input a user really types ends in one line on stderr and exit status 2, before anything heavy,
and leaves nothing behind (no W&B run, no model). Each probe is a command line as typed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import run_cli

CONFIG_PROBES = [
    (["method=nope"], "Could not find 'method/nope'"),
    (["method.bta=0.1"], "method.bta is not a knob here; did you mean beta?"),
    (["+method.bta=0.1"], "method.bta is not a knob here; did you mean beta?"),
    (["trainer.max_steps=many"], "max_steps"),
    (["method.beta=-0.1"], "method.beta=-0.1 is out of range: expected > 0"),
    (["trainer.max_steps=-5"], "trainer.max_steps=-5 is out of range: expected >= 0"),
    (["trainer.per_device_batch_size=0"], "trainer.per_device_batch_size=0 is out of range"),
    (["trainer.learning_rate=-1e-4"], "trainer.learning_rate=-0.0001 is out of range: expected > 0"),
    (["trainer.warmup_ratio=1.5"], "trainer.warmup_ratio=1.5 is out of range"),
    (["trainer.precision=fp8"], "fp8"),
    (["trainer.lr_scheduler=cosin"], "cosin"),
    (["method=d3s_grpo", "method.k_init=0"], "method.k_init=0.0 is out of range: expected > 0 and <= 1"),
    (["method=d3s_grpo", "method.k_final=1.5"], "method.k_final=1.5 is out of range"),
    (["method=d3s_grpo", "method.n_init=9"], "method.n_init=9 keeps more samples than a group has"),
    (["method=grpo", "method.num_generations=3"], "is not a multiple of method.num_generations=3"),
    (["method=grpo", "method.loss_type=dapoo"], "dapoo"),
    (["method=grpo", "method.reward=exact_mach"], "method.reward=exact_mach is not a reward"),
    (["method=ppo", "method.reward=model:"], "is not a reward"),
    (["method=ppo", "method.critic_init=reward_model"], "method.critic_init=reward_model needs method.reward=model:"),
    (["method=ppo", "trainer.max_length=40"], "leaves no room for a prompt"),
    (["method=ma_ppo", "method.termination=fixd"], "fixd"),
    (["method=tgdpo", "method.alpha=-1"], "method.alpha=-1.0 is out of range"),
    (["eval.pass_k=[1,4]"], "eval.pass_k=[1, 4] asks for pass@4 from eval.num_samples=1"),
    (["eval.reward=gold_rewrd"], "eval.reward=gold_rewrd is not a reward"),
    (["model.tiny.num_heads=5"], "model.tiny.num_heads=5 must divide model.tiny.hidden_size=64"),
    (["model.dtype=float8"], "float8"),
    (["dataset.eval_fraction=1.5"], "dataset.eval_fraction=1.5 is out of range"),
    (["launcher=deepspeed", "launcher.zero_stage=4"], "launcher.zero_stage=4 is out of range"),
    (["launcher=ddp", "launcher.num_gpus=0"], "launcher.num_gpus=0 is out of range: expected >= 1"),
    (["launcher=deepspeed", "launcher.offload_param=cpu"], "launcher.offload_param needs launcher.zero_stage=3"),
    (["logger=nope"], "Could not find 'logger/nope'"),
    (["resume=maybe"], "maybe"),
]


def _probe(capsys, *args: str) -> str:
    with pytest.raises(SystemExit) as exit_:
        run_cli(*args)
    err = capsys.readouterr().err
    assert exit_.value.code == 2, err
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("tokalign: error:")]
    assert len(errors) == 1, err
    return errors[0]


@pytest.mark.parametrize("overrides,message", CONFIG_PROBES, ids=[" ".join(o) for o, _ in CONFIG_PROBES])
def test_config_mistakes_fail_in_one_line_before_anything_starts(tmp_path, capsys, overrides, message):
    run_dir = tmp_path / "run"
    line = _probe(capsys, "train", f"hydra.run.dir={run_dir}", *overrides)
    assert message in line
    assert not (run_dir / "resolved.yaml").exists()  # nothing was started


def _jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


PAIR = {"prompt": "Tell me about the lake.", "chosen": "the lake is calm .", "rejected": "the lake is dull ."}


def _data_probes(root: Path) -> list[tuple[list[str], str]]:
    empty = root / "empty.jsonl"
    empty.write_text("\n")
    latin = root / "latin.jsonl"
    latin.write_bytes(json.dumps(PAIR).encode() + b"\n" + '{"prompt": "caf\xe9"}'.encode("latin-1") + b"\n")
    broken = _jsonl(root / "broken.jsonl", [PAIR, PAIR, '{"prompt": "x", ', PAIR])
    return [
        ([f"dataset.path={empty}"], f"{empty}: the file is empty"),
        ([f"dataset.path={broken}"], "broken.jsonl:3: broken JSON"),
        ([f"dataset.path={latin}"], "latin.jsonl:2: not UTF-8 text"),
        ([f"dataset.path={root / 'missing.jsonl'}"], "missing.jsonl does not exist"),
        (
            [f"dataset.path={_jsonl(root / 'cols.jsonl', [{'question': 'q', 'good': 'a', 'bad': 'b'}] * 4)}"],
            "missing column(s)",
        ),
        ([f"dataset.path={_jsonl(root / 'one.jsonl', [PAIR])}"], "has 1 row(s): too few to train and evaluate"),
        (
            [f"dataset.path={_jsonl(root / 'same.jsonl', [{**PAIR, 'rejected': PAIR['chosen']}] * 8)}"],
            "no usable training row is left: dropped 7 (chosen == rejected)",
        ),
        (
            [f"dataset.path={_jsonl(root / 'long.jsonl', [{**PAIR, 'prompt': 'word ' * 300}] * 8)}"],
            "prompt >= trainer.max_length=128 tokens",
        ),
    ]


def _model_probes(root: Path, tiny_model: str) -> list[tuple[list[str], str]]:
    import shutil

    nonsense, no_tokenizer, no_weights = root / "nonsense", root / "no_tokenizer", root / "no_weights"
    nonsense.mkdir()
    (nonsense / "config.json").write_text("{this is not json")
    for path, drop in (
        (no_tokenizer, ("tokenizer.json", "tokenizer_config.json")),
        (no_weights, ("model.safetensors",)),
    ):
        shutil.copytree(tiny_model, path)
        for name in drop:
            (path / name).unlink()
    return [
        ([f"model.path={root}"], "is not a Hugging Face checkpoint directory (no config.json)"),
        ([f"model.path={nonsense}"], "config.json is not a readable JSON config"),
        ([f"model.path={no_tokenizer}"], "holds no tokenizer"),
        ([f"model.path={no_weights}"], "holds no weights"),
    ]


def test_data_and_model_mistakes_fail_in_one_line_without_a_wandb_run(tmp_path, capsys, tiny_model):
    probes = _data_probes(tmp_path) + _model_probes(tmp_path, tiny_model)
    for i, (overrides, message) in enumerate(probes):
        run_dir = tmp_path / f"run{i}"
        line = _probe(capsys, "train", f"hydra.run.dir={run_dir}", "logger=wandb", *overrides)
        assert message in line, (overrides, line)
        assert not (run_dir / "wandb").exists() and not (run_dir / "model").exists()


def test_run_directory_problems_fail_in_one_line(tmp_path, capsys):
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    assert "is a file" in _probe(capsys, "train", f"hydra.run.dir={a_file / 'run'}")
    assert "cannot use /proc/tokalign-run as a run directory" in _probe(
        capsys, "train", "hydra.run.dir=/proc/tokalign-run"
    )


@pytest.mark.parametrize(
    "args,message",
    [
        (["eval", "run_dir=/nonexistent/run"], "/nonexistent/run is not a run directory (no resolved.yaml)"),
        (["eval"], "tokalign eval needs run_dir=..."),
        (["eval", "bogus=1"], "unknown argument(s) bogus"),
        (["inspect", "outputs/x"], "expected key=value arguments"),
        (["table"], "tokalign table needs runs="),
        (["frobnicate"], "unknown command 'frobnicate'"),
    ],
)
def test_other_commands_fail_in_one_line(capsys, args, message):
    assert message in _probe(capsys, *args)


def test_help_of_every_command_names_its_arguments(capsys):
    for command, argument in (("eval", "run_dir"), ("table", "group_by"), ("inspect", "num_examples")):
        run_cli(command, "--help")
        out = capsys.readouterr().out
        assert out.startswith(f"usage: tokalign {command}") and f"  {argument}" in out
    run_cli("train", "--help")
    out = capsys.readouterr().out
    assert "config groups" in out and "learning_rate: 0.0001  (${model.learning_rate})  # peak learning rate" in out


def test_an_internal_error_keeps_its_traceback_and_says_it_is_a_bug(tmp_path, capsys, monkeypatch):
    import dataclasses

    from tokalign.app.registry import registry

    def broken(run):
        raise RuntimeError("something tokalign did not expect")

    monkeypatch.setitem(registry(), "sft", dataclasses.replace(registry()["sft"], train=broken))
    with pytest.raises(SystemExit) as exit_:
        run_cli("train", f"hydra.run.dir={tmp_path / 'run'}", "logger=none", "method=sft")
    err = capsys.readouterr().err
    assert exit_.value.code == 1 and "Traceback" in err and "RuntimeError: something tokalign did not expect" in err
    assert "tokalign: internal error" in err


def test_a_run_dir_without_room_for_the_model_is_refused_before_training(tmp_path, capsys, monkeypatch):
    import shutil
    from collections import namedtuple

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10**12, 10**12 - 1000, 1000))
    line = _probe(capsys, "train", f"hydra.run.dir={tmp_path / 'run'}", "logger=wandb", "trainer.save_steps=10")
    assert "has 0.0 GiB free; this model's final weights and checkpoints need about" in line
    assert not (tmp_path / "run" / "wandb").exists()
