"""The PPO loop's stages on small tensors and the tiny model: rollout bookkeeping, scoring, advantages."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from tests.conftest import compose_config
from tokalign import rewards
from tokalign.bases.ppo import config as ppo
from tokalign.bases.ppo.advantages import advantages_and_returns, segments
from tokalign.bases.ppo.models import load_critic, response_logits, token_logps
from tokalign.bases.ppo.rollout import Rollout, prompt_batch, response_mask
from tokalign.bases.ppo.scoring import kl_score_rewards, score
from tokalign.bases.ppo.update import losses
from tokalign.losses import (
    gae,
    kl_penalty_rewards,
    ppo_policy_loss,
    ppo_value_loss,
    whiten,
)


@pytest.mark.parametrize("preset", ["ppo", "ma_ppo"])
def test_presets_carry_the_papers_defaults(preset):
    m = compose_config(f"method={preset}").method
    assert (m.gamma, m.lam, m.clip_eps, m.kl_coef, m.temperature, m.top_k) == (1.0, 0.95, 0.2, 0.05, 0.8, 50)
    assert (
        m.algorithm == "ppo"
        and m.name == preset
        and m.termination == "fixed"
        and m.n == (5 if preset == "ma_ppo" else 1)
    )


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
    return ppo.settings(OmegaConf.structured(ppo.Config(**{"max_new_tokens": 48, **knobs})))


@pytest.mark.parametrize("whiten_advantages", [True, False])
@pytest.mark.parametrize("last_token_alone", [True, False])
def test_n1_is_token_level_ppo_exactly_through_the_loop_stages(whiten_advantages, last_token_alone):
    """Invariant 2 at loop level: the loop's segmentation + GAE with n=1 is textbook token GAE."""
    mask, old, ref, values, score = rollout_tensors()
    m = settings(n=1, whiten_advantages=whiten_advantages, last_token_alone=last_token_alone)
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


def test_presets_default_to_the_ma_rlhf_authors_conventions():
    m = compose_config("method=ma_ppo").method
    assert (m.last_token_alone, m.ppl_boundary, m.length_sampling, m.length_repeats) == (
        True,
        "before_rise",
        "shuffle",
        None,
    )
    assert (m.logprob_temperature, m.loss_normalization) == ("one", "sequence")


def one_response(length: int) -> torch.Tensor:
    return torch.ones(1, length, dtype=torch.long)


@pytest.mark.parametrize(
    "last_token_alone,expected", [(True, [0, 0, 0, 1, 1, 1, 2, 3]), (False, [0, 0, 0, 1, 1, 1, 2, 2])]
)
def test_fixed_segments_close_before_the_scored_token_as_the_authors_code(last_token_alone, expected):
    """Their fixed_ngram_selection on 8 tokens, n=3: boundaries [0, 3, 6, 7] + a last split of 1 -> sizes 3, 3, 1, 1."""
    ids = segments(
        settings(n=3, last_token_alone=last_token_alone), one_response(8), torch.zeros(1, 8), None, None, seed=0
    )
    assert ids.tolist() == [expected]


@pytest.mark.parametrize("boundary,expected", [("before_rise", [0, 1, 1, 1, 2, 3]), ("at_rise", [0, 0, 1, 1, 1, 2])])
def test_ppl_segments_start_before_the_rise_as_the_authors_code(boundary, expected):
    """Reference perplexities rising after token 1 and after token 4: their ppl_selection cuts at 1 and 4 (the
    token before each rise), then isolates the last token: sizes 1, 3, 1, 1."""
    nll = torch.tensor([[1.0, 0.5, 0.8, 0.3, 0.2, 0.9]])
    m = settings(termination="ppl", ppl_boundary=boundary)
    assert segments(m, one_response(6), -nll, None, None, seed=0).tolist() == [expected]


def test_randomized_shuffles_the_lengths_once_and_lumps_the_rest_as_the_authors_code():
    """[2, 3] repeated once: two segments of 2 and 3 tokens in a seeded order, the rest one segment, the last token alone."""
    m = settings(termination="randomized", lengths=[2, 3], length_repeats=1)
    for seed in range(4):
        ids = segments(m, one_response(10), torch.zeros(1, 10), None, None, seed=seed)[0]
        sizes = torch.bincount(ids).tolist()
        assert sorted(sizes[:2]) == [2, 3] and sizes[2:] == [4, 1]
    iid = settings(termination="randomized", lengths=[2, 3], length_sampling="iid")
    assert torch.bincount(segments(iid, one_response(30), torch.zeros(1, 30), None, None, seed=0)[0]).max() <= 3


def micro_batch(seed: int = 0) -> tuple[Rollout, torch.Tensor]:
    mask, old, ref, values, score = rollout_tensors(seed)
    g = torch.Generator().manual_seed(seed + 1)
    logps = old + 0.3 * torch.randn(old.shape, generator=g, dtype=torch.float64)
    ids = segments(settings(n=2), mask, ref, None, None, seed=0)
    advantages, returns = (
        torch.randn(old.shape, generator=g, dtype=torch.float64),
        torch.randn(old.shape, generator=g, dtype=torch.float64),
    )
    zeros = torch.zeros_like(mask)
    return Rollout(zeros, zeros, zeros, mask, old, ref, values, score, zeros, ids, advantages, returns), logps


