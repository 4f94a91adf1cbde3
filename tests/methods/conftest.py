"""Fixtures the method tests share: toy preference rows and a frozen model that disagrees with the reference."""

from __future__ import annotations

import pytest
import torch


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
