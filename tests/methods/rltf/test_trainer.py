"""RLTF at trainer level on the tiny model: two-turn rollouts, the reduction to multi-turn GRPO
(docs/methods.md, RLTF: invariant 1) and the SD and FM terms beside TRL's loss."""

from __future__ import annotations

import pytest
import torch

G = 4
PROMPTS = 3


def odd_length(prompts, completions, **_):
    """A deterministic 0/1 reward: completions of odd length are right."""
    return [float(len(c) % 2) for c in completions]


def critic(prompt, attempt):
    """Agrees with the reward: an even-length attempt gets a critique."""
    return None if len(attempt) % 2 else "the length is even"


@pytest.fixture(scope="module")
def make(tiny_model, tmp_path_factory):
    """`make(**trainer_kwargs)`: an RLTF trainer on the tiny model, ready for compute_loss."""
    import datasets
    from trl import GRPOConfig

    from tokalign.methods.rltf.trainer import RLTFTrainer
    from tokalign.modeling.models import load_causal_lm, load_tokenizer

    rows = [{"prompt": f"What is {a} + {a + 11}?", "answer": str(2 * a + 11)} for a in range(10, 16)]

    def _make(**kwargs):
        args = GRPOConfig(
            output_dir=str(tmp_path_factory.mktemp("rltf")),
            per_device_train_batch_size=G * PROMPTS,
            num_generations=G,
            max_completion_length=8,
            steps_per_generation=1,
            scale_rewards="none",
            max_steps=3,
            report_to="none",
            seed=0,
            use_cpu=True,
            disable_tqdm=True,
        )
        trainer = RLTFTrainer(
            model=load_causal_lm(tiny_model),
            reward_funcs=[odd_length],
            args=args,
            train_dataset=datasets.Dataset.from_list(rows),
            processing_class=load_tokenizer(tiny_model),
            critic=critic,
            **kwargs,
        )
        trainer.model.train()
        trainer.current_gradient_accumulation_steps = 1
        return trainer

    _make.inputs = [row for row in rows[:PROMPTS] for _ in range(G)]
    return _make


def rollout(trainer, inputs):
    """The trainer's batch and what each turn returned (TRL's output, every rank's rewards)."""
    turns = []
    original = trainer._turn

    def keep(batch):
        turns.append(original(batch))
        return turns[-1]

    trainer._turn = keep
    torch.manual_seed(0)
    try:
        return trainer._generate_and_score_completions(inputs), turns
    finally:
        del trainer._turn


def loss_and_grads(trainer, inputs, compute):
    trainer.model.zero_grad()
    loss = compute(trainer.model, inputs)
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.grad is not None}


def test_two_turn_batch_holds_both_turns_with_multi_turn_advantages(make):
    from tokalign.losses import rltf_turn_advantages

    trainer = make(sd_coef=0.0)
    batch, turns = rollout(trainer, make.inputs)
    (first, r0), (second, r1) = turns
    revise = r0 == 0
    assert revise.any() and not revise.all()  # the tiny model's attempts have both lengths
    B = len(make.inputs)
    assert batch["completion_ids"].size(0) == B + int(revise.sum())
    groups = torch.arange(B) // G
    expected = rltf_turn_advantages(torch.stack([r0, r1], -1), torch.stack([torch.ones_like(revise), revise], -1),
                                    groups, gamma=0.1)  # fmt: skip
    torch.testing.assert_close(batch["advantages"], torch.cat([expected[:, 0], expected[revise, 1]]))
    assert int(batch["num_items_in_batch"]) == int(batch["completion_mask"].sum())
    tokenizer = trainer.processing_class
    row = int(revise.nonzero()[0])
    second_prompt = tokenizer.decode(batch["prompt_ids"][B][batch["prompt_mask"][B].bool()])
    assert "previous:" in second_prompt and "critique: the length is even" in second_prompt
    assert make.inputs[row]["prompt"] in second_prompt
    logged = trainer._metrics["train"]
    assert logged["second_turn/reward"] and len(logged["reward"]) == 1  # the plain names stay the first turn's


def test_no_sd_and_no_fm_is_multi_turn_grpo(make):
    """Invariant 1: κ = 0 and λ_FM = 0 give TRL's GRPO loss and gradients on the two-turn batch."""
    from trl import GRPOTrainer

    trainer = make(sd_coef=0.0, fm_coef=0.0)
    batch, _ = rollout(trainer, make.inputs)
    loss, grads = loss_and_grads(trainer, batch, trainer.compute_loss)
    trainer_ref = make(sd_coef=0.0)
    ref_loss, ref_grads = loss_and_grads(
        trainer_ref, batch, lambda model, inputs: GRPOTrainer.compute_loss(trainer_ref, model, inputs)
    )
    assert torch.equal(loss, ref_loss)
    assert grads.keys() == ref_grads.keys() and all(torch.equal(grads[n], ref_grads[n]) for n in grads)


