"""The PPO loop's stages on small tensors and the tiny model: rollout bookkeeping, scoring, advantages."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from tests.conftest import compose_config
from tokalign import rewards
from tokalign.losses import gae, kl_penalty_rewards, whiten
from tokalign.methods import ppo
from tokalign.methods.ppo.advantages import advantages_and_returns, segments
from tokalign.methods.ppo.models import load_critic, response_logits, token_logps
from tokalign.methods.ppo.rollout import prompt_batch, response_mask


@pytest.mark.parametrize("preset", ["ppo", "ma_ppo"])
def test_presets_carry_the_papers_defaults(preset):
    m = compose_config(f"method={preset}").method
    assert (m.gamma, m.lam, m.clip_eps, m.kl_coef, m.temperature, m.top_k) == (1.0, 0.95, 0.2, 0.05, 0.8, 50)
    assert m.algorithm == "ppo" and m.name == preset and m.termination == "fixed" and m.n == (5 if preset == "ma_ppo" else 1)


def test_response_mask_includes_first_eos_only():
    eos = 7
    responses = torch.tensor([[3, 4, 7, 0, 0], [3, 7, 7, 5, 0], [1, 2, 3, 4, 5]])
    assert response_mask(responses, eos).tolist() == [[1, 1, 1, 0, 0], [1, 1, 0, 0, 0], [1, 1, 1, 1, 1]]


def rollout_tensors(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    mask = response_mask(torch.tensor([[1, 2, 3, 9, 0, 0], [1, 9, 0, 0, 0, 0], [1, 2, 3, 4, 5, 6]]), 9)
    old, ref = -torch.rand(3, 6, generator=g, dtype=torch.float64), -torch.rand(3, 6, generator=g, dtype=torch.float64)
    values = torch.randn(3, 6, generator=g, dtype=torch.float64)
    return mask, old, ref, values, torch.tensor([1.0, -0.5, 2.0], dtype=torch.float64)


def settings(**knobs) -> ppo.Config:
    return ppo.settings(OmegaConf.structured(ppo.Config(**knobs)))


@pytest.mark.parametrize("whiten_advantages", [True, False])
def test_n1_is_token_level_ppo_exactly_through_the_loop_stages(whiten_advantages):
    """Invariant 2 at loop level: the loop's segmentation + GAE with n=1 is textbook token GAE."""
    mask, old, ref, values, score = rollout_tensors()
    m = settings(n=1, whiten_advantages=whiten_advantages)
    token_rewards = kl_penalty_rewards(old, ref, mask, score, kl_coef=m.kl_coef)
    segment_ids = segments(m, mask, ref, None, None, seed=0)
    advantages, returns = advantages_and_returns(m, token_rewards, values, mask, segment_ids)
    token_adv, token_ret = gae(token_rewards, values, mask, gamma=m.gamma, lam=m.lam)
    assert torch.equal(returns, token_ret)
    assert torch.equal(advantages, whiten(token_adv, mask) if whiten_advantages else token_adv)


@pytest.mark.parametrize("termination", ["fixed", "randomized", "ppl"])
def test_macro_segments_cover_exactly_the_response(termination):
    mask, old, ref, values, score = rollout_tensors()
    ids = segments(settings(n=5, termination=termination), mask, ref, None, None, seed=3)
    assert torch.equal(ids >= 0, mask.bool())
    assert (ids.max(-1).values + 1).sum() < mask.sum() or termination != "fixed"  # n=5 groups tokens


def test_reward_spellings_resolve_to_the_same_functions():
    dataset = OmegaConf.create({"path": None, "source": "toy_math", "name": "toy_math"})
    assert rewards.reward_function("task", dataset, "method.reward") is rewards.exact_match
    assert rewards.reward_function("gold", dataset, "method.reward") is rewards.gold_reward
    assert rewards.reward_function("tokalign.rewards:gold_reward", dataset, "method.reward") is rewards.gold_reward


def test_logps_and_values_ignore_batch_mates_and_padding(tiny_model):
    """A sample's per-token log-probs and values do not depend on left padding from a longer prompt."""
    from tokalign.models import load_causal_lm, load_tokenizer

    tok = load_tokenizer(tiny_model)
    policy = load_causal_lm(tiny_model).eval()
    critic = load_critic(tiny_model, "float32", tok.pad_token_id).eval()
    texts = ["Tell me about the lake.", "Write a short note about the garden, the city and the old museum."]
    enc = tok(texts, return_tensors="pt", padding=True, padding_side="left")
    responses = torch.tensor([[40, 41, 42, tok.eos_token_id], [43, 44, tok.eos_token_id, tok.pad_token_id]])
    mask = response_mask(responses, tok.eos_token_id)
    ids, attn = torch.cat([enc["input_ids"], responses], 1), torch.cat([enc["attention_mask"], mask], 1)
    pos = (attn.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        batch_logps = token_logps(response_logits(policy, ids, attn, pos, 4), responses, 0.8)
        batch_values = critic(ids, attn, pos, 4)
        alone = tok(texts[:1], return_tensors="pt")
        ids1 = torch.cat([alone["input_ids"], responses[:1]], 1)
        attn1 = torch.ones_like(ids1)
        pos1 = attn1.cumsum(-1) - 1
        logps1 = token_logps(response_logits(policy, ids1, attn1, pos1, 4), responses[:1], 0.8)
        values1 = critic(ids1, attn1, pos1, 4)
    torch.testing.assert_close(batch_logps[0], logps1[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(batch_values[0], values1[0], atol=1e-5, rtol=1e-5)


def test_prompt_batches_are_a_function_of_the_step_and_cover_each_pass():
    import datasets

    data = datasets.Dataset.from_dict({"prompt": [str(i) for i in range(10)]})
    batches = [prompt_batch(data, step, 4, seed=1)["prompt"] for step in range(5)]
    assert batches[2] == prompt_batch(data, 2, 4, seed=1)["prompt"]
    flat = [p for b in batches for p in b]
    assert sorted(flat[:10]) == sorted(flat[10:20]) == sorted(data["prompt"])
    assert flat[:10] != flat[10:20]  # a fresh shuffle per pass
