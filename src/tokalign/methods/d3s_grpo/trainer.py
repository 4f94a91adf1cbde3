"""D³S on TRL's GRPOTrainer: dual-level down-sampling after advantages (arXiv 2509.22115).

Per generation batch, on the advantages gathered from all ranks (identical everywhere, no RNG):
1. sample level: keep the max-variance subset (`tokalign.losses.select_samples`); dropped rows
   are removed from every per-sample tensor, so the training forward/backward sees fewer rows.
   PODS (`renormalize`) re-standardises the kept samples' raw rewards, which TRL does not return:
   they are read where TRL computes them (`_calculate_rewards`);
2. token level (K < 1): the top ⌈K·n⌉ tokens by |A|·H (`d3s_token_mask`), with H the
   full-vocabulary entropies of π_θ that the training forward computes anyway: TRL hands them to
   `get_high_entropy_mask` right after that forward, before any use of the loss mask, so the token
   mask costs no extra forward. The number of kept tokens depends only on the valid tokens, so
   `num_items_in_batch` (the token count `dapo`/`cispo`/`vespo` normalise by) is known at
   selection time. Unkept tokens stay in the attention mask. With `token_normalization="kept"`
   the hook narrows TRL's loss mask itself (a fresh tensor per call), so every loss type
   normalises over kept tokens and the KL term is masked too, exactly as if the mask had been
   TRL's `tool_mask`; with `"all"` it only returns the policy-term mask (TRL's top-entropy
   convention: normalisation and KL over all tokens). The first pass over a generation batch
   (π_θ is still the rollout policy) chooses the mask; with `num_iterations > 1` later passes keep it.
"""

from __future__ import annotations

import torch

from tokalign.bases.grpo.trainer import AccountingGRPOTrainer, loss_weights
from tokalign.losses import d3s_schedule, d3s_token_mask, select_samples

