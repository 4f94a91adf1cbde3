"""Fixtures and helpers shared by the trainer tests of the token-level DPO variants.

Import the fixtures into a test module (`from tests.methods.dpo.helpers import pairs, perturbed_model`).
"""

from __future__ import annotations

import pytest
import torch

MAX_LENGTH = 40  # short enough that some toy pairs are truncated


@pytest.fixture(scope="module")
def pairs():
    """12 toy preference rows (conversational)."""
    from omegaconf import OmegaConf

    from tokalign.config import DatasetConfig
    from tokalign.data.loading import load_split

    return load_split(OmegaConf.structured(DatasetConfig(num_train=12)), "preference", "train")


@pytest.fixture(scope="module")
def perturbed_model(tiny_model, tmp_path_factory):
    """The tiny model with perturbed weights: a frozen model that disagrees with the reference."""
    from tokalign.models import load_causal_lm, load_tokenizer

    model = load_causal_lm(tiny_model)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen))
    path = tmp_path_factory.mktemp("perturbed")
    model.save_pretrained(path)
    load_tokenizer(tiny_model).save_pretrained(path)
    return str(path)


def dpo_args(tmp_path, precompute: bool, **kw):
    from trl import DPOConfig

    settings = dict(
        output_dir=str(tmp_path / "out"), per_device_train_batch_size=4, max_length=MAX_LENGTH, report_to="none",
        precompute_ref_log_probs=precompute, beta=0.1, seed=0, bf16=False, gradient_checkpointing=False,
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
