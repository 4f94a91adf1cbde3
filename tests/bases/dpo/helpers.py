"""Helpers shared by the trainer tests of the token-level DPO variants (their fixtures: tests/conftest.py)."""

from __future__ import annotations

MAX_LENGTH = 40  # short enough that some toy pairs are truncated


def dpo_args(tmp_path, precompute: bool, **kw):
    from trl import DPOConfig

    settings = dict(
        output_dir=str(tmp_path / "out"),
        per_device_train_batch_size=4,
        max_length=MAX_LENGTH,
        report_to="none",
        precompute_ref_log_probs=precompute,
        beta=0.1,
        seed=0,
        bf16=False,
        gradient_checkpointing=False,
    )
    return DPOConfig(**{**settings, **kw})


def loss_and_grads(trainer, rows):
    """The trainer's loss on the collated `rows` of its dataset, and the policy's gradients."""
    trainer.model.zero_grad()
    batch = trainer.data_collator([trainer.train_dataset[i] for i in rows])
    loss = trainer.compute_loss(trainer.model, batch)
    loss.backward()
    return loss.detach(), [p.grad.clone() for p in trainer.model.parameters()]


def truncated(dataset) -> bool:
    """Some pair is longer than MAX_LENGTH (truncation is exercised)."""
    return max(len(r["prompt_ids"]) + max(len(r["chosen_ids"]), len(r["rejected_ids"])) for r in dataset) > MAX_LENGTH
