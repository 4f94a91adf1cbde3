"""TGDPO on TRL's DPOTrainer: per-token policy, reference and guidance log-probs into `tgdpo_loss`.

The policy forward is TRL's (fused LM head, chosen and rejected in one batch). Reference and
guidance log-probs are per-token values of frozen models: precomputed once per dataset and
cached, or computed from each batch (`tokalign.bases.dpo.token_level`).
"""

from __future__ import annotations

import torch

from tokalign.bases.dpo.token_level import TokenDPOTrainer
from tokalign.losses import tgdpo_loss


class TGDPOTrainer(TokenDPOTrainer):
    """DPOTrainer whose loss is `tokalign.losses.tgdpo_loss` (Zhu et al., ICML 2025).

    `guidance_model` is a frozen causal LM sharing the policy's tokenizer (a DPO checkpoint).
    """

    sources = ("ref", "guidance")

    def __init__(
        self,
        model,
        ref_model=None,
        *,
        args,
        processing_class,
        guidance_model,
        alpha: float,
        guidance_beta: float | None = None,
        f_min: float | None = None,
        **kwargs,
    ):
        self.alpha, self.guidance_beta, self.f_min = alpha, guidance_beta, f_min
        super().__init__(
            model,
            ref_model,
            args=args,
            processing_class=processing_class,
            frozen_models={"guidance": guidance_model},
            **kwargs,
        )

    def frozen_token_values(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {"ref": self.reference_logps(inputs), "guidance": self.frozen_logps("guidance", inputs)}

    def token_loss(self, policy, values, mask):
        return tgdpo_loss(
            *policy.chunk(2),
            *values["ref"].chunk(2),
            *values["guidance"].chunk(2),
            *mask.chunk(2),
            beta=self.beta,
            alpha=self.alpha,
            guidance_beta=self.guidance_beta,
            f_min=self.f_min,
        )
