"""DPO models built on demand: the frozen token scorers of token-level methods.

TGDPO's guidance (and any later method that reads a DPO model's token rewards) is a DPO
checkpoint of the same model on the same data. When the method's path knob is empty,
`dpo_model_path` builds it as the TGDPO authors did: a DPO run of the same model, data,
trainer settings and seed at the given β (with `reverse`, on swapped pairs: a reverse-DPO
model), published under `<cache_dir>/dpo_models/dpo-<hash of those settings>/model` and reused
by every later run. One process trains it under a file lock; the others wait and reuse it.
"""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path

from omegaconf import DictConfig, OmegaConf, open_dict

from tokalign.artifacts.files import atomic_dir
from tokalign.artifacts.tracking import stage
from tokalign.config import world_size
from tokalign.errors import ConfigError, ModelError
from tokalign.modeling.lora import is_model_dir


def dpo_run_config(cfg: DictConfig, *, beta: float, reverse: bool = False) -> tuple[DictConfig, str]:
    """The DPO run that builds the model for `cfg`, and its cache key."""
    from tokalign.bases.dpo.config import Config

    dpo = OmegaConf.structured(Config(beta=beta, reverse=reverse))
    spec = {"method": dpo, "model": cfg.model, "dataset": cfg.dataset, "trainer": cfg.trainer, "seed": cfg.seed}
    plain = OmegaConf.to_container(OmegaConf.create(spec), resolve=True, enum_to_str=True)
    key = hashlib.sha256(json.dumps(plain, sort_keys=True, default=str).encode()).hexdigest()[:12]
    sub = copy.deepcopy(cfg)
    with open_dict(sub):
        sub.method = dpo
        sub.run_name = f"dpo-model-{key}"
        sub.logger.name = "none"
        sub.eval.at_end = False
        sub.eval.every_steps = 0
        sub.eval.keep = "last"
        sub.resume = "never"
    return sub, key


def cached_path(cfg: DictConfig, *, beta: float, reverse: bool = False) -> Path:
    """Where the on-demand DPO model for `cfg` lives (built or not)."""
    _, key = dpo_run_config(cfg, beta=beta, reverse=reverse)
    return Path(cfg.cache_dir).expanduser() / "dpo_models" / f"dpo-{key}" / "model"


def dpo_model_path(run, *, beta: float, reverse: bool = False, knob: str) -> Path:
    """Train (once per setting) or reuse the on-demand DPO model; `knob` names the path knob for messages."""
    from filelock import FileLock

    final = cached_path(run.cfg, beta=beta, reverse=reverse)
    if is_model_dir(final):
        return final
    if world_size(run.cfg.launcher) > 1:
        raise ConfigError(
            f"{knob} is empty and this run has several processes: train the DPO model first "
            f"(a method=dpo run of the same setting) and pass {knob}=<its run dir>/model"
        )
    sub, _ = dpo_run_config(run.cfg, beta=beta, reverse=reverse)
    final.parent.parent.mkdir(parents=True, exist_ok=True)
    what = f"the {'reverse-' if reverse else ''}DPO model of {knob} (β={beta})"
    with FileLock(str(final.parent) + ".lock"):
        if not is_model_dir(final):

            def train(tmp: Path) -> None:
                with open_dict(sub):
                    sub.output_dir = str(tmp)
                run.train_nested(sub)

            with stage(
                f"building {what}: a method=dpo run on this model and data, once (later runs reuse it)",
                done=f"built, cached at {final}",
            ):
                atomic_dir(final.parent, train, replace=False)
    return final


def load_frozen(run, path: str | Path, what: str):
    """A frozen causal LM that must read the policy's tokens exactly as the policy does."""
    from tokalign.modeling.models import (
        check_tokenizers_match,
        load_causal_lm,
        load_tokenizer,
    )

    path = str(Path(path).expanduser()) if Path(path).expanduser().is_dir() else str(path)
    trust = run.cfg.model.trust_remote_code
    check_tokenizers_match(run.tokenizer, load_tokenizer(path, trust), what)
    model = load_causal_lm(path, dtype=run.cfg.model.dtype, trust_remote_code=trust)
    weight = model.get_output_embeddings().weight
    rows = getattr(weight, "ds_shape", weight.shape)[0]  # ZeRO-3 loads a shard: ds_shape is the whole one
    if rows < len(run.tokenizer):
        raise ModelError(f"the {what} {path!r} has {rows} output rows for a vocabulary of {len(run.tokenizer)}")
    return model
