"""method=tgdpo end to end: the default builds (once) and uses a DPO guidance model; tokenizer
mismatches fail before training with a clear message."""

import json
import shutil

import pytest
from omegaconf import OmegaConf

from tokalign.artifacts.tracking import read_metrics

SMALL = ("trainer.max_steps=4", "trainer.logging_steps=2", "dataset.num_train=64", "trainer.per_device_batch_size=8")


def _cfg(**method):
    from tokalign.config import RunConfig
    from tokalign.methods.tgdpo import Config

    cfg = OmegaConf.structured(RunConfig)
    cfg.method = OmegaConf.structured(Config(**method))
    return cfg


def test_guidance_key_follows_what_the_dpo_run_depends_on():
    from tokalign.bases.dpo.dpo_models import cached_path, dpo_run_config
    from tokalign.methods.tgdpo import guidance_beta

    def key(cfg):
        return cached_path(cfg, beta=guidance_beta(cfg.method))

    sub, _ = dpo_run_config(_cfg(), beta=0.1)
    assert sub.method.name == "dpo" and sub.method.beta == 0.1 and sub.logger.name == "none" and not sub.eval.at_end
    for same in (dict(alpha=2.0), dict(f_min=0.0), dict(precompute=False)):
        assert key(_cfg(**same)) == key(_cfg())
    assert key(_cfg(guidance_beta=0.5)) != key(_cfg())
    other_seed = _cfg()
    other_seed.seed = 1
    assert key(other_seed) != key(_cfg())
    assert cached_path(_cfg(), beta=0.1, reverse=True) != cached_path(_cfg(), beta=0.1)


@pytest.mark.slow
def test_default_run_builds_guidance_once_and_both_paths_train(train, cache_dir):
    run_dir = train("method=tgdpo", *SMALL)
    logged = [m for m in read_metrics(run_dir) if "train/loss" in m]
    assert logged and all(
        k in logged[-1] for k in ("train/f/min", "train/f/mean", "train/rewards/margins", "train/rewards/accuracies")
    )
    assert json.loads((run_dir / "eval.json").read_text())["eval/num_prompts"] == 8
    guidance = sorted(p.name for p in (cache_dir / "dpo_models").iterdir() if p.is_dir())
    assert guidance and any((cache_dir / "token_logps").iterdir())

    online = train(
        "method=tgdpo", "method.precompute=false", "method.alpha=1.0", "method.f_min=0.0", "eval.at_end=false", *SMALL
    )
    assert (online / "model" / "model.safetensors").exists()
    assert sorted(p.name for p in (cache_dir / "dpo_models").iterdir() if p.is_dir()) == guidance  # reused


def test_guidance_with_another_tokenizer_fails_clearly(train, tiny_model, tmp_path, capsys):
    from tokalign.modeling.models import load_tokenizer

    other = tmp_path / "other"
    shutil.copytree(tiny_model, other)
    tok = load_tokenizer(str(other))
    tok.add_tokens(["<|extra|>"])
    tok.save_pretrained(other)
    with pytest.raises(SystemExit) as err:
        train("method=tgdpo", f"method.dpo_model={other}")
    assert err.value.code == 2
    assert "guidance model's tokenizer does not match the policy's: vocabularies differ" in capsys.readouterr().err


def test_the_old_spelling_of_the_dpo_model_still_works_with_a_warning():
    from omegaconf import OmegaConf

    from tokalign.methods.tgdpo import Config, dpo_model

    old = OmegaConf.structured(Config(guidance_model="/models/dpo"))
    with pytest.warns(FutureWarning, match="write method.dpo_model"):
        assert dpo_model(old) == "/models/dpo"
    assert dpo_model(OmegaConf.structured(Config(dpo_model="/models/new"))) == "/models/new"
    assert dpo_model(OmegaConf.structured(Config())) is None