@pytest.mark.parametrize("level", ["token", "segment"])
def test_sequence_normalization_is_the_mean_of_each_responses_own_loss(level):
    """The authors' normalisation (each response's token mean, then the batch mean), so a response's loss and
    gradient never depend on its batch-mates: it equals the loss functions row by row, averaged."""
    part, logps = micro_batch()
    values = (part.old_values + 0.4 * torch.randn(part.old_values.shape, dtype=torch.float64)).requires_grad_()
    logps = logps.clone().requires_grad_()
    m = settings(loss_normalization="sequence", policy_loss_level=level)
    policy_loss, value_loss, _ = losses(logps, values, part, m)
    torch.autograd.backward([policy_loss, value_loss])
    rows = [
        (
            ppo_policy_loss(
                logps[i : i + 1],
                part.old_logps[i : i + 1],
                part.advantages[i : i + 1],
                part.mask[i : i + 1],
                segment_ids=part.segment_ids[i : i + 1],
                level=level,
            )[0],
            ppo_value_loss(
                values[i : i + 1], part.old_values[i : i + 1], part.returns[i : i + 1], part.mask[i : i + 1]
            )[0],
        )
        for i in range(len(logps))
    ]
    expected_policy, expected_value = sum(r[0] for r in rows) / len(rows), sum(r[1] for r in rows) / len(rows)
    torch.testing.assert_close(policy_loss, expected_policy)
    torch.testing.assert_close(value_loss, expected_value)
    grads = torch.autograd.grad([expected_policy, expected_value], [logps, values])
    torch.testing.assert_close(logps.grad, grads[0])
    torch.testing.assert_close(values.grad, grads[1])
    token, token_value, _ = losses(logps, values, part, settings(loss_normalization="token", policy_loss_level=level))
    assert torch.equal(
        token,
        ppo_policy_loss(logps, part.old_logps, part.advantages, part.mask, segment_ids=part.segment_ids, level=level)[
            0
        ],
    )
    assert not torch.allclose(token, policy_loss)  # the rows have different lengths


def test_log_probs_are_the_models_own_unless_asked_for_the_sampling_temperature(tiny_model):
    """Their code: KL, ratio and ppl from untempered logits although sampling ran at temperature 0.8."""
    from tokalign.modeling.models import load_causal_lm, load_tokenizer

    tok = load_tokenizer(tiny_model)
    policy, ref = load_causal_lm(tiny_model).eval(), load_causal_lm(tiny_model).eval()
    critic = load_critic(tiny_model, "float32", tok.pad_token_id).eval()
    batch = {"prompt": ["Tell me about the lake.", "Write a note about the garden."]}
    enc = tok(batch["prompt"], return_tensors="pt", padding=True, padding_side="left")
    responses = torch.tensor([[40, 41, 42, tok.eos_token_id], [43, 44, tok.eos_token_id, tok.pad_token_id]])
    mask = response_mask(responses, tok.eos_token_id)
    ids, attn = torch.cat([enc["input_ids"], responses], 1), torch.cat([enc["attention_mask"], mask], 1)
    pos = (attn.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        logits = response_logits(ref, ids, attn, pos, 4)
    for choice, temperature in (("one", 1.0), ("sampling", 0.5)):
        m = settings(temperature=0.5, logprob_temperature=choice, kl_coef=0.1)
        s = score(
            policy,
            {"ref": ref},
            critic,
            rewards.gold_reward,
            tok,
            batch,
            ids,
            attn,
            responses,
            mask,
            m,
            forward_batch=2,
        )
        expected = token_logps(logits, responses, temperature)
        torch.testing.assert_close(s.logps["ref"], expected)
        torch.testing.assert_close(s.old_logps, expected)  # policy = reference here
        rewards_, _ = kl_score_rewards(s, mask, m)
        torch.testing.assert_close(rewards_, kl_penalty_rewards(expected, expected, mask, s.scores, kl_coef=0.1))


def test_reward_spellings_resolve_to_the_same_functions():
    dataset = OmegaConf.create({"path": None, "source": "toy_math", "name": "toy_math"})
    assert rewards.reward_function("task", dataset, "method.reward") is rewards.exact_match
    assert rewards.reward_function("gold", dataset, "method.reward") is rewards.gold_reward
    assert (
        rewards.reward_function("tokalign.rewards:gold_reward", dataset, "method.reward").__wrapped__
        is rewards.gold_reward
    )


def test_logps_and_values_ignore_batch_mates_and_padding(tiny_model):
    """A sample's per-token log-probs and values do not depend on left padding from a longer prompt."""
    from tokalign.modeling.models import load_causal_lm, load_tokenizer

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


def test_a_reward_model_inside_a_weighted_reward_is_refused_under_zero3():
    from tokalign.errors import ConfigError

    spec = "method.reward=[gold,{reward:model:/nowhere,weight:0.5}]"
    with pytest.raises(ConfigError, match="zero_stage=3 a reward model must be the only reward term"):
        compose_config("method=ppo", spec, "launcher=deepspeed", "launcher.zero_stage=3")
    compose_config("method=ppo", spec, "launcher=deepspeed", "launcher.zero_stage=2")
