"""Logging of per-step metrics whose window summary is an extreme, not TRL's mean, for TRL trainers
whose `compute_loss` is the method's own."""

from __future__ import annotations

import torch


def _extreme(key: str):
    """min for metrics named `.../min` or `..._min`, max for `max`, None for the rest (window means)."""
    last = key.rsplit("/", 1)[-1].rsplit("_", 1)[-1]
    return {"min": min, "max": max}.get(last)


class WindowExtrema:
    """Mixin for TRL trainers (their `_metrics[mode][key]` lists) with their own loss: gathers a step's
    metrics over processes, logs `*min` / `*max` metrics as the logging window's minimum / maximum,
    and evaluates with that loss alone."""

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad(), self.compute_loss_context_manager():
            loss = self.compute_loss(model, inputs)
        return loss.detach(), None, None

    def record_metrics(self, metrics: dict[str, torch.Tensor]) -> None:
        mode = "train" if self.model.training else "eval"
        for key, value in metrics.items():
            gathered = self.accelerator.gather_for_metrics(value.detach().reshape(1).float())
            reduce = _extreme(key)
            self._metrics[mode][key].append(
                (gathered.min() if reduce is min else gathered.max() if reduce is max else gathered.mean()).item()
            )

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        mode = "train" if self.model.training else "eval"
        prefix = "eval_" if mode == "eval" else ""
        for key in [k for k in self._metrics[mode] if _extreme(k)]:
            values = self._metrics[mode].pop(key)
            if values:
                logs[prefix + key] = _extreme(key)(values)
        super().log(logs, start_time)
