"""AlignDistilTrainer: the loss over a batch equals `aligndistil_loss` on each response's own positions,
whatever the padding and batch-mates; chunked equals unchunked; on-policy rollouts are well formed."""

import pytest
import torch

pytest.importorskip("trl")

MAX_LENGTH = 48


def _trainer(tiny_model, dpo_path, data, tmp_path, **settings):
    from trl import SFTConfig

    from tokalign.methods.aligndistil import chosen_completions
    from tokalign.methods.aligndistil.trainer import AlignDistilTrainer
    from tokalign.modeling.models import load_causal_lm, load_tokenizer

    args = SFTConfig(
        output_dir=str(tmp_path / "out"),
        per_device_train_batch_size=4,
        max_length=MAX_LENGTH,
        report_to="none",
        seed=0,
        bf16=False,
        completion_only_loss=True,
    )
    return AlignDistilTrainer(
        model=load_causal_lm(tiny_model),
        args=args,
        train_dataset=chosen_completions(data),
        processing_class=load_tokenizer(tiny_model),
        dpo_model=load_causal_lm(dpo_path),
        base_model=load_causal_lm(tiny_model),
        **settings,
    )


def _loss_and_grads(trainer, rows):
    trainer.model.zero_grad()
    loss = trainer.compute_loss(trainer.model, trainer.data_collator([trainer.train_dataset[i] for i in rows]))
    loss.backward()
    return loss.detach(), [p.grad.clone() for p in trainer.model.parameters()]


@pytest.mark.parametrize("shift", [False, True], ids=["aligned", "their_off_by_one"])
def test_batch_loss_is_the_mean_of_each_response_on_its_own_positions(
    tiny_model, perturbed_model, pairs, tmp_path, shift
):
    from tokalign.losses import aligndistil_loss

    trainer = _trainer(tiny_model, perturbed_model, pairs, tmp_path, chunk_size=7, shift_positions=shift)
    rows = [0, 2, 3, 5]
    batch_loss, _ = _loss_and_grads(trainer, rows)
    models = (trainer.model, trainer.dpo_model, trainer.base_model)
    alone = []
    for i in rows:
        ids, labels = trainer.train_dataset[i]["input_ids"], trainer.train_dataset[i]["labels"]
        start = next(j for j, label in enumerate(labels) if label != -100)  # first response token
        # positions start-1 .. end-1 predict the response; their off-by-one uses start .. end (after the last token)
        first = start if shift else start - 1
        with torch.no_grad():
            logits = [m(input_ids=torch.tensor([ids])).logits[:, first : first + len(ids) - start] for m in models]
        loss, _ = aligndistil_loss(*logits, torch.ones(1, len(ids) - start), beta0=0.1, tvd_scale=10.0)
        alone.append(loss)
    torch.testing.assert_close(batch_loss, torch.stack(alone).mean(), atol=1e-5, rtol=1e-5)
    assert trainer._metrics["eval"]["aligndistil/alpha_max"][-1] > 1e-3  # the two models disagree


def test_chunked_equals_unchunked_through_the_trainer(tiny_model, perturbed_model, pairs, tmp_path):
    rows = [1, 4, 6, 7]
    chunked = _loss_and_grads(_trainer(tiny_model, perturbed_model, pairs, tmp_path, chunk_size=5), rows)
    whole = _loss_and_grads(_trainer(tiny_model, perturbed_model, pairs, tmp_path, chunk_size=None), rows)
    torch.testing.assert_close(chunked[0], whole[0], atol=1e-6, rtol=1e-5)
    for a, b in zip(chunked[1], whole[1]):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-4)


def test_on_policy_rollouts_answer_each_prompt_once(tiny_model, perturbed_model, pairs, tmp_path):
    trainer = _trainer(tiny_model, perturbed_model, pairs, tmp_path, on_policy=True, max_new_tokens=6)
    batch = trainer.data_collator([trainer.train_dataset[i] for i in (0, 1, 2)])
    rollouts = trainer._rollouts(trainer.model, batch)
    eos, pad = trainer.processing_class.eos_token_id, trainer.processing_class.pad_token_id
    for row in range(3):
        prompt_length = int((batch["labels"][row] != -100).int().argmax())
        ids, labels = rollouts["input_ids"][row], rollouts["labels"][row]
        length = int(rollouts["attention_mask"][row].sum())
        assert torch.equal(ids[:prompt_length], batch["input_ids"][row, :prompt_length])
        response = labels[prompt_length:length]
        assert (labels[:prompt_length] == -100).all() and torch.equal(response, ids[prompt_length:length])
        assert 1 <= len(response) <= 6 and (response[-1] == eos or len(response) == 6)
        assert eos not in response[:-1].tolist() and (ids[length:] == pad).all()
    trainer.model.train()
    loss = trainer.compute_loss(trainer.model, batch)
    assert torch.isfinite(loss) and loss.requires_grad