# Output keys that are not indexed by sample (scalars, or image tensors indexed by image/tile).
_NOT_PER_SAMPLE = ("num_items_in_batch",)
_MULTIMODAL = ("pixel_values", "image_grid_thw", "num_images", "num_tiles", "image_sizes")
# The batch's token keep ratio K, carried with the rows to the loss (num_iterations > 1 reuses a batch),
# and the token mask its first pass chose, which later passes over the same batch keep.
KEEP_RATIO = "d3s_keep_ratio"
TOKEN_MASK = "d3s_token_mask"


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
        self,
        *args,
        n_init: int,
        n_final: int,
        k_init: float,
        k_final: float,
        schedule: str = "linear",
        sample_scope: str = "group",
        token_scope: str = "batch",
        renormalize: bool = False,
        token_normalization: str = "kept",
        **kwargs,
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
        self.top_entropy_quantile = 0.0  # TRL then passes every training forward's entropies to get_high_entropy_mask
        self._raw_rewards: torch.Tensor | None = None
        self._selection: tuple[dict, float] | None = None

    def current_nk(self) -> tuple[int, float]:
        """(N, K) for the current step: linear in progress, or the initial values when constant."""
        steps = self.state.max_steps
        progress = self.state.global_step / (steps - 1) if self.schedule == "linear" and steps > 1 else 0.0
        return d3s_schedule(progress, group_size=self.num_generations, **self.schedule_args)

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        """TRL's per-function rewards of every rank's completions; their weighted sum is kept for PODS."""
        rewards_per_func = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        weights = self.reward_weights.to(rewards_per_func.device)
        self._raw_rewards = (rewards_per_func * weights.unsqueeze(0)).nansum(dim=1)
        return rewards_per_func

    def down_sample(self, output: dict) -> tuple[dict, torch.Tensor, int]:
        if any(key in output for key in _MULTIMODAL):
            raise ValueError("D³S row selection supports text-only GRPO; this batch carries images or other modalities")
        n, k = self.current_nk()
        self._metrics["train"]["schedule/n"].append(n)
        self._metrics["train"]["schedule/k"].append(k)
        raw_rewards, self._raw_rewards = self._raw_rewards, None
        if self.renormalize and raw_rewards is None:
            raise RuntimeError(
                "PODS re-normalises raw rewards, but TRL did not compute this batch's through _calculate_rewards"
            )
        local = output["advantages"]
        num_rows = local.numel()
        gathered = self.accelerator.gather(local)  # every rank selects on the same pooled advantages
        kept, kept_advantages = select_samples(
            gathered,
            n,
            group_size=self.num_generations,
            scope=self.sample_scope,
            renormalize=self.renormalize,
            rewards=raw_rewards,
        )
        start = self.accelerator.process_index * num_rows
        here = (kept >= start) & (kept < start + num_rows)
        rows, advantages = kept[here] - start, kept_advantages[here]
        placeholder = rows.numel() == 0  # a rank with nothing kept still joins the collective backward
        if placeholder:
            rows, advantages = rows.new_zeros(1), advantages.new_zeros(1)
        output = take_rows(output, rows, num_rows)
        output["advantages"] = advantages
        if placeholder:
            output["tool_mask"] = torch.zeros_like(output["completion_mask"])
        valid = loss_weights(output).bool()
        valid_tokens = int(self.accelerator.reduce(valid.sum(), reduction="sum"))
        trained = valid_tokens
        if k < 1:
            output[KEEP_RATIO] = torch.tensor(k, dtype=torch.float64)  # float32 would round ⌈K·n⌉ up
            trained = self._kept_token_count(valid, k)
        output["num_items_in_batch"] = torch.tensor(
            trained if self.token_normalization == "kept" else valid_tokens, device=local.device
        )
        return output, gathered[kept], trained

    def _kept_token_count(self, valid: torch.Tensor, k: float) -> int:
        """How many tokens the token mask will keep over all ranks: it depends on the valid tokens only
        (⌈K·n⌉ per scope), so `d3s_token_mask` on uniform scores counts it before any entropy exists."""
        if self.token_scope == "batch":
            total = int(self.accelerator.reduce(valid.sum(), reduction="sum"))
            valid = torch.ones(1, total, dtype=torch.bool, device=valid.device)
        ones = torch.ones(valid.shape, device=valid.device)
        kept = d3s_token_mask(ones.new_ones(valid.size(0)), ones, valid, k, scope=self.token_scope)
        if self.token_scope == "batch":
            return int(kept.sum())
        return int(self.accelerator.reduce(kept.sum(), reduction="sum"))

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
        keep_ratio = inputs.get(KEEP_RATIO)
        if keep_ratio is not None:
            self._selection = (inputs, float(keep_ratio))  # the batch TRL keeps for every pass over it
            # TRL's loss mask is this tensor when there is no tool_mask: the hook narrows a copy, not the batch
            inputs = {**inputs, "completion_mask": inputs["completion_mask"].clone()}
        try:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        finally:
            self._selection = None

    def get_high_entropy_mask(self, entropies: torch.Tensor, mask: torch.Tensor, threshold: float) -> torch.Tensor:
        """The D³S token mask from the training forward's entropies, in place of TRL's top-entropy mask.

        With `token_normalization="kept"` TRL's loss mask `mask` is narrowed in place to the kept
        tokens; TRL uses it for the ratios, the loss, its normalisation, the KL term and the metrics
        only after this call. Without a selection (K = 1, evaluation) everything is kept. The mask
        is stored in the batch, so that later passes over it (num_iterations > 1) train the same tokens.
        """
        if self._selection is None:
            return mask.bool()
        batch, k = self._selection
        keep = batch.get(TOKEN_MASK)
        if keep is None:
            keep = batch[TOKEN_MASK] = self._token_mask(batch["advantages"], entropies.detach(), mask.bool(), k)
        if self.token_normalization == "kept":
            mask.mul_(keep.to(mask.dtype))
        return keep
