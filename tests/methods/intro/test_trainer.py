"""InTRO at trainer level on the tiny model: its reductions (docs/methods.md, InTRO) and what it logs."""

from __future__ import annotations

import pytest
import torch

G = 4
PROMPTS = 3


def half_right(prompts, completions, **_):
    """A deterministic 0/1 reward: every other completion of a group counts as right."""
    return [float(i % 2 == 0) for i in range(len(completions))]


@pytest.fixture(scope="module")
def make(tiny_model, tmp_path_factory):
    """`make(**trainer_kwargs)`: an InTRO trainer on the tiny model, ready for compute_loss."""
    import datasets
    from trl import GRPOConfig

    from tokalign.methods.intro.trainer import InTROTrainer
    from tokalign.modeling.models import load_causal_lm, load_tokenizer

    rows = [{"prompt": f"What is {a} + {a + 11}?", "answer": str(2 * a + 11)} for a in range(10, 16)]

    def _make(**kwargs):
        args = GRPOConfig(
            output_dir=str(tmp_path_factory.mktemp("intro")),
            per_device_train_batch_size=G * PROMPTS,
            num_generations=G,
            max_completion_length=8,
            max_steps=2,
            report_to="none",
            seed=0,
            use_cpu=True,
            disable_tqdm=True,
        )
        trainer = InTROTrainer(
            model=load_causal_lm(tiny_model),
            reward_funcs=[half_right],
            args=args,
            train_dataset=datasets.Dataset.from_list(rows),
            processing_class=load_tokenizer(tiny_model),
            **kwargs,
        )
        trainer.model.train()
        trainer.current_gradient_accumulation_steps = 1
        return trainer

    _make.inputs = [row for row in rows[:PROMPTS] for _ in range(G)]
    return _make


@pytest.fixture(scope="module")
def batch(make):
    torch.manual_seed(0)
    return make()._generate_and_score_completions(make.inputs)


def grads(trainer, inputs):
    trainer.model.zero_grad()
    loss = trainer.compute_loss(trainer.model, inputs)
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.grad is not None}


def test_wrong_rationales_get_no_loss_and_rows_carry_the_answer_prompt(make, batch):
    from tokalign.methods.intro.trainer import POSTERIOR_IDS, POSTERIOR_MASK

    kept = torch.tensor([i % 2 == 0 for i in range(G * PROMPTS)])
    assert (batch["tool_mask"][~kept] == 0).all()
    assert torch.equal(batch["tool_mask"][kept], batch["completion_mask"][kept])
    assert int(batch["num_items_in_batch"]) == int(batch["completion_mask"][kept].sum())
    tokenizer = make().processing_class
    first = batch[POSTERIOR_IDS][0][batch[POSTERIOR_MASK][0].bool()]
    assert "What is 10 + 21? The answer is 31." in tokenizer.decode(first)


def test_no_correction_and_one_candidate_is_sft_on_the_kept_rows(make, batch):
    """Invariant 1 at trainer level: q := p and n = 1 is RAFT, the kept rows' token-mean NLL."""
    from tokalign.losses import masked_mean
    from tokalign.methods.intro.trainer import response_logits

    trainer = make(correction=False, num_candidates=1)
    loss, got = grads(trainer, batch)
    trainer.model.zero_grad()
    logits = response_logits(
        trainer.model, batch["prompt_ids"], batch["prompt_mask"], batch["completion_ids"], batch["completion_mask"]
    )
    logps = logits.log_softmax(-1).gather(-1, batch["completion_ids"].unsqueeze(-1)).squeeze(-1)
    mask = batch["tool_mask"]
    kept = mask.any(-1)
    sft = -masked_mean(logps, mask, dim=-1)[kept].mean()
    sft.backward()
    expected = {n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.grad is not None}
    torch.testing.assert_close(loss, sft.detach(), rtol=1e-5, atol=1e-6)
    assert got.keys() == expected.keys()
    for name in got:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("mode", ["sampled", "expected"])
def test_both_modes_train_and_log(make, batch, mode):
    trainer = make(mode=mode)
    loss, got = grads(trainer, batch)
    assert torch.isfinite(loss) and any(g.abs().sum() > 0 for g in got.values())
    logged = trainer._metrics["train"]
    assert {"intro/w_mean", "intro/w_max", "intro/clip_frac", "intro/kept_rows", "intro/log_ratio_sampled"} <= set(
        logged
    )
    assert logged["intro/kept_rows"][-1] == G * PROMPTS // 2


def test_a_batch_with_nothing_kept_is_a_zero_loss(make, batch):
    trainer = make()
    nothing = dict(batch, tool_mask=torch.zeros_like(batch["tool_mask"]))
    loss, got = grads(trainer, nothing)
    assert loss.item() == 0 and all(g.abs().sum() == 0 for g in got.values())
