"""A typo in a key, with or without a leading `+`, gets "is not a knob here; did you mean ...";
a value of the wrong type names the type the knob expects (lists and mappings too), and a
misspelt choice its close match. One line, exit status 2, nothing written."""

from __future__ import annotations

import pytest

from tests.test_bad_input import _probe


@pytest.mark.parametrize(
    "overrides,message",
    [
        (["method.bta=0.1"], "method.bta is not a knob here; did you mean beta?"),
        (["+method.bta=0.1"], "method.bta is not a knob here; did you mean beta?"),
        (["trainer.lerning_rate=1e-4"], "trainer.lerning_rate is not a knob here; did you mean learning_rate?"),
        (["model.tiny.hiden_size=32"], "model.tiny.hiden_size is not a knob here; did you mean hidden_size?"),
        (
            ["method=grpo", "method.num_generation=4"],
            "method.num_generation is not a knob here; did you mean num_generations?",
        ),
        (["launcher=ddp", "launcher.num_gpu=2"], "launcher.num_gpu is not a knob here; did you mean num_gpus?"),
        (["eval.nun_prompts=4"], "eval.nun_prompts is not a knob here; did you mean num_prompts?"),
    ],
)
def test_an_unknown_key_gets_did_you_mean(tmp_path, capsys, overrides, message):
    assert _probe(capsys, "train", f"hydra.run.dir={tmp_path / 'run'}", *overrides).endswith(message)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "overrides,message",
    [
        (["trainer.adam_betas=0.9"], "trainer.adam_betas=0.9 is not a list of numbers, e.g. [0.9,0.999]"),
        (["eval.pass_k=abc"], "eval.pass_k=abc is not a list of integers, e.g. [1]"),
        (["eval.pass_k=[1,two]"], "eval.pass_k=[1,two] is not a list of integers"),
        (["dataset.columns=5"], "dataset.columns=5 is not a mapping {key: value}"),
        (["trainer.lr_scheduler_kwargs=3"], "trainer.lr_scheduler_kwargs=3 is not a mapping {key: value}"),
        (["trainer.max_steps=many"], "trainer.max_steps=many is not an integer"),
        (["method.beta=high"], "method.beta=high is not a number"),
        (["eval.kl=maybe"], "eval.kl=maybe is not true or false"),
        (["tags=solo"], "tags=solo is not a list of texts"),
        (["trainer.lr_scheduler=cosin"], "is not one of linear | cosine | "),
        (["trainer.lr_scheduler=cosin"], "; did you mean cosine?"),
        (["method=grpo", "method.loss_type=dapoo"], "method.loss_type=dapoo is not one of grpo"),
        (
            ["launcher=deepspeed", "launcher.offload_param=gpu"],
            "launcher.offload_param=gpu is not one of none | cpu | nvme",
        ),
    ],
)
def test_a_wrong_type_names_what_was_expected(tmp_path, capsys, overrides, message):
    assert message in _probe(capsys, "train", f"hydra.run.dir={tmp_path / 'run'}", *overrides)
    assert not (tmp_path / "run").exists()
