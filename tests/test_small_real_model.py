"""The small real-model tier composes: GRPO on SmolLM2-135M and toy arithmetic, sized for 2 CPU cores."""

from __future__ import annotations

from tests.conftest import compose_config


def test_grpo_smollm2_experiment_composes():
    cfg = compose_config("experiment=grpo_smollm2")
    assert (cfg.method.name, cfg.model.source, cfg.dataset.name) == ("grpo", "smollm2", "toy_math")
    assert cfg.trainer.per_device_batch_size % cfg.method.num_generations == 0
    assert cfg.eval.max_new_tokens == cfg.method.max_completion_length == 64
    assert max(cfg.eval.pass_k) <= cfg.eval.num_samples
