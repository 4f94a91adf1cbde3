"""PPO / MA-PPO trainer: config, rollout bookkeeping, n=1 ≡ token-level PPO, end-to-end runs, resume."""

from __future__ import annotations

import json
import shutil
from dataclasses import fields
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from tokalign.losses import gae, whiten
from tokalign.config import option
from tokalign.methods import ma_ppo, ppo
from tokalign.trainers import ppo as ppo_loop

CONF = Path(__file__).resolve().parents[2] / "conf" / "method"
SMALL = ("logger=none", "trainer.per_device_batch_size=4", "method.max_new_tokens=12", "eval.at_end=false",
         "trainer.logging_steps=1")


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("module", [ppo, ma_ppo])
def test_yaml_exposes_every_knob_with_the_papers_defaults(module):
    yaml = OmegaConf.load(CONF / f"{module.Config().name}.yaml")
    assert set(yaml) == {f.name for f in fields(module.Config)}
    cfg = module.Config()
    for f in fields(cfg):
        assert option(getattr(cfg, f.name)) == yaml[f.name], f.name
    assert (cfg.gamma, cfg.lam, cfg.clip_eps, cfg.kl_coef, cfg.temperature, cfg.top_k) == (1.0, 0.95, 0.2, 0.05, 0.8, 50)
    assert cfg.n == (5 if module is ma_ppo else 1) and cfg.termination == "fixed"
    assert module.DATA_KIND == "prompt" and module.train is ppo.train


def test_response_mask_includes_first_eos_only():
    eos = 7
    responses = torch.tensor([[3, 4, 7, 0, 0], [3, 7, 7, 5, 0], [1, 2, 3, 4, 5]])
    assert ppo_loop.response_mask(responses, eos).tolist() == [[1, 1, 1, 0, 0], [1, 1, 0, 0, 0], [1, 1, 1, 1, 1]]


