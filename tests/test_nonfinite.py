"""Nothing non-finite is ever saved, set or read: float knobs refuse inf and nan (bounded or not,
inside lists and mappings too), the final model is checked like every checkpoint, and `resume`
and `eval` refuse a model/ whose weights are not finite."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file

from tests.conftest import FINISHED, copy_run, run_cli
from tests.runtime.test_resume import _poison
from tests.test_bad_input import _probe


@pytest.mark.parametrize(
    "overrides,message",
    [
        (["method.beta=inf"], "method.beta=inf is not a finite number"),
        (["method.beta=1e999"], "method.beta=inf is not a finite number"),
        (["trainer.learning_rate=nan"], "trainer.learning_rate=nan is not a finite number"),
        (["method=tgdpo", "method.alpha=-inf"], "method.alpha=-inf is not a finite number"),
        (["method=grpo", "method.epsilon_high=inf"], "method.epsilon_high=inf"),  # an Optional knob
        (["trainer.adam_betas=[0.9,nan]"], "trainer.adam_betas[1]=nan"),
        (["trainer.lr_scheduler_kwargs={min_lr_rate:nan}"], "trainer.lr_scheduler_kwargs.min_lr_rate=nan"),
        (["method=grpo", "method.reward=[{reward:gold,weight:inf}]"], "method.reward[0].weight=inf"),
        (["rollout.server_timeout=inf"], "rollout.server_timeout=inf"),
    ],
)
def test_float_knobs_refuse_inf_and_nan(tmp_path, capsys, overrides, message):
    line = _probe(capsys, "train", f"hydra.run.dir={tmp_path / 'run'}", *overrides)
    assert message in line and not (tmp_path / "run").exists()


def test_a_run_shorter_than_its_logging_interval_does_not_save_a_diverged_model(
    tmp_path, monkeypatch, capsys, cache_dir
):
    _poison(monkeypatch, at_step=1, weights=True)  # the second optimizer step fills a weight with NaN
    run_dir = tmp_path / "run"
    with pytest.raises(SystemExit) as exit_:
        run_cli("train", f"hydra.run.dir={run_dir}", *FINISHED, "trainer.max_steps=2", "trainer.logging_steps=5")
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "Traceback" not in err
    assert "the weights are non-finite after the last step (2); the final model was not saved" in err
    assert not (run_dir / "model").exists() and not (run_dir / "train.json").exists()


def _nan_model(run_dir):
    weights = run_dir / "model" / "model.safetensors"
    tensors = load_file(weights)
    name = sorted(tensors)[0]
    tensors[name] = torch.full_like(tensors[name], float("nan"))
    save_file(tensors, weights, metadata={"format": "pt"})
    return name


def test_eval_and_resume_refuse_a_non_finite_model(finished_run, tmp_path, capsys):
    run = copy_run(finished_run, tmp_path / "run")
    name = _nan_model(run)
    (run / "summary.json").unlink()  # as if killed during its evaluation
    line = _probe(capsys, "eval", f"run_dir={run}")
    assert f"holds non-finite weights (model.safetensors: {name} is not finite)" in line
    line = _probe(capsys, "train", f"hydra.run.dir={run}", *FINISHED, "resume=auto")
    assert "holds non-finite weights" in line and not (run / "summary.json").exists()
