"""Token-level DPO variants on TRL's DPOTrainer: the loss reads per-token values of frozen models.

TGDPO (a guidance model's log-probs) and T-REG (self-generated token rewards) add, beside the
reference's log-probs, per-token values from frozen models. The data is offline and those models
frozen, so with `precompute_ref_log_probs=True` the values are computed once per dataset (every
process computing a share, `precompute.compute_sharded`; under ZeRO-3 with sharded weights),
cached on disk by content, and a step runs only the policy. Without it they are computed from
each collated batch. Both paths place the values on the positions of `completion_mask[:, 1:]`,
so they give the same loss. A subclass names its `sources` and implements `frozen_token_values`
(values of one collated batch) and `token_loss`.

Hooks overridden: `compute_loss`, `prediction_step`, `log` (public Trainer API) and
`_precompute_ref_logps`, `_set_signature_columns_if_needed` (private; pinned by
tests/bases/dpo/test_trl_hooks.py).
"""

from __future__ import annotations

import contextlib
import os
from abc import ABCMeta, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from accelerate.utils import is_peft_model
from datasets import Dataset, concatenate_datasets
from datasets.fingerprint import Hasher
from trl import DPOTrainer
from trl.models import prepare_deepspeed
from trl.trainer.dpo_trainer import DataCollatorForPreference
from trl.trainer.utils import add_fused_lm_head, use_adapter

from tokalign.artifacts.tracking import stage
from tokalign.bases.dpo.frozen import frozen_forward, prepare_frozen, token_logps
from tokalign.bases.dpo.metrics import WindowExtrema
from tokalign.bases.dpo.precompute import cached_columns, compute_sharded, weights_hash

CACHE_FORMAT = 2
SIDES = ("chosen", "rejected")


def column(source: str, side: str) -> str:
    """The dataset column holding `source`'s per-token values of one side's completion."""
    return f"{source}_{side}_per_token"


def batch_key(source: str) -> str:
    """The collated (2B, T-1) tensor of `source`'s values: chosen rows, then rejected rows."""
    return f"{source}_per_token"


