"""TGDPO on TRL's DPOTrainer: per-token policy, reference and guidance log-probs into `tgdpo_loss`.

The policy forward is TRL's (fused LM head, chosen and rejected in one batch). Reference and
guidance are frozen and the data offline, so with `precompute_ref_log_probs=True` their
per-token log-probs are computed once per dataset, cached on disk, and a training step runs
only the policy. Without it they are computed online, from the same collated batch; both paths
place the values on the positions of `completion_mask[:, 1:]`, so they give the same loss.

Hooks overridden: `compute_loss`, `prediction_step`, `log` (public Trainer API) and
`_precompute_ref_logps`, `_set_signature_columns_if_needed` (private; pinned by
tests/methods/tgdpo/test_trl_hooks.py).
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from accelerate.utils import is_peft_model
from datasets import Dataset, concatenate_datasets
from datasets.fingerprint import Hasher
from torch.utils.data import DataLoader
from trl import DPOTrainer
from trl.models import prepare_deepspeed
from trl.models.utils import disable_gradient_checkpointing
from trl.trainer.dpo_trainer import DataCollatorForPreference
from trl.trainer.utils import add_fused_lm_head, hash_module, use_adapter

from tokalign.files import atomic_dir
from tokalign.losses import tgdpo_loss

FROZEN = ("ref", "guidance")  # per-token sources that never train
TOKEN_COLUMNS = tuple(f"{src}_{side}_token_logps" for src in FROZEN for side in ("chosen", "rejected"))
CACHE_FORMAT = 1


@dataclass
class DataCollatorForTokenPreference(DataCollatorForPreference):
    """TRL's preference collator, plus precomputed per-token log-probs as `<src>_token_logps`.

    Each example stores one value per completion position it keeps after truncation; they are
    scattered onto `completion_mask[:, 1:]` (chosen rows, then rejected rows), the positions
    where the policy's shifted per-token log-probs live. Padding therefore cannot move them.
    """

    def torch_call(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        out = super().torch_call(examples)
        if f"{FROZEN[0]}_chosen_token_logps" not in examples[0]:
            return out
        mask = out["completion_mask"][:, 1:].bool()
        counts = mask.sum(1).tolist()
        for src in FROZEN:
            rows = [e[f"{src}_chosen_token_logps"] for e in examples] + [e[f"{src}_rejected_token_logps"] for e in examples]
            if [len(r) for r in rows] != counts:
                raise ValueError(
                    f"precomputed {src} log-probs do not line up with the completion tokens "
                    f"({[len(r) for r in rows]} values for {counts} positions): the tokenizer, max_length or "
                    "truncation_mode changed since they were computed"
                )
            values = torch.tensor([v for r in rows for v in r], dtype=torch.float32)
            out[f"{src}_token_logps"] = torch.zeros(mask.shape, dtype=torch.float32).masked_scatter(mask, values)
        return out


def token_logps(model, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """(2B, T-1) log-probs of each completion token (0 elsewhere), from a model with TRL's fused LM head."""
    labels = inputs["input_ids"].masked_fill(inputs["completion_mask"] == 0, -100)
    out = model(
        input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], labels=labels,
        use_cache=False, fused_lm_head=True,
    )
    # Prompt-learning PEFT prepends virtual tokens; keep the positions of the real ones.
    return out.log_probs[:, -(labels.size(1) - 1):]


