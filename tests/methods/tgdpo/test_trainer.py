"""TGDPOTrainer: precomputed and online per-token log-probs agree, align with padding and
truncation, are cached and reused; α = 0 gives TRL's DPO loss on the same batch."""

import pytest
import torch

pytest.importorskip("trl")

MAX_LENGTH = 40  # short enough that some toy pairs are truncated


@pytest.fixture(scope="module")
def data():
    from omegaconf import OmegaConf

    from tokalign.config import DatasetConfig
    from tokalign.data.loading import load_split

    return load_split(OmegaConf.structured(DatasetConfig(num_train=12)), "preference", "train")


@pytest.fixture(scope="module")
def guidance_dir(tiny_model, tmp_path_factory):
    """The tiny model with perturbed weights: a guidance that disagrees with the reference."""
    from tokalign.models import load_causal_lm, load_tokenizer

    model = load_causal_lm(tiny_model)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen))
    path = tmp_path_factory.mktemp("guidance")
    model.save_pretrained(path)
    load_tokenizer(tiny_model).save_pretrained(path)
    return str(path)


def _args(tmp_path, precompute, **kw):
    from trl import DPOConfig

    settings = dict(
        output_dir=str(tmp_path / "out"), per_device_train_batch_size=4, max_length=MAX_LENGTH, report_to="none",
        precompute_ref_log_probs=precompute, beta=0.1, seed=0, bf16=False, gradient_checkpointing=False,
    )
    return DPOConfig(**{**settings, **kw})


def _tgdpo(tiny_model, guidance_dir, data, tmp_path, *, precompute, alpha=1.0, cache=True, **kw):
    from tokalign.models import load_causal_lm, load_tokenizer
    from tokalign.methods.tgdpo.trainer import TGDPOTrainer

    return TGDPOTrainer(
        model=load_causal_lm(tiny_model),
        ref_model=None if precompute else load_causal_lm(tiny_model),
        args=_args(tmp_path, precompute, **kw), train_dataset=data, processing_class=load_tokenizer(tiny_model),
        guidance_model=load_causal_lm(guidance_dir), alpha=alpha,
        token_cache_dir=tmp_path / "cache" if cache else None,
    )


def _loss_and_grads(trainer, rows):
    trainer.model.zero_grad()
    batch = trainer.data_collator([trainer.train_dataset[i] for i in rows])
    loss = trainer.compute_loss(trainer.model, batch)
    loss.backward()
    return loss.detach(), [p.grad.clone() for p in trainer.model.parameters()]


def test_precomputed_and_online_give_the_same_loss_and_gradients(tiny_model, guidance_dir, data, tmp_path):
    pre = _tgdpo(tiny_model, guidance_dir, data, tmp_path, precompute=True)
    online = _tgdpo(tiny_model, guidance_dir, data, tmp_path, precompute=False)
    assert pre.ref_model is None and pre.guidance_model is None  # a step runs the policy only
    lengths = [len(r["prompt_ids"]) + max(len(r["chosen_ids"]), len(r["rejected_ids"])) for r in pre.train_dataset]
    assert max(lengths) > MAX_LENGTH  # truncation is exercised
    rows = list(range(6))
    loss_pre, grads_pre = _loss_and_grads(pre, rows)
    loss_online, grads_online = _loss_and_grads(online, rows)
    torch.testing.assert_close(loss_pre, loss_online, atol=1e-5, rtol=1e-5)
    for a, b in zip(grads_pre, grads_online):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
    f_min = pre._metrics["eval"]["f/min"][-1]
    assert f_min != pytest.approx(1.0)  # the guidance really weights the tokens


def test_batch_mates_and_padding_do_not_change_an_example_loss(tiny_model, guidance_dir, data, tmp_path):
    trainer = _tgdpo(tiny_model, guidance_dir, data, tmp_path, precompute=True)
    rows = [0, 3, 5, 8]
    batch_loss, _ = _loss_and_grads(trainer, rows)
    alone = torch.stack([_loss_and_grads(trainer, [i])[0] for i in rows])
    torch.testing.assert_close(batch_loss, alone.mean(), atol=1e-5, rtol=1e-5)


