"""D³S on TRL's GRPOTrainer: dual-level down-sampling after advantages (arXiv 2509.22115).

Per generation batch, on the advantages gathered from all ranks (identical everywhere, no RNG):
1. sample level: keep the max-variance subset (`tokalign.losses.select_samples`); dropped rows
   are removed from every per-sample tensor, so the training forward/backward sees fewer rows;
2. token level (K < 1): a no-grad forward of π_θ over the kept rows gives full-vocabulary
   entropies H; the top ⌈K·n⌉ tokens by |A|·H (`d3s_token_mask`) keep their loss weight. Unkept
   tokens stay in the attention mask. With `token_normalization="kept"` the mask becomes TRL's
   loss mask (`tool_mask`), so every loss type normalises over kept tokens and the KL term is
   masked too; with `"all"` it goes through TRL's top-entropy hook (`get_high_entropy_mask`):
   the policy term is masked, normalisation and KL stay over all tokens, as TRL does.
`num_items_in_batch` (the token count `dapo`/`cispo` normalise by) is recomputed on the kept set.
"""

from __future__ import annotations

import torch
from trl.models.utils import disable_gradient_checkpointing

from tokalign.losses import d3s_schedule, d3s_token_mask, select_samples
from tokalign.methods.grpo.trainer import AccountingGRPOTrainer, loss_weights

# Output keys that are not indexed by sample (scalars, or image tensors indexed by image/tile).
_NOT_PER_SAMPLE = ("num_items_in_batch",)
_MULTIMODAL = ("pixel_values", "image_grid_thw", "num_images", "num_tiles", "image_sizes")


def take_rows(output: dict, rows: torch.Tensor, num_rows: int) -> dict:
    """Every per-sample tensor or list of a TRL generation output, restricted to `rows`."""
    picked = {}
    for key, value in output.items():
        if key in _NOT_PER_SAMPLE or value is None or (isinstance(value, torch.Tensor) and value.ndim == 0):
            picked[key] = value
        elif isinstance(value, torch.Tensor) and value.size(0) == num_rows:
            picked[key] = value[rows]
        elif isinstance(value, list) and len(value) == num_rows:
            picked[key] = [value[i] for i in rows.tolist()]
        else:
            raise ValueError(f"cannot select rows of generation output {key!r} (shape {getattr(value, 'shape', None)})")
    return picked