class TGDPOTrainer(DPOTrainer):
    """DPOTrainer whose loss is `tokalign.losses.tgdpo_loss` (Zhu et al., ICML 2025).

    `guidance_model` is a frozen causal LM sharing the policy's tokenizer (a DPO checkpoint);
    `token_cache_dir`, when set, keeps precomputed per-token log-probs between runs, keyed by
    the reference and guidance weights, the tokenized data, truncation and precision.
    """

    def __init__(
        self, model, ref_model=None, *, args, processing_class, guidance_model, alpha: float,
        guidance_beta: float | None = None, f_min: float | None = None,
        token_cache_dir: str | os.PathLike | None = None, **kwargs,
    ):
        kwargs.setdefault("data_collator", DataCollatorForTokenPreference(
            pad_token_id=processing_class.pad_token_id, max_length=args.max_length,
            truncation_mode=args.truncation_mode, pad_to_multiple_of=args.pad_to_multiple_of,
        ))
        guidance_model.eval().requires_grad_(False)
        add_fused_lm_head(guidance_model)
        self.guidance_model = guidance_model
        self._guidance_hash = hash_module(guidance_model) if args.precompute_ref_log_probs else None
        self.alpha, self.guidance_beta, self.f_min = alpha, guidance_beta, f_min
        self.token_cache_dir = Path(token_cache_dir).expanduser() if token_cache_dir else None
        super().__init__(model, ref_model, args=args, processing_class=processing_class, **kwargs)
        if self.precompute_ref_logps:
            self.guidance_model = None  # everything it had to say is in the dataset now
        elif self.is_deepspeed_enabled:
            self.guidance_model = prepare_deepspeed(guidance_model, self.accelerator)
        else:
            self.guidance_model = self.accelerator.prepare_model(guidance_model, evaluation_mode=True)

    # -- per-token log-probs of the frozen models --------------------------------------------------

    def _frozen_token_logps(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Reference and guidance log-probs for one collated batch, without gradient."""
        ref_model, adapter = self.ref_model, contextlib.nullcontext()
        if ref_model is None:  # before training (precompute) the policy is the reference
            ref_model = self.model
            if is_peft_model(self.model):
                unwrapped = self.accelerator.unwrap_model(self.model)
                adapter = use_adapter(unwrapped, adapter_name="ref" if "ref" in unwrapped.peft_config else None)
        with (
            torch.no_grad(),
            disable_gradient_checkpointing(self.model, self.args.gradient_checkpointing_kwargs),
            self.accelerator.autocast(),
        ):
            with adapter:
                ref = token_logps(ref_model, inputs)
            guidance = token_logps(self.guidance_model, inputs)
        return {"ref": ref.float(), "guidance": guidance.float()}

    def _token_cache_key(self, dataset: Dataset) -> str:
        """Content, not `_fingerprint`: a dataset rebuilt in another process often gets a random one."""
        ids = [dataset[column][:] for column in ("prompt_ids", "chosen_ids", "rejected_ids")]
        return Hasher.hash({
            "format": CACHE_FORMAT,
            "ref": self._precompute_model_hash,  # weights and dtypes (hash_module)
            "guidance": self._guidance_hash,
            "data": Hasher.hash(ids),
            "max_length": self.args.max_length,
            "truncation_mode": self.args.truncation_mode,
            "autocast": (self.args.bf16, self.args.fp16),
        })

    def _compute_token_columns(self, dataset: Dataset, batch_size: int) -> dict[str, list[list[float]]]:
        self.guidance_model.to(self.accelerator.device)
        loader = DataLoader(dataset, batch_size=batch_size, collate_fn=self.data_collator, shuffle=False)
        columns: dict[str, list[list[float]]] = {c: [] for c in TOKEN_COLUMNS}
        for batch in loader:
            batch = {k: v.to(self.accelerator.device) for k, v in batch.items()}
            mask = batch["completion_mask"][:, 1:].bool()
            n = mask.size(0) // 2
            for src, values in self._frozen_token_logps(batch).items():
                rows = [row[m].tolist() for row, m in zip(values.cpu(), mask.cpu())]
                columns[f"{src}_chosen_token_logps"] += rows[:n]
                columns[f"{src}_rejected_token_logps"] += rows[n:]
        return columns

    def _precompute_ref_logps(self, dataset: Dataset, name: str, batch_size: int) -> Dataset:
        """Per-token reference and guidance log-probs as dataset columns (TRL stores sequence sums)."""
        if self.guidance_model is None:
            raise ValueError(
                "the guidance model was released after precomputing the training data; pass every dataset "
                "at construction, or use precompute_ref_log_probs=False"
            )
        if self.is_deepspeed_enabled and self.accelerator.state.deepspeed_plugin.zero_stage == 3:
            raise ValueError(
                "precomputed per-token log-probs are computed by the main process alone, which ZeRO-3's sharded "
                "weights do not allow; use precompute_ref_log_probs=False (method.precompute=false) under ZeRO-3"
            )
        if self.token_cache_dir is None:
            return concatenate_datasets([dataset, Dataset.from_dict(self._compute_token_columns(dataset, batch_size))], axis=1)
        path = self.token_cache_dir / self._token_cache_key(dataset)
        with self.accelerator.main_process_first():
            if not (path / "dataset_info.json").exists():
                columns = self._compute_token_columns(dataset, batch_size)
                atomic_dir(path, lambda tmp: Dataset.from_dict(columns).save_to_disk(str(tmp)), replace=False)
        return concatenate_datasets([dataset, Dataset.load_from_disk(str(path))], axis=1)

    def _set_signature_columns_if_needed(self):
        super()._set_signature_columns_if_needed()
        self._signature_columns = [*self._signature_columns, *TOKEN_COLUMNS]

    # -- the loss -----------------------------------------------------------------------------------

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        mode = "train" if self.model.training else "eval"
        mask = inputs["completion_mask"][:, 1:]
        policy = token_logps(model, inputs).float()
        if "ref_token_logps" in inputs:
            frozen = {src: inputs[f"{src}_token_logps"] for src in FROZEN}
        else:
            frozen = self._frozen_token_logps(inputs)
        chosen_mask, rejected_mask = mask.chunk(2)
        policy_chosen, policy_rejected = policy.chunk(2)
        loss, metrics = tgdpo_loss(
            policy_chosen, policy_rejected, *frozen["ref"].float().chunk(2),
            *frozen["guidance"].float().chunk(2), chosen_mask, rejected_mask,
            beta=self.beta, alpha=self.alpha, guidance_beta=self.guidance_beta, f_min=self.f_min,
        )
        metrics["logps/chosen"] = (policy_chosen * chosen_mask).sum(-1).mean().detach()
        metrics["logps/rejected"] = (policy_rejected * rejected_mask).sum(-1).mean().detach()
        for key, value in metrics.items():
            gathered = self.accelerator.gather_for_metrics(value.reshape(1).float())
            self._metrics[mode][key].append((gathered.min() if key == "f/min" else gathered.mean()).item())
        if return_outputs:
            return loss, {"loss": loss.detach()}
        return loss

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad(), self.compute_loss_context_manager():
            loss = self.compute_loss(model, inputs)
        return loss.detach(), None, None

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """As DPOTrainer.log (window means), except that f/min is the window's minimum."""
        mode = "train" if self.model.training else "eval"
        f_min = self._metrics[mode].pop("f/min", None)
        if f_min:
            logs[("eval_" if mode == "eval" else "") + "f/min"] = min(f_min)
        super().log(logs, start_time)
