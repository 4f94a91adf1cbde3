"""The token-level trainers (TGDPO, T-REG, AlignDistil) rely on TRL/transformers internals pinned to
trl 1.16: fail loudly if they move."""

import inspect

import pytest

pytest.importorskip("trl")


def _params(fn):
    return list(inspect.signature(fn).parameters)


def test_overridden_private_hooks_keep_their_signatures():
    from transformers import Trainer
    from trl import DPOTrainer

    assert _params(DPOTrainer._precompute_ref_logps) == ["self", "dataset", "name", "batch_size"]
    assert _params(DPOTrainer._prepare_dataset) == ["self", "dataset", "processing_class", "args", "dataset_name"]
    assert _params(Trainer._set_signature_columns_if_needed) == ["self"]
    assert _params(DPOTrainer.compute_loss) == ["self", "model", "inputs", "return_outputs", "num_items_in_batch"]
    assert _params(DPOTrainer.prediction_step) == ["self", "model", "inputs", "prediction_loss_only", "ignore_keys"]
    assert _params(DPOTrainer.log) == ["self", "logs", "start_time"]


def test_dpo_trainer_still_calls_the_hooks_and_keeps_the_state_they_use():
    from trl import DPOTrainer

    init = inspect.getsource(DPOTrainer.__init__)
    assert "self._precompute_ref_logps(" in init  # precompute runs our per-token version
    assert "self._precompute_engine = None" in init  # the DeepSpeed engine of the reference during the precompute
    assert init.index("self._prepare_dataset(") < init.index("self._precompute_ref_logps(")
    assert 'self._metrics = {"train": defaultdict(list), "eval": defaultdict(list)}' in init
    assert "add_fused_lm_head(" in init


def test_preference_collator_layout():
    """Our collator relies on [chosen; rejected] rows and completion_mask marking response tokens."""
    from trl.trainer.dpo_trainer import DataCollatorForPreference

    out = DataCollatorForPreference(pad_token_id=0)(
        [
            {"prompt_ids": [1, 2], "chosen_ids": [3, 4], "rejected_ids": [5]},
            {"prompt_ids": [6], "chosen_ids": [7], "rejected_ids": [8, 9, 10]},
        ]
    )
    assert out["input_ids"].tolist() == [[1, 2, 3, 4], [6, 7, 0, 0], [1, 2, 5, 0], [6, 8, 9, 10]]
    assert out["completion_mask"].tolist() == [[0, 0, 1, 1], [0, 1, 0, 0], [0, 0, 1, 0], [0, 1, 1, 1]]


def test_fused_lm_head_returns_shifted_per_token_log_probs():
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM
    from trl.trainer.utils import add_fused_lm_head

    torch.manual_seed(0)
    model = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=16,
            hidden_size=8,
            intermediate_size=16,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_key_value_heads=2,
        )
    )
    ids = torch.tensor([[1, 2, 3, 4]])
    expected = model(input_ids=ids).logits.log_softmax(-1)[0, :-1].gather(-1, ids[0, 1:, None]).squeeze(-1)
    add_fused_lm_head(model)
    labels = ids.clone()
    labels[0, :2] = -100
    got = model(input_ids=ids, labels=labels, fused_lm_head=True).log_probs[0]
    torch.testing.assert_close(got, torch.stack([torch.tensor(0.0), expected[1], expected[2]]))


def test_sft_rows_label_the_prompt_ignored_and_models_keep_the_last_logits():
    """AlignDistil reads the prompt length from SFT labels and asks for the last positions' logits only."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    out = DataCollatorForLanguageModeling(pad_token_id=0)(
        [
            {"input_ids": [1, 2, 3], "labels": [-100, 2, 3]},
            {"input_ids": [4, 5], "labels": [-100, -100]},
        ]
    )
    assert out["labels"].tolist() == [[-100, 2, 3], [-100, -100, -100]]
    assert out["attention_mask"].tolist() == [[1, 1, 1], [1, 1, 0]]
    torch.manual_seed(0)
    model = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=16,
            hidden_size=8,
            intermediate_size=16,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_key_value_heads=2,
        )
    )
    ids = torch.tensor([[1, 2, 3, 4]])
    torch.testing.assert_close(model(input_ids=ids, logits_to_keep=2).logits, model(input_ids=ids).logits[:, -2:])
