"""Guidance models for token-level methods: a DPO checkpoint that scores each token.

`method.guidance_model` names one (a local directory or a hub id). Left empty, the guidance is
built on demand, as in TGDPO (Zhu et al., 2025): a DPO run of the same model on the same data,
trainer settings and seed, whose final model is cached under
`<cache_dir>/guidance/dpo-<hash of those settings>/model` and reused by every later run.
"""

from __future__ import annotations

import copy
import fcntl
import os
import shutil
import tempfile
from pathlib import Path

from omegaconf import DictConfig, OmegaConf, open_dict

from tokalign.models import ModelError, _digest, check_tokenizers_match, load_causal_lm, load_tokenizer


def guidance_run_config(cfg: DictConfig) -> tuple[DictConfig, str]:
    """The DPO run that builds the default guidance for `cfg`, and its cache key.

    Its β is the guidance β (TGDPO's r̂_t = β_g log π_g/π_ref reads a DPO model's implicit reward
    at the β it was trained with), falling back to the run's β.
    """
    from tokalign.methods.dpo import Config as DPOConfig

    m = cfg.method
    dpo = OmegaConf.structured(DPOConfig(beta=m.guidance_beta if m.guidance_beta is not None else m.beta))
    spec = {
        "method": dpo, "model": cfg.model, "dataset": cfg.dataset, "trainer": cfg.trainer, "seed": cfg.seed,
    }
    key = _digest(OmegaConf.to_container(OmegaConf.create(spec), resolve=True, enum_to_str=True))
    sub = copy.deepcopy(cfg)
    with open_dict(sub):
        sub.method = dpo
        sub.run_name = f"guidance-dpo-{key}"
        sub.logger.name = "none"
        sub.eval.at_end = False
        sub.resume = "never"
    return sub, key


def build_guidance(cfg: DictConfig) -> Path:
    """Train (once per setting, under a file lock) or reuse the default DPO guidance model."""
    from tokalign.run import run_training

    sub, key = guidance_run_config(cfg)
    root = Path(cfg.cache_dir).expanduser() / "guidance"
    final = root / f"dpo-{key}"
    if (final / "model" / "config.json").exists():
        return final / "model"
    root.mkdir(parents=True, exist_ok=True)
    with open(root / f"dpo-{key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (final / "model" / "config.json").exists():
            tmp = Path(tempfile.mkdtemp(prefix=f".dpo-{key}-", dir=root))
            try:
                with open_dict(sub):
                    sub.output_dir = str(tmp)
                run_training(sub)
                os.replace(tmp, final)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
    return final / "model"


def load_guidance(run):
    """The guidance model for `run`, after checking that it reads the policy's tokens the same way."""
    from tokalign.config import ConfigError
    from tokalign.launch import world_size

    m = run.cfg.method
    if not m.guidance_model and world_size(run.cfg.launcher) > 1:
        raise ConfigError(
            "method.guidance_model is empty and this run has several processes: train the guidance first "
            "(a method=dpo run of the same setting) and pass method.guidance_model=<its run dir>/model"
        )
    path = str(m.guidance_model) if m.guidance_model else str(build_guidance(run.cfg))
    if m.guidance_model and Path(path).expanduser().is_dir():
        path = str(Path(path).expanduser())
    check_tokenizers_match(run.tokenizer, load_tokenizer(path, run.cfg.model.trust_remote_code), "guidance model")
    model = load_causal_lm(path, dtype=run.cfg.model.dtype, trust_remote_code=run.cfg.model.trust_remote_code)
    rows = model.get_output_embeddings().weight.shape[0]
    if rows < len(run.tokenizer):
        raise ModelError(f"the guidance model {path!r} has {rows} output rows for a vocabulary of {len(run.tokenizer)}")
    return model
