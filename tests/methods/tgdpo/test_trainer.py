"""TGDPOTrainer: precomputed and online per-token log-probs agree, align with padding and
truncation, are cached and reused; α = 0 gives TRL's DPO loss on the same batch."""

import pytest
import torch

from tests.bases.dpo.helpers import MAX_LENGTH, dpo_args, loss_and_grads, truncated

pytest.importorskip("trl")


def _tgdpo(tiny_model, guidance, data, tmp_path, *, precompute, alpha=1.0, cache=True, **kw):
    from tokalign.methods.tgdpo.trainer import TGDPOTrainer
    from tokalign.modeling.models import load_causal_lm, load_tokenizer

    return TGDPOTrainer(
        model=load_causal_lm(tiny_model),
        ref_model=None if precompute else load_causal_lm(tiny_model),
        args=dpo_args(tmp_path, precompute, **kw),
        train_dataset=data,
        processing_class=load_tokenizer(tiny_model),
        guidance_model=load_causal_lm(guidance),
        alpha=alpha,
        token_cache_dir=tmp_path / "cache" if cache else None,
    )


def test_precomputed_and_online_give_the_same_loss_and_gradients(tiny_model, perturbed_model, pairs, tmp_path):
    pre = _tgdpo(tiny_model, perturbed_model, pairs, tmp_path, precompute=True)
    online = _tgdpo(tiny_model, perturbed_model, pairs, tmp_path, precompute=False)
    assert pre.ref_model is None and not pre.frozen_models  # a step runs the policy only
    assert truncated(pre.train_dataset)
    rows = list(range(6))
    loss_pre, grads_pre = loss_and_grads(pre, rows)
    loss_online, grads_online = loss_and_grads(online, rows)
    torch.testing.assert_close(loss_pre, loss_online, atol=1e-5, rtol=1e-5)
    for a, b in zip(grads_pre, grads_online):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
    f_min = pre._metrics["eval"]["f/min"][-1]
    assert f_min != pytest.approx(1.0)  # the guidance really weights the tokens


def test_batch_mates_and_padding_do_not_change_an_example_loss(tiny_model, perturbed_model, pairs, tmp_path):
    trainer = _tgdpo(tiny_model, perturbed_model, pairs, tmp_path, precompute=True)
    rows = [0, 3, 5, 8]
    batch_loss, _ = loss_and_grads(trainer, rows)
    alone = torch.stack([loss_and_grads(trainer, [i])[0] for i in rows])
    torch.testing.assert_close(batch_loss, alone.mean(), atol=1e-5, rtol=1e-5)


def test_precomputed_log_probs_are_cached_and_reused(tiny_model, perturbed_model, pairs, tmp_path, monkeypatch):
    from datasets import Dataset

    from tokalign.methods.tgdpo.trainer import TGDPOTrainer

    _tgdpo(tiny_model, perturbed_model, pairs, tmp_path, precompute=True)
    assert len(list((tmp_path / "cache").iterdir())) == 1

    def fail(*args, **kwargs):
        raise AssertionError("recomputed although cached")

    monkeypatch.setattr(TGDPOTrainer, "_compute_token_columns", fail)
    again = _tgdpo(tiny_model, perturbed_model, pairs, tmp_path, precompute=True)
    assert "guidance_chosen_per_token" in again.train_dataset.column_names
    ids = again.train_dataset.select_columns(["prompt_ids", "chosen_ids", "rejected_ids"])
    rebuilt = Dataset.from_list(ids.to_list())  # as in a new process: same rows, another fingerprint
    assert rebuilt._fingerprint != ids._fingerprint
    assert again._token_cache_key(rebuilt) == again._token_cache_key(ids)
    monkeypatch.undo()
    _tgdpo(tiny_model, perturbed_model, pairs, tmp_path, precompute=True, max_length=MAX_LENGTH - 8)
    assert len(list((tmp_path / "cache").iterdir())) == 2  # truncation is part of the key


def test_alpha_zero_equals_trl_dpo_on_the_same_batch(tiny_model, perturbed_model, pairs, tmp_path):
    from trl import DPOTrainer

    from tokalign.modeling.models import load_causal_lm, load_tokenizer

    tgdpo = _tgdpo(tiny_model, perturbed_model, pairs, tmp_path, precompute=False, alpha=0.0, cache=False)
    dpo = DPOTrainer(
        model=load_causal_lm(tiny_model),
        ref_model=load_causal_lm(tiny_model),
        args=dpo_args(tmp_path, False),
        train_dataset=pairs,
        processing_class=load_tokenizer(tiny_model),
    )
    rows = [1, 2, 4, 7]
    loss_tgdpo, grads_tgdpo = loss_and_grads(tgdpo, rows)
    loss_dpo, grads_dpo = loss_and_grads(dpo, rows)
    torch.testing.assert_close(loss_tgdpo, loss_dpo, atol=1e-6, rtol=1e-6)
    for a, b in zip(grads_tgdpo, grads_dpo):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)
    for key in ("rewards/chosen", "rewards/margins", "rewards/accuracies"):
        assert tgdpo._metrics["eval"][key][-1] == pytest.approx(dpo._metrics["eval"][key][-1], abs=1e-6)