@pytest.mark.parametrize("sd_advantage", ["second_turn", "first_turn"])
def test_sd_term_is_the_sd_loss_over_the_rl_tokens(make, sd_advantage):
    from trl import GRPOTrainer

    from tokalign.losses import rltf_first_turn_advantages, rltf_sd_loss

    trainer = make(sd_coef=0.5, sd_advantage=sd_advantage)
    batch, turns = rollout(trainer, make.inputs)
    (first, r0), (second, r1) = turns
    revise = r0 == 0
    prompt_ids, prompt_mask, completion_ids, completion_mask, advantages = trainer._side["sd"]
    assert torch.equal(prompt_ids, first["prompt_ids"][revise]) and torch.equal(
        completion_ids, second["completion_ids"][revise]
    )
    B = len(make.inputs)
    if sd_advantage == "first_turn":
        expected = rltf_first_turn_advantages(r0, r1, revise, torch.arange(B) // G)[revise]
    else:
        expected = batch["advantages"][B:]
    torch.testing.assert_close(advantages, expected)
    side = trainer._side
    loss = trainer.compute_loss(trainer.model, batch)
    assert trainer._side == {}  # used once
    rl = GRPOTrainer.compute_loss(trainer, trainer.model, batch)
    logps = trainer._logps(trainer.model, prompt_ids, prompt_mask, completion_ids, completion_mask)
    sd, _ = rltf_sd_loss(logps, logps.detach(), advantages, completion_mask, coef=0.5)
    torch.testing.assert_close(loss, rl + sd / batch["completion_mask"].sum(), rtol=1e-5, atol=1e-6)
    assert side["sd"][0].size(0) == int(revise.sum())
    assert {"rltf/sd_mask_frac", "rltf/sd_coef", "loss/sd"} <= set(trainer._metrics["train"])


def test_fm_rows_predict_the_critique_from_the_question_and_attempt(make):
    from trl import GRPOTrainer

    from tokalign.losses import feedback_modeling_loss

    trainer = make(sd_coef=0.0, fm_coef=0.1, feedback_template="{prompt} previous: {attempt} critique:")
    batch, turns = rollout(trainer, make.inputs)
    prompt_ids, prompt_mask, reply_ids, reply_mask = trainer._side["fm"]
    tokenizer = trainer.processing_class
    assert tokenizer.decode(reply_ids[0][reply_mask[0].bool()], skip_special_tokens=True) == "the length is even"
    assert "previous:" in tokenizer.decode(prompt_ids[0][prompt_mask[0].bool()])
    loss = trainer.compute_loss(trainer.model, batch)
    rl = GRPOTrainer.compute_loss(trainer, trainer.model, batch)
    logps = trainer._logps(trainer.model, prompt_ids, prompt_mask, reply_ids, reply_mask)
    fm, _ = feedback_modeling_loss(logps, reply_mask, coef=0.1)
    torch.testing.assert_close(loss, rl + fm / batch["completion_mask"].sum(), rtol=1e-5, atol=1e-6)


def test_linear_sd_schedule(make):
    trainer = make(sd_coef=0.2, sd_schedule="linear")
    trainer.state.max_steps = 5
    values = []
    for step in range(5):
        trainer.state.global_step = step
        values.append(trainer.current_sd_coef())
    assert values[0] == 0 and values[-1] == pytest.approx(0.2) and values == sorted(values)


def test_without_a_critic_function_the_critique_is_a_verdict(make):
    from tokalign.methods.rltf import VERDICT

    trainer = make(sd_coef=0.0)
    trainer.critic = None
    batch, turns = rollout(trainer, make.inputs)
    (_, r0), _ = turns
    B = len(make.inputs)
    assert batch["completion_ids"].size(0) == B + int((r0 < 1).sum())
    second_prompt = trainer.processing_class.decode(batch["prompt_ids"][B][batch["prompt_mask"][B].bool()])
    assert f"critique: {VERDICT}" in second_prompt


def test_a_rank_without_second_turns_runs_zero_weight_side_rows(make):
    """Another rank's second turns make this one run the SD and FM forwards too, on rows that add 0."""
    from trl import GRPOTrainer

    trainer = make(sd_coef=0.5, fm_coef=0.1)
    batch, turns = rollout(trainer, make.inputs)
    (first, r0), (second, _) = turns
    trainer._side = {}
    trainer._side_rows(make.inputs, ["x"] * len(r0), [None] * len(r0), first, second, torch.ones(len(r0)),
                       torch.zeros(0, dtype=torch.long))  # fmt: skip
    assert trainer._side["sd"][3].sum() == 0 and trainer._side["fm"][3].sum() == 0
    assert trainer._side["sd"][0].size(0) == trainer._side["fm"][0].size(0) == 1
    loss = trainer.compute_loss(trainer.model, batch)
    torch.testing.assert_close(loss, GRPOTrainer.compute_loss(trainer, trainer.model, batch))