def test_precomputed_log_probs_are_cached_and_reused(tiny_model, guidance_dir, data, tmp_path, monkeypatch):
    from datasets import Dataset

    from tokalign.methods.tgdpo.trainer import TGDPOTrainer

    _tgdpo(tiny_model, guidance_dir, data, tmp_path, precompute=True)
    assert len(list((tmp_path / "cache").iterdir())) == 1

    def fail(*args, **kwargs):
        raise AssertionError("recomputed although cached")

    monkeypatch.setattr(TGDPOTrainer, "_compute_token_columns", fail)
    again = _tgdpo(tiny_model, guidance_dir, data, tmp_path, precompute=True)
    assert "ref_chosen_token_logps" in again.train_dataset.column_names
    ids = again.train_dataset.select_columns(["prompt_ids", "chosen_ids", "rejected_ids"])
    rebuilt = Dataset.from_list(ids.to_list())  # as in a new process: same rows, another fingerprint
    assert rebuilt._fingerprint != ids._fingerprint
    assert again._token_cache_key(rebuilt) == again._token_cache_key(ids)
    monkeypatch.undo()
    _tgdpo(tiny_model, guidance_dir, data, tmp_path, precompute=True, max_length=MAX_LENGTH - 8)
    assert len(list((tmp_path / "cache").iterdir())) == 2  # truncation is part of the key


def test_alpha_zero_equals_trl_dpo_on_the_same_batch(tiny_model, guidance_dir, data, tmp_path):
    from trl import DPOTrainer

    from tokalign.models import load_causal_lm, load_tokenizer

    tgdpo = _tgdpo(tiny_model, guidance_dir, data, tmp_path, precompute=False, alpha=0.0, cache=False)
    dpo = DPOTrainer(
        model=load_causal_lm(tiny_model), ref_model=load_causal_lm(tiny_model), args=_args(tmp_path, False),
        train_dataset=data, processing_class=load_tokenizer(tiny_model),
    )
    rows = [1, 2, 4, 7]
    loss_tgdpo, grads_tgdpo = _loss_and_grads(tgdpo, rows)
    loss_dpo, grads_dpo = _loss_and_grads(dpo, rows)
    torch.testing.assert_close(loss_tgdpo, loss_dpo, atol=1e-6, rtol=1e-6)
    for a, b in zip(grads_tgdpo, grads_dpo):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)
    for key in ("rewards/chosen", "rewards/margins", "rewards/accuracies"):
        assert tgdpo._metrics["eval"][key][-1] == pytest.approx(dpo._metrics["eval"][key][-1], abs=1e-6)


def test_collator_places_values_on_completion_positions_and_rejects_misaligned_ones():
    from tokalign.methods.tgdpo.trainer import DataCollatorForTokenPreference

    def example(prompt, chosen, rejected, stored_chosen, stored_rejected):
        e = {"prompt_ids": prompt, "chosen_ids": chosen, "rejected_ids": rejected}
        for src in ("ref", "guidance"):
            e[f"{src}_chosen_token_logps"], e[f"{src}_rejected_token_logps"] = stored_chosen, stored_rejected
        return e

    collator = DataCollatorForTokenPreference(pad_token_id=0, max_length=4)
    # max_length 4 keeps tokens 3, 4 of the first chosen response: only their values are stored
    out = collator([example([1, 2], [3, 4, 9], [5], [3.0, 4.0], [5.0]), example([6], [7], [8, 9], [7.0], [8.0, 9.0])])
    assert out["ref_token_logps"].tolist() == [[0, 3, 4], [7, 0, 0], [0, 5, 0], [8, 9, 0]]
    assert out["guidance_token_logps"].tolist() == out["ref_token_logps"].tolist()
    with pytest.raises(ValueError, match="do not line up"):
        collator([example([1, 2], [3, 4, 9], [5], [3.0, 4.0, 9.0], [5.0])])
