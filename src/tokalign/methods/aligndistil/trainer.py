"""AlignDistil on TRL's SFTTrainer: the policy distilled, token by token, toward a teacher built from DPO models.

Off-policy (the paper's main setting) the responses are the chosen ones of the preference data,
as prompt/completion rows that SFTTrainer tokenizes and truncates. On-policy the current policy
first answers each batch's prompts (one sample each) and the loss is taken on those responses,
so every optimiser step has its own rollout batch. The DPO model and the base (reverse DPO or
reference) are frozen. Logits are computed from the first position that predicts a response
token on (not over the prompts), and `aligndistil_loss` walks the vocabulary-wide terms in
chunks of positions (`chunk_size`), so its working memory is O(chunk × V).
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from accelerate.utils import is_peft_model
from trl import SFTTrainer
from trl.models import unwrap_model_for_generation
from trl.trainer.utils import use_adapter

from tokalign.bases.dpo.frozen import frozen_forward, prepare_frozen
from tokalign.bases.dpo.metrics import WindowExtrema
from tokalign.losses import aligndistil_loss

IGNORE = -100


def _logits(model, inputs: dict[str, torch.Tensor], keep: int) -> torch.Tensor:
    """(B, keep, V) logits of the last `keep` positions."""
    return model(
        input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], logits_to_keep=keep, use_cache=False
    ).logits


def _pad_right(rows: list[list[int]], value: int) -> torch.Tensor:
    width = max(len(r) for r in rows)
    return torch.tensor([r + [value] * (width - len(r)) for r in rows])


class AlignDistilTrainer(WindowExtrema, SFTTrainer):
    """SFTTrainer whose loss is `tokalign.losses.aligndistil_loss` (Zhang et al., ACL 2025).

    `dpo_model` is π_dpo; `base_model` the reverse-DPO model (variants contrast, aligndistil) or
    the reference (basic, adaptive), None meaning the policy with its LoRA adapters disabled.
    Both are frozen and share the policy's tokenizer and vocabulary. The remaining keywords are
    `aligndistil_loss`'s; `on_policy` samples the responses (`max_new_tokens`, None: up to
    max_length; `sampling_temperature`, top-p 1).
    """

    loss_is_scaled_for_ga = False  # per-response means: the Trainer averages the micro-batches

    def __init__(
        self,
        model,
        *,
        args,
        processing_class,
        dpo_model,
        base_model=None,
        variant: str = "aligndistil",
        beta0: float = 0.1,
        kl_coef: float | None = None,
        tvd_scale: float = 10.0,
        eps: float = 1e-3,
        temperature: float = 1.0,
        length_norm: bool = True,
        chunk_size: int | None = None,
        shift_positions: bool = False,
        on_policy: bool = False,
        max_new_tokens: int | None = None,
        sampling_temperature: float = 1.0,
        **kwargs,
    ):
        sizes = {m.config.vocab_size for m in (model, dpo_model, base_model) if m is not None and hasattr(m, "config")}
        if len(sizes) > 1:
            raise ValueError(
                f"the policy, DPO and base models must share the vocabulary; their output sizes are {sorted(sizes)}"
            )
        self.loss_settings = dict(
            variant=variant,
            beta0=beta0,
            beta=kl_coef,
            tvd_scale=tvd_scale,
            eps=eps,
            temperature=temperature,
            length_norm=length_norm,
            chunk_size=chunk_size,
            shift_positions=shift_positions,
        )
        self.on_policy, self.max_new_tokens, self.sampling_temperature = on_policy, max_new_tokens, sampling_temperature
        super().__init__(model, args=args, processing_class=processing_class, **kwargs)
        if base_model is None and not is_peft_model(self.model):
            raise ValueError(
                "base_model is needed unless the policy is a PEFT model (its adapters disabled are the reference)"
            )
        self.dpo_model = prepare_frozen(self, dpo_model)
        self.base_model = None if base_model is None else prepare_frozen(self, base_model)

    # -- on-policy responses -----------------------------------------------------------------------

    def _rollouts(self, model, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The batch's prompts, each followed by a response sampled from the current policy."""
        tokenizer = self.processing_class
        pad_id, eos_id, device = tokenizer.pad_token_id, tokenizer.eos_token_id, inputs["input_ids"].device
        starts = (inputs["labels"] != IGNORE).int().argmax(1).tolist()  # SFT rows: the prompt is labelled IGNORE
        prompts = [ids[:n].tolist() for ids, n in zip(inputs["input_ids"], starts)]
        width = max(len(p) for p in prompts)
        prompt_ids = torch.tensor([[pad_id] * (width - len(p)) + p for p in prompts], device=device)
        prompt_mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=device)
        budget = self.max_new_tokens or max(1, self.args.max_length - width)
        with unwrap_model_for_generation(
            model, self.accelerator, gradient_checkpointing_kwargs=self.args.gradient_checkpointing_kwargs
        ) as policy:
            training = policy.training
            policy.eval()
            try:
                sampled = policy.generate(
                    input_ids=prompt_ids,
                    attention_mask=prompt_mask,
                    do_sample=True,
                    temperature=self.sampling_temperature,
                    top_p=1.0,
                    top_k=0,
                    max_new_tokens=budget,
                    pad_token_id=pad_id,
                    eos_token_id=eos_id,
                )[:, width:].tolist()
            finally:
                policy.train(training)
        responses = [s[: s.index(eos_id) + 1] if eos_id in s else s for s in sampled]
        rows = [p + r for p, r in zip(prompts, responses)]
        return {
            "input_ids": _pad_right(rows, pad_id).to(device),
            "attention_mask": _pad_right([[1] * len(r) for r in rows], 0).to(device),
            "labels": _pad_right([[IGNORE] * len(p) + r for p, r in zip(prompts, responses)], IGNORE).to(device),
        }

    # -- the loss ----------------------------------------------------------------------------------

    def _base(self):
        if self.base_model is not None:
            return self.base_model, contextlib.nullcontext()
        unwrapped = self.accelerator.unwrap_model(self.model)
        return self.model, use_adapter(unwrapped, adapter_name="ref" if "ref" in unwrapped.peft_config else None)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if self.on_policy and model.training:
            inputs = self._rollouts(model, inputs)
        response = inputs["labels"][:, 1:] != IGNORE  # position j predicts token j + 1
        start = int(response.any(0).nonzero()[0])
        keep = response.size(1) + 1 - start
        mask = F.pad(response[:, start:], (0, 1))  # the last position predicts past the sequence
        student = _logits(model, inputs, keep)
        base, adapter = self._base()
        with frozen_forward(self):
            dpo = _logits(self.dpo_model, inputs, keep)
            with adapter:
                base = _logits(base, inputs, keep)
        loss, metrics = aligndistil_loss(student, dpo, base, mask, **self.loss_settings)
        metrics["aligndistil/response_length"] = mask.sum(1).float().mean()
        self.record_metrics(metrics)
        if return_outputs:
            return loss, {"loss": loss.detach()}
        return loss
