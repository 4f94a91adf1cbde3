"""RTO's loop-level invariants on the PPO loop's stages: the released defaults, RTO = PPO when
the dense reward vanishes (β₁ = 0 or π_dpo ≡ π_ref), and rows independent of batch-mates and padding."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from tests.conftest import compose_config
from tokalign.bases.ppo.advantages import advantages_and_returns, segments
from tokalign.bases.ppo.config import settings
from tokalign.bases.ppo.rollout import Rollout, response_mask
from tokalign.bases.ppo.scoring import Scored, kl_score_rewards
from tokalign.bases.ppo.update import losses
from tokalign.errors import ConfigError
from tokalign.methods import rto
from tokalign.methods.rto.loop import rto_rewards


def test_defaults_are_the_released_script():
    m = compose_config("method=rto").method
    assert (m.algorithm, m.name, m.dpo_scale, m.dpo_clip, m.kl_coef, m.score_coef, m.score_clip) == (
        "rto",
        "rto",
        0.05,
        0.05,
        0.01,
        1.0,
        10.0,
    )
    assert (m.gamma, m.lam, m.clip_eps, m.clip_eps_value, m.num_ppo_epochs, m.temperature, m.top_p, m.top_k) == (
        1.0,
        0.95,
        0.2,
        0.2,
        1,
        1.0,
        1.0,
        0,
    )
    assert (m.n, m.kl_estimator, m.whiten_advantages, m.loss_normalization, m.logprob_temperature) == (
        1,
        "k1",
        True,
        "sequence",
        "one",
    )


def test_an_unbuilt_dpo_model_under_several_processes_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="method.dpo_model is empty"):
        compose_config("method=rto", "launcher=ddp", "launcher.num_gpus=2", f"cache_dir={tmp_path}")
    compose_config("method=rto", "launcher=ddp", "launcher.num_gpus=2", f"cache_dir={tmp_path}", "method.dpo_model=x")


def rto_settings(**knobs) -> rto.Config:
    return settings(OmegaConf.structured(rto.Config(**{"max_new_tokens": 48, **knobs})), rto.Config)


def scored(seed: int = 0, dpo=None) -> tuple[Scored, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    mask = response_mask(torch.tensor([[1, 2, 3, 9, 0, 0], [1, 9, 0, 0, 0, 0], [1, 2, 3, 4, 5, 6]]), 9)
    old, ref = -torch.rand(3, 6, generator=g, dtype=torch.float64), -torch.rand(3, 6, generator=g, dtype=torch.float64)
    dpo = ref - 3 * torch.rand(3, 6, generator=g, dtype=torch.float64) if dpo is None else dpo(ref)
    values = torch.randn(3, 6, generator=g, dtype=torch.float64)
    return Scored(old, {"ref": ref, "dpo": dpo}, values, torch.tensor([12.0, -0.5, 2.0], dtype=torch.float64)), mask


def through_the_loop(s: Scored, mask: torch.Tensor, m, token_rewards):
    """Rewards, advantages, returns and both losses, as one iteration computes them."""
    rewards, _ = token_rewards(s, mask, m)
    ids = segments(m, mask, s.logps["ref"], None, None, seed=0)
    advantages, returns = advantages_and_returns(m, rewards, s.values, mask, ids)
    zeros = torch.zeros_like(mask)
    part = Rollout(
        zeros, zeros, zeros, mask, s.old_logps, s.logps["ref"], s.values, s.scores, rewards, ids, advantages, returns
    )
    logps = s.old_logps + 0.1 * torch.arange(mask.shape[1], dtype=torch.float64)
    policy_loss, value_loss, _ = losses(logps, s.values * 0.9, part, m)
    return rewards, advantages, returns, policy_loss, value_loss


@pytest.mark.parametrize("case", ["dpo_scale=0", "dpo=ref"])
def test_no_dense_reward_is_the_ppo_iteration_exactly(case):
    """Invariant 1 through the loop: with β₁ = 0, or a DPO model equal to the reference, rewards, advantages,
    returns and losses are PPO's with the same (clipped) score."""
    m = rto_settings(dpo_scale=0.0 if case == "dpo_scale=0" else 0.05)
    s, mask = scored(dpo=None if case == "dpo_scale=0" else torch.clone)
    ppo_s = Scored(s.old_logps, {"ref": s.logps["ref"]}, s.values, s.scores.clamp(-m.score_clip, m.score_clip))
    for got, expected in zip(
        through_the_loop(s, mask, m, rto_rewards), through_the_loop(ppo_s, mask, m, kl_score_rewards)
    ):
        assert torch.equal(got, expected)
    with_dense = through_the_loop(*scored(), rto_settings(), rto_rewards)
    assert not torch.equal(with_dense[0], through_the_loop(ppo_s, mask, m, kl_score_rewards)[0])


def test_a_row_ignores_batch_mates_and_padding():
    """Invariant 4 at loop level: a response's rewards and (unwhitened) advantages are the same alone, with more
    padding columns holding garbage, or next to other responses."""
    m = rto_settings(whiten_advantages=False)
    s, mask = scored()
    rewards, advantages, *_ = through_the_loop(s, mask, m, rto_rewards)
    for row in range(len(mask)):

        def alone(x, fill=float("nan")):
            return torch.cat([x[row : row + 1], torch.full((1, 3), fill, dtype=x.dtype)], 1)

        one = Scored(
            alone(s.old_logps), {k: alone(v) for k, v in s.logps.items()}, alone(s.values), s.scores[row : row + 1]
        )
        r1, a1, *_ = through_the_loop(one, alone(mask, 0), m, rto_rewards)
        assert torch.equal(r1[:, :6], rewards[row : row + 1]) and torch.equal(a1[:, :6], advantages[row : row + 1])
        assert (r1[:, 6:] == 0).all()