@dataclass
class DataCollatorForTokenPreference(DataCollatorForPreference):
    """TRL's preference collator, plus precomputed per-token values as `<source>_per_token`.

    Each example stores one value per completion position it keeps after truncation; they are
    scattered onto `completion_mask[:, 1:]` (chosen rows, then rejected rows), the positions
    where the policy's shifted per-token log-probs live. Padding therefore cannot move them.
    """

    sources: tuple[str, ...] = ()

    def precomputed(self, examples: list[dict[str, Any]]) -> bool:
        return bool(self.sources) and column(self.sources[0], "chosen") in examples[0]

    def torch_call(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        out = super().torch_call(examples)
        if not self.precomputed(examples):
            return out
        mask = out["completion_mask"][:, 1:].bool()
        counts = mask.sum(1).tolist()
        for src in self.sources:
            rows = [e[column(src, side)] for side in SIDES for e in examples]
            if [len(r) for r in rows] != counts:
                raise ValueError(
                    f"precomputed {src} values do not line up with the completion tokens "
                    f"({[len(r) for r in rows]} values for {counts} positions): the tokenizer, max_length or "
                    "truncation_mode changed since they were computed"
                )
            values = torch.tensor([v for r in rows for v in r], dtype=torch.float32)
            out[batch_key(src)] = torch.zeros(mask.shape, dtype=torch.float32).masked_scatter(mask, values)
        return out


class TokenDPOTrainer(WindowExtrema, DPOTrainer, metaclass=ABCMeta):
    """DPOTrainer whose loss reads per-token values of frozen models (see the module docstring).

    `frozen_models` are extra frozen causal LMs sharing the policy's tokenizer (the reference is
    TRL's `ref_model`, or the policy before training); `token_cache_dir`, when set, keeps the
    precomputed values between runs, keyed by the weights of every frozen model, the tokenized
    data (`input_columns`), truncation and precision.
    """

    sources: tuple[str, ...] = ("ref",)
    input_columns: tuple[str, ...] = ("prompt_ids", "chosen_ids", "rejected_ids")

    def __init__(
        self,
        model,
        ref_model=None,
        *,
        args,
        processing_class,
        frozen_models: dict | None = None,
        token_cache_dir: str | os.PathLike | None = None,
        **kwargs,
    ):
        kwargs.setdefault("data_collator", self.make_collator(processing_class, args))
        self.frozen_models = dict(frozen_models or {})
        for frozen in self.frozen_models.values():
            frozen.eval().requires_grad_(False)
            add_fused_lm_head(frozen)
        self.token_cache_dir = Path(token_cache_dir).expanduser() if token_cache_dir else None
        self._prepared: dict[str, torch.nn.Module] = {}
        self._weights: dict[str, str] | None = None
        self._precomputing = self._released = False
        super().__init__(model, ref_model, args=args, processing_class=processing_class, **kwargs)
        if self.precompute_ref_logps:  # everything they had to say is in the dataset now
            self.frozen_models, self._prepared, self._released = {}, {}, True

    def make_collator(self, processing_class, args) -> DataCollatorForTokenPreference:
        return DataCollatorForTokenPreference(
            pad_token_id=processing_class.pad_token_id,
            max_length=args.max_length,
            truncation_mode=args.truncation_mode,
            pad_to_multiple_of=args.pad_to_multiple_of,
            sources=self.sources,
        )

    # -- what a variant defines --------------------------------------------------------------------

    @abstractmethod
    def frozen_token_values(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """{source: (2B, T-1) values on the positions of completion_mask[:, 1:]} for one collated batch."""

    @abstractmethod
    def token_loss(self, policy: torch.Tensor, values: dict[str, torch.Tensor], mask: torch.Tensor):
        """(loss, metrics) from the policy's (2B, T-1) log-probs, the frozen values and the completion mask."""

    # -- frozen forwards ---------------------------------------------------------------------------

    def reference_logps(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """Per-token log-probs of the reference: TRL's ref model, or the policy before training
        (during the precompute; under LoRA, the policy with its adapters disabled)."""
        model, adapter = self.ref_model, contextlib.nullcontext()
        if model is None:
            model = self.model
            if self._precomputing and self.is_deepspeed_enabled:
                # Before `train` prepares the policy: an inference engine places (ZeRO-3: shards) it.
                if self._precompute_engine is None:
                    self._precompute_engine = prepare_deepspeed(self.model, self.accelerator)
                model = self._precompute_engine
            if is_peft_model(self.model):
                unwrapped = self.accelerator.unwrap_model(self.model)
                adapter = use_adapter(unwrapped, adapter_name="ref" if "ref" in unwrapped.peft_config else None)
        with frozen_forward(self), adapter:
            return token_logps(model, inputs).float()

    def frozen_logps(self, name: str, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """Per-token log-probs of the frozen model `name`."""
        if name not in self._prepared:
            self._prepared[name] = prepare_frozen(self, self.frozen_models[name])
        with frozen_forward(self):
            return token_logps(self._prepared[name], inputs).float()

    # -- precompute --------------------------------------------------------------------------------

    def _token_cache_key(self, dataset: Dataset) -> str:
        """Content, not `_fingerprint`: a dataset rebuilt in another process often gets a random one."""
        if self._weights is None:
            reference = self.accelerator.unwrap_model(self.ref_model) if self.ref_model is not None else self.model
            self._weights = {
                "ref": weights_hash(reference),
                **{name: weights_hash(m) for name, m in sorted(self.frozen_models.items())},
            }
        return Hasher.hash(
            {
                "format": CACHE_FORMAT,
                "sources": self.sources,
                "weights": self._weights,
                "data": Hasher.hash([dataset[c][:] for c in self.input_columns]),
                "max_length": self.args.max_length,
                "truncation_mode": self.args.truncation_mode,
                "autocast": (self.args.bf16, self.args.fp16),
                # DeepSpeed runs half-precision weights, not autocast: other numbers
                "deepspeed_half": self.is_deepspeed_enabled and (self.args.bf16 or self.args.fp16),
            }
        )

    def _compute_token_columns(self, dataset: Dataset, batch_size: int):
        def values(rows):
            batch = self.data_collator([dataset[i] for i in rows])
            batch = {k: v.to(self.accelerator.device) for k, v in batch.items()}
            mask = batch["completion_mask"][:, 1:].bool()
            out = {}
            for src, tensor in self.frozen_token_values(batch).items():
                per_row = [row[m].float().cpu() for row, m in zip(tensor, mask)]
                out[column(src, "chosen")], out[column(src, "rejected")] = per_row[: len(rows)], per_row[len(rows) :]
            return out

        chunks = [range(s, min(s + batch_size, len(dataset))) for s in range(0, len(dataset), batch_size)]
        zero3 = self.is_deepspeed_enabled and self.accelerator.state.deepspeed_plugin.zero_stage == 3
        self._precomputing = True
        try:
            with stage(
                f"precomputing per-token values ({', '.join(self.sources)}) of {len(dataset)} pairs, once "
                "(cached for later runs)"
            ):
                return compute_sharded(chunks, values, lockstep=zero3, desc="per-token log-probs")
        finally:
            self._precomputing = False

    def _precompute_ref_logps(self, dataset: Dataset, name: str, batch_size: int) -> Dataset:
        """Per-token values of the frozen models as dataset columns (TRL stores sequence sums)."""
        if self._released:
            raise ValueError(
                "the frozen models were released after precomputing the training data; pass every "
                "dataset at construction, or use precompute_ref_log_probs=False"
            )
        path = self.token_cache_dir / self._token_cache_key(dataset) if self.token_cache_dir else None
        values = cached_columns(path, lambda: self._compute_token_columns(dataset, batch_size))
        return concatenate_datasets([dataset, values], axis=1)

    def _set_signature_columns_if_needed(self):
        super()._set_signature_columns_if_needed()
        extra = [c for c in self.input_columns if c not in self._signature_columns]
        self._signature_columns = [
            *self._signature_columns,
            *extra,
            *(column(s, side) for s in self.sources for side in SIDES),
        ]

    # -- the loss ----------------------------------------------------------------------------------

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        mask = inputs["completion_mask"][:, 1:]
        policy = token_logps(model, inputs).float()
        if batch_key(self.sources[0]) in inputs:
            values = {src: inputs[batch_key(src)].float() for src in self.sources}
        else:
            values = self.frozen_token_values(inputs)
        loss, metrics = self.token_loss(policy, values, mask)
        for side, logps, side_mask in zip(SIDES, policy.chunk(2), mask.chunk(2)):
            metrics[f"logps/{side}"] = (logps * side_mask).sum(-1).mean()
        self.record_metrics(metrics)
        if return_outputs:
            return loss, {"loss": loss.detach()}
        return loss


def train_token_dpo(run, trainer_cls: type, method_kwargs) -> dict:
    """Build a token-level DPO variant's trainer from the run and train it.

    `method_kwargs()` gives the variant's own arguments; it is called after the training arguments
    exist, so that under ZeRO-3 the frozen models it loads are loaded sharded.
    """
    from trl import DPOConfig

    from tokalign.bases.trl import peft_config, run_trainer, trl_args

    m = run.cfg.method
    args = DPOConfig(**trl_args(run, beta=m.beta, precompute_ref_log_probs=m.precompute))
    trainer = trainer_cls(
        model=run.load_policy(),
        ref_model=None if run.cfg.model.lora.enabled or m.precompute else run.load_policy(),
        args=args,
        train_dataset=run.train_data,
        processing_class=run.tokenizer,
        peft_config=peft_config(run),
        token_cache_dir=Path(run.cfg.cache_dir).expanduser() / "token_logps",
        **method_kwargs(),
    )
    return run_trainer(run, trainer)
