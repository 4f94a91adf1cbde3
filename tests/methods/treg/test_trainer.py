"""TREGTrainer: r̂ is the starting policy's contrast of each response after the two revision prompts,
aligned by response offset; precomputed and online values agree; a row's loss ignores its batch-mates
and padding; α = 0 gives TRL's DPO loss on the same batch."""

import pytest
import torch

from tests.bases.dpo.helpers import dpo_args, loss_and_grads, truncated

pytest.importorskip("trl")


def _treg(tiny_model, data, tmp_path, *, precompute, alpha=0.5, cache=True, **kw):
    from tokalign.methods.treg.trainer import TREGTrainer
    from tokalign.modeling.models import load_causal_lm, load_tokenizer

    return TREGTrainer(
        model=load_causal_lm(tiny_model),
        ref_model=None if precompute else load_causal_lm(tiny_model),
        args=dpo_args(tmp_path, precompute, **kw),
        train_dataset=data,
        processing_class=load_tokenizer(tiny_model),
        alpha=alpha,
        token_cache_dir=tmp_path / "cache" if cache else None,
    )


@pytest.mark.parametrize("mode", ["keep_start", "keep_end"])
def test_revised_rows_end_and_mark_where_the_training_rows_do(mode):
    from tokalign.methods.treg.trainer import DataCollatorForRevisions

    e = {
        "prompt_ids": [1, 2],
        "chosen_ids": [3, 4, 5],
        "rejected_ids": [6],
        "better_prompt_ids": [7, 1, 2, 8],
        "worse_prompt_ids": [9, 2],
    }
    out = DataCollatorForRevisions(pad_token_id=0, max_length=4, truncation_mode=mode)([e])
    # training rows: keep_start keeps chosen tokens 3, 4 (prompt 1, 2 whole); keep_end keeps 3, 4, 5 after prompt token 2
    kept = out["completion_mask"].sum(1).tolist()
    assert kept == ([2, 1] if mode == "keep_start" else [3, 1])
    if mode == "keep_start":
        assert out["better_input_ids"].tolist() == [[7, 1, 2, 8, 3, 4], [7, 1, 2, 8, 6, 0]]
        assert out["better_completion_mask"].tolist() == [[0, 0, 0, 0, 1, 1], [0, 0, 0, 0, 1, 0]]
        assert out["worse_input_ids"].tolist() == [[9, 2, 3, 4], [9, 2, 6, 0]]
    else:  # cut to max_length + the revision's 2 extra prompt tokens
        assert out["better_input_ids"].tolist() == [[1, 2, 8, 3, 4, 5], [7, 1, 2, 8, 6, 0]]
        assert out["better_completion_mask"].tolist() == [[0, 0, 0, 1, 1, 1], [0, 0, 0, 0, 1, 0]]
        assert out["worse_input_ids"].tolist() == [[2, 3, 4, 5], [9, 2, 6, 0]]
    assert out["better_completion_mask"].sum(1).tolist() == out["worse_completion_mask"].sum(1).tolist() == kept


def test_token_rewards_contrast_the_responses_under_the_revised_prompts(tiny_model, pairs, tmp_path):
    from tokalign.bases.views import response_logps
    from tokalign.losses import contrastive_token_rewards
    from tokalign.methods.treg.prompts import BETTER, WORSE, revise
    from tokalign.modeling.models import load_causal_lm

    trainer = _treg(tiny_model, pairs, tmp_path, precompute=True, max_length=None)
    tokenizer, ref = trainer.processing_class, load_causal_lm(tiny_model)
    row = trainer.train_dataset[0]
    for kind, template in (("better", BETTER), ("worse", WORSE)):
        expected = tokenizer.apply_chat_template(
            revise(row["prompt"], template), tokenize=True, add_generation_prompt=True, return_dict=True
        )["input_ids"]
        assert row[f"{kind}_prompt_ids"] == expected
    assert "concise" in tokenizer.decode(row["better_prompt_ids"]) and "verbose" in tokenizer.decode(
        row["worse_prompt_ids"]
    )
    for side in ("chosen", "rejected"):
        scores = [response_logps(ref, row[f"{kind}_prompt_ids"], row[f"{side}_ids"])[0] for kind in ("better", "worse")]
        r_hat = contrastive_token_rewards(scores[0][None], scores[1][None], torch.ones(1, len(row[f"{side}_ids"])))[0]
        stored = torch.tensor(row[f"token_reward_{side}_per_token"])
        torch.testing.assert_close(stored, r_hat.float(), atol=1e-5, rtol=1e-4)
        assert stored.abs().max() > 1e-3  # the prompts make a difference


@pytest.mark.parametrize("mode", ["keep_start", "keep_end"])
def test_precomputed_and_online_give_the_same_loss_and_gradients(tiny_model, pairs, tmp_path, mode):
    pre = _treg(tiny_model, pairs, tmp_path, precompute=True, truncation_mode=mode)
    online = _treg(tiny_model, pairs, tmp_path, precompute=False, truncation_mode=mode)
    assert pre.ref_model is None and truncated(pre.train_dataset)
    rows = list(range(6))
    loss_pre, grads_pre = loss_and_grads(pre, rows)
    loss_online, grads_online = loss_and_grads(online, rows)
    torch.testing.assert_close(loss_pre, loss_online, atol=1e-5, rtol=1e-5)
    for a, b in zip(grads_pre, grads_online):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
    assert pre._metrics["eval"]["loss/reg"][-1] != 0.0


def test_batch_mates_and_padding_do_not_change_an_example_loss(tiny_model, pairs, tmp_path):
    trainer = _treg(tiny_model, pairs, tmp_path, precompute=True)
    rows = [0, 3, 5, 8]
    batch_loss, _ = loss_and_grads(trainer, rows)
    alone = torch.stack([loss_and_grads(trainer, [i])[0] for i in rows])
    torch.testing.assert_close(batch_loss, alone.mean(), atol=1e-5, rtol=1e-5)


def test_alpha_zero_equals_trl_dpo_on_the_same_batch(tiny_model, pairs, tmp_path):
    from trl import DPOTrainer

    from tokalign.modeling.models import load_causal_lm, load_tokenizer

    treg = _treg(tiny_model, pairs, tmp_path, precompute=False, alpha=0.0, cache=False)
    dpo = DPOTrainer(
        model=load_causal_lm(tiny_model),
        ref_model=load_causal_lm(tiny_model),
        args=dpo_args(tmp_path, False),
        train_dataset=pairs,
        processing_class=load_tokenizer(tiny_model),
    )
    rows = [1, 2, 4, 7]
    loss_treg, grads_treg = loss_and_grads(treg, rows)
    loss_dpo, grads_dpo = loss_and_grads(dpo, rows)
    torch.testing.assert_close(loss_treg, loss_dpo, atol=1e-6, rtol=1e-6)
    for a, b in zip(grads_treg, grads_dpo):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)