class D3SGRPOTrainer(AccountingGRPOTrainer):
    """GRPOTrainer that trains on the D³S-selected samples and tokens (and PODS with renormalize)."""

    def __init__(
        self, *args, n_init: int, n_final: int, k_init: float, k_final: float, schedule: str = "linear",
        sample_scope: str = "group", token_scope: str = "batch", renormalize: bool = False,
        token_normalization: str = "kept", **kwargs,
    ):
        super().__init__(*args, **kwargs)
        if schedule not in ("linear", "constant"):
            raise ValueError(f"schedule must be linear or constant, got {schedule!r}")
        if token_normalization not in ("kept", "all"):
            raise ValueError(f"token_normalization must be kept or all, got {token_normalization!r}")
        if self.args.steps_per_generation != 1:
            raise ValueError("D³S selects per generation batch: steps_per_generation must be 1")
        self.schedule_args = dict(n_init=n_init, n_final=n_final, k_init=k_init, k_final=k_final)
        self.schedule, self.sample_scope, self.token_scope = schedule, sample_scope, token_scope
        self.renormalize, self.token_normalization = renormalize, token_normalization
        self._token_weights = None
        if token_normalization == "all":
            self.top_entropy_quantile = 0.0  # routes TRL's loss through get_high_entropy_mask below

    def current_nk(self) -> tuple[int, float]:
        """(N, K) for the current step: linear in progress, or the initial values when constant."""
        steps = self.state.max_steps
        progress = self.state.global_step / (steps - 1) if self.schedule == "linear" and steps > 1 else 0.0
        return d3s_schedule(progress, group_size=self.num_generations, **self.schedule_args)

    def down_sample(self, output: dict) -> tuple[dict, torch.Tensor]:
        if any(key in output for key in _MULTIMODAL):
            raise ValueError("D³S row selection supports text-only GRPO; this batch carries images or other modalities")
        n, k = self.current_nk()
        self._metrics["train"]["schedule/n"].append(n)
        self._metrics["train"]["schedule/k"].append(k)
        local = output["advantages"]
        num_rows = local.numel()
        gathered = self.accelerator.gather(local)  # every rank selects on the same pooled advantages
        kept, kept_advantages = select_samples(
            gathered, n, group_size=self.num_generations, scope=self.sample_scope, renormalize=self.renormalize
        )
        start = self.accelerator.process_index * num_rows
        here = (kept >= start) & (kept < start + num_rows)
        rows, advantages = kept[here] - start, kept_advantages[here]
        placeholder = rows.numel() == 0  # a rank with nothing kept still joins the collective backward
        if placeholder:
            rows, advantages = rows.new_zeros(1), advantages.new_zeros(1)
        output = take_rows(output, rows, num_rows)
        output["advantages"] = advantages
        weights = loss_weights(output).bool()
        if k < 1:
            weights = self._token_mask(advantages, self._entropies(output), weights, k)
        if placeholder:
            weights = torch.zeros_like(weights)
        if k < 1 or placeholder:
            if self.token_normalization == "kept":
                output["tool_mask"] = weights.to(output["completion_mask"].dtype)
            else:
                output["d3s_token_mask"] = weights
        output["num_items_in_batch"] = self.accelerator.gather(loss_weights(output).sum()).sum()
        return output, gathered[kept]

    def _entropies(self, output: dict) -> torch.Tensor:
        """Full-vocabulary entropies of π_θ at the kept rows' completion tokens (no grad)."""
        input_ids = torch.cat([output["prompt_ids"], output["completion_ids"]], dim=1)
        attention_mask = torch.cat([output["prompt_mask"], output["completion_mask"]], dim=1)
        with torch.no_grad(), disable_gradient_checkpointing(self.model, self.args.gradient_checkpointing_kwargs):
            _, entropies, _ = self._get_per_token_logps_and_entropies(
                self.model, input_ids, attention_mask, output["completion_ids"].size(1),
                batch_size=self.args.per_device_train_batch_size, compute_entropy=True,
                token_type_ids=output.get("token_type_ids"), mm_token_type_ids=output.get("mm_token_type_ids"),
            )
        return entropies

    def _token_mask(self, advantages, entropies, valid, k) -> torch.Tensor:
        """The D³S token mask; batch scope pools the kept tokens of all ranks."""
        acc = self.accelerator
        if self.token_scope != "batch" or acc.num_processes == 1:
            return d3s_token_mask(advantages, entropies, valid, k, scope=self.token_scope)

        def pooled(x, pad):  # pad to the largest rank's rows and length, then gather
            if x.dim() == 2:
                x = acc.pad_across_processes(x, dim=1, pad_index=pad)
            return acc.gather(acc.pad_across_processes(x, dim=0, pad_index=pad))

        rows, length = valid.shape
        all_valid = pooled(valid.long(), 0).bool()
        mask = d3s_token_mask(pooled(advantages, 0), pooled(entropies, 0), all_valid, k, scope="batch")
        start = acc.process_index * (all_valid.size(0) // acc.num_processes)
        return mask[start : start + rows, :length]

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        self._token_weights = inputs.get("d3s_token_mask")
        return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)

    def get_high_entropy_mask(self, entropies: torch.Tensor, mask: torch.Tensor, threshold: float) -> torch.Tensor:
        """With token_normalization="all": the D³S token mask in place of TRL's top-entropy mask."""
        return mask.bool() if self._token_weights is None else self._token_weights