def rollout_tensors(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    mask = ppo_loop.response_mask(torch.tensor([[1, 2, 3, 9, 0, 0], [1, 9, 0, 0, 0, 0], [1, 2, 3, 4, 5, 6]]), 9)
    old, ref = -torch.rand(3, 6, generator=g, dtype=torch.float64), -torch.rand(3, 6, generator=g, dtype=torch.float64)
    values = torch.randn(3, 6, generator=g, dtype=torch.float64)
    return mask, old, ref, values, torch.tensor([1.0, -0.5, 2.0], dtype=torch.float64)


@pytest.mark.parametrize("whiten_advantages", [True, False])
@pytest.mark.parametrize("module", [ppo, ma_ppo])
def test_n1_is_token_level_ppo_exactly_through_the_trainer_path(module, whiten_advantages):
    """Invariant 2 at trainer level: the trainer's segmentation + GAE with n=1 is textbook token GAE."""
    mask, old, ref, values, score = rollout_tensors()
    m = ppo.settings(OmegaConf.structured(module.Config(n=1, whiten_advantages=whiten_advantages)))
    rewards = ppo_loop.kl_penalty_rewards(old, ref, mask, score, kl_coef=m.kl_coef)
    segment_ids = ppo_loop.segments(m, mask, ref, None, None, seed=0)
    advantages, returns = ppo_loop.advantages_and_returns(m, rewards, values, mask, segment_ids)
    token_adv, token_ret = gae(rewards, values, mask, gamma=m.gamma, lam=m.lam)
    assert torch.equal(returns, token_ret)
    assert torch.equal(advantages, whiten(token_adv, mask) if whiten_advantages else token_adv)


@pytest.mark.parametrize("termination", ["fixed", "randomized", "ppl"])
def test_macro_segments_cover_exactly_the_response(termination):
    mask, old, ref, values, score = rollout_tensors()
    m = ppo.settings(OmegaConf.structured(ma_ppo.Config(termination=termination)))
    ids = ppo_loop.segments(m, mask, ref, None, None, seed=3)
    assert torch.equal(ids >= 0, mask.bool())
    assert (ids.max(-1).values + 1).sum() < mask.sum() or termination != "fixed"  # n=5 groups tokens


def test_reward_resolution():
    cfg = OmegaConf.create({"dataset": {"path": None, "source": "toy_math", "name": "toy_math"}})
    from tokalign import rewards

    assert ppo_loop.reward_function(cfg, ppo.Config()) is rewards.exact_match
    assert ppo_loop.reward_function(cfg, ppo.Config(reward="gold")) is rewards.gold_reward
    assert ppo_loop.reward_function(cfg, ppo.Config(reward="tokalign.rewards:gold_reward")) is rewards.gold_reward
    with pytest.raises(ValueError, match="reward_model"):
        ppo_loop.reward_function(cfg, ppo.Config(reward="model"))


def test_logps_and_values_ignore_batch_mates_and_padding(tiny_model):
    """A sample's per-token log-probs and values do not depend on left padding from a longer prompt."""
    from tokalign.models import load_causal_lm, load_tokenizer

    tok = load_tokenizer(tiny_model)
    policy = load_causal_lm(tiny_model).eval()
    critic = ppo_loop.load_critic(tiny_model, "float32", tok.pad_token_id).eval()
    texts = ["Tell me about the lake.", "Write a short note about the garden, the city and the old museum."]
    enc = tok(texts, return_tensors="pt", padding=True, padding_side="left")
    responses = torch.tensor([[40, 41, 42, tok.eos_token_id], [43, 44, tok.eos_token_id, tok.pad_token_id]])
    mask = ppo_loop.response_mask(responses, tok.eos_token_id)
    ids, attn = torch.cat([enc["input_ids"], responses], 1), torch.cat([enc["attention_mask"], mask], 1)
    pos = (attn.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        batch_logps = ppo_loop.token_logps(ppo_loop.response_logits(policy, ids, attn, pos, 4), responses, 0.8)
        batch_values = critic(ids, attn, pos, 4)
        alone = tok(texts[:1], return_tensors="pt")
        ids1 = torch.cat([alone["input_ids"], responses[:1]], 1)
        attn1 = torch.ones_like(ids1)
        pos1 = attn1.cumsum(-1) - 1
        logps1 = ppo_loop.token_logps(ppo_loop.response_logits(policy, ids1, attn1, pos1, 4), responses[:1], 0.8)
        values1 = critic(ids1, attn1, pos1, 4)
    torch.testing.assert_close(batch_logps[0], logps1[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(batch_values[0], values1[0], atol=1e-5, rtol=1e-5)


@pytest.mark.slow
def test_ppo_equals_ma_ppo_with_n1_end_to_end(train):
    """Same seed, same code path: method=ppo and method=ma_ppo method.n=1 log identical metrics."""
    a = train("method=ppo", "trainer.max_steps=2", *SMALL)
    b = train("method=ma_ppo", "method.n=1", "trainer.max_steps=2", *SMALL)
    timing = ("time", "train/rollout_tokens_per_s", "train/train_tokens_per_s", "train/rollout_s", "train/update_s")
    strip = lambda rows: [{k: v for k, v in r.items() if k not in timing} for r in rows]  # noqa: E731
    assert strip(metrics(a)) == strip(metrics(b))
    first = metrics(a)[0]
    assert first["train/approx_kl"] == 0 and first["train/clipfrac"] == 0  # invariant 9: θ = θ_old ⇒ ρ = 1
    for key in ("reward", "kl", "entropy", "value_loss", "clipfrac", "approx_kl", "explained_variance",
                "macro_length", "rollout_tokens_per_s", "train_tokens_per_s"):
        assert f"train/{key}" in first
    assert (a / "model" / "config.json").exists() and (a / "critic" / "config.json").exists()


@pytest.mark.slow
def test_ma_ppo_with_reward_model_parsing_and_segment_loss(train):
    """reward=model from a method=reward run dir (critic from the RM), parsing rule, every option on."""
    rm = train("method=reward", "trainer.max_steps=2", "trainer.per_device_batch_size=4", "eval.at_end=false")
    run = train(
        "method=ma_ppo", "method.reward=model", f"method.reward_model={rm}", "method.termination=parsing",
        "method.policy_loss_level=segment", "method.value_weighting=last", "method.reward_aggregation=mean",
        "method.num_mini_batches=2", "method.num_ppo_epochs=2", "method.kl_estimator=k3", "method.score_clip=2.5",
        "method.whiten_rewards=true", "method.critic_learning_rate=1e-4", "trainer.max_steps=2", *SMALL,
    )
    rows = metrics(run)
    assert len(rows) == 2 and rows[0]["train/macro_length"] > 1
    assert all(abs(r["train/reward"]) <= 2.5 for r in rows)
    assert rows[0]["train/critic_lr"] < rows[0]["train/lr"]


@pytest.mark.slow
def test_resume_gives_the_same_next_step(train, tmp_path):
    from tests.conftest import run_cli

    args = ("method=ma_ppo", "trainer.max_steps=3", "trainer.save_steps=2", *SMALL)
    full = train(*args)
    assert [p.name for p in (full / "checkpoints").iterdir()] == ["checkpoint-2"]
    resumed = tmp_path / "resumed"
    shutil.copytree(full / "checkpoints" / "checkpoint-2", resumed / "checkpoints" / "checkpoint-2")
    run_cli("train", f"hydra.run.dir={resumed}", "resume=auto", "eval.num_prompts=8", *args)
    after = metrics(resumed)
    assert [r["step"] for r in after] == [3]
    for key in ("train/policy_loss", "train/value_loss", "train/reward", "train/kl"):
        assert after[0][key] == metrics(full)[-1][key], key


def test_prompt_batches_are_a_function_of_the_step_and_cover_each_pass():
    import datasets

    data = datasets.Dataset.from_dict({"prompt": [str(i) for i in range(10)]})
    batches = [ppo_loop.prompt_batch(data, step, 4, seed=1)["prompt"] for step in range(5)]
    assert batches[2] == ppo_loop.prompt_batch(data, 2, 4, seed=1)["prompt"]
    flat = [p for b in batches for p in b]
    assert sorted(flat[:10]) == sorted(flat[10:20]) == sorted(data["prompt"])
    assert flat[:10] != flat[10:20]  # a fresh shuffle per pass


@pytest.mark.slow
@pytest.mark.distributed
def test_two_processes_checkpoint_every_rank_and_resume_exactly(train, tmp_path):
    """DDP (gloo): each rank trains its own prompts, every rank's RNG is saved, resume is exact."""
    from tests.conftest import run_cli

    args = ("method=ma_ppo", "launcher=ddp", "launcher.num_gpus=2", "trainer.max_steps=3", "trainer.save_steps=2",
            *SMALL, "trainer.per_device_batch_size=2")
    full = train(*args)
    checkpoint = full / "checkpoints" / "checkpoint-2"
    assert {"random_states_0.pkl", "random_states_1.pkl"} <= {p.name for p in checkpoint.iterdir()}
    assert [r["step"] for r in metrics(full)] == [1, 2, 3]
    resumed = tmp_path / "resumed"
    shutil.copytree(checkpoint, resumed / "checkpoints" / "checkpoint-2")
    run_cli("train", f"hydra.run.dir={resumed}", "resume=auto", *args)
    for key in ("train/policy_loss", "train/value_loss", "train/reward"):
        assert metrics(resumed)[0][key] == metrics(full)[-1][key], key
