"""RTO on the PPO loop: the DPO model (and its own reference, if given) as extra frozen models, and
`rto_token_rewards` as the per-token reward."""

from __future__ import annotations

import random
from contextlib import contextmanager

import torch

from tokalign.bases.dpo.dpo_models import cached_path, dpo_model_path, load_frozen
from tokalign.bases.ppo import loop as ppo_loop
from tokalign.bases.ppo.scoring import Scored
from tokalign.losses import rto_token_rewards
from tokalign.modeling.lora import is_model_dir


def rto_rewards(s: Scored, mask: torch.Tensor, m) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The per-token RTO reward from the scored rollout (`logps["dpo"]`, optionally `logps["dpo_ref"]`; neither
    when `dpo_scale` is 0, which is PPO's reward)."""
    return rto_token_rewards(
        s.old_logps,
        s.logps["ref"],
        s.logps.get("dpo", s.logps["ref"]),
        s.scores,
        mask,
        kl_coef=m.kl_coef,
        dpo_scale=m.dpo_scale,
        dpo_clip=m.dpo_clip,
        score_coef=m.score_coef,
        score_clip=m.score_clip,
        dpo_ref_logps=s.logps.get("dpo_ref"),
        kl_estimator=m.kl_estimator,
    )


@contextmanager
def _rng_kept():
    """Building the DPO model reseeds everything; the loop then starts from the RNG state it would have had
    with the model already cached, so a run's result does not depend on whether it built the model."""
    state = random.getstate()
    with torch.random.fork_rng():
        yield
    random.setstate(state)


def dpo_path(run) -> str:
    m = run.cfg.method
    if m.dpo_model:
        return str(m.dpo_model)
    if is_model_dir(cached_path(run.cfg, beta=m.dpo_beta)):
        return str(cached_path(run.cfg, beta=m.dpo_beta))
    with _rng_kept():
        return str(dpo_model_path(run, beta=m.dpo_beta, knob="method.dpo_model"))


def frozen_models(run) -> dict:
    """Loaded whole before the loop's setup, which turns them into inference engines (sharded under ZeRO-3).
    None with the dense reward off (`dpo_scale=0`): that run is PPO's, at PPO's cost."""
    m = run.cfg.method
    if m.dpo_scale == 0:
        return {}
    models = {"dpo": load_frozen(run, dpo_path(run), "DPO model")}
    if m.dpo_ref_model:
        models["dpo_ref"] = load_frozen(run, m.dpo_ref_model, "DPO reference model")
    return models


def fit(run) -> dict:
    return ppo_loop.fit(run, frozen_extra=frozen_models(run), token_rewards=rto_rewards)
