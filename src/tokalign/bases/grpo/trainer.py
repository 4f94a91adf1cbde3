"""TRL's GRPOTrainer with a row/token selection hook and the usage accounting GRPO-family runs share.

`down_sample` runs once per generation batch, after TRL has scored the rollouts and computed
advantages; the base trainer keeps everything (plain GRPO). With `rollout.engine=vllm` the batch
carries TRL's vLLM tensors too (sampling log-probs, importance ratios), one row per sample like
the rest. Usage is counted on all ranks:
kept samples, loss-weighted ("trained") tokens, tokens run through the training forward, and
sample usefulness (share of kept samples with a non-zero advantage). A reward that is not finite
(NaN, or None, which TRL would silently skip) stops the run as a diverged PPO rollout does.
"""

from __future__ import annotations

import torch
from trl import GRPOTrainer

from tokalign.errors import DivergenceError


def loss_weights(output: dict) -> torch.Tensor:
    """(B, T) 0/1 weights TRL's loss applies: the completion mask times the tool mask, if any."""
    mask = output["completion_mask"]
    return mask if "tool_mask" not in output else mask * output["tool_mask"]


class AccountingGRPOTrainer(GRPOTrainer):
    """GRPOTrainer that trains on `down_sample`'s rows and tokens and logs what it trained on."""

    def __init__(self, *args, accuracy_reward: str | None = None, **kwargs):
        """`accuracy_reward`: the name of a reward function in {0, 1} whose mean is logged as `accuracy`."""
        super().__init__(*args, **kwargs)
        self.trained_tokens = 0
        self.forward_tokens = 0
        self.trained_samples = 0
        self.accuracy_reward = accuracy_reward

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        rewards_per_func = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        bad = (~torch.isfinite(rewards_per_func)).nonzero()
        if len(bad):  # gathered: every rank sees the same rows and stops together
            row, func = bad[0].tolist()
            raise DivergenceError(
                f"reward {self.reward_func_names[func]} is {rewards_per_func[row, func].item()} for completion {row} of "
                f"step {self.state.global_step + 1}; a GRPO run does not train on a non-finite reward, and nothing "
                "was saved from this step. Check the reward function; resume=auto continues the last good checkpoint"
            )
        return rewards_per_func

    def _generate_and_score_completions(self, inputs):
        output = super()._generate_and_score_completions(inputs)
        if not self.model.training:
            return output
        output, kept_advantages, trained = self.down_sample(output)
        self._account(output, kept_advantages, trained)
        return output

    def down_sample(self, output: dict) -> tuple[dict, torch.Tensor, int]:
        """The rows and token weights to train on, the kept samples' advantages and the loss-weighted
        token count, both over all ranks."""
        return output, self.accelerator.gather(output["advantages"]), int(output["num_items_in_batch"])

    def _account(self, output: dict, kept_advantages: torch.Tensor, trained: int) -> None:
        forward = int(self.accelerator.reduce(output["completion_mask"].sum().float(), reduction="sum"))
        passes = self.num_iterations  # each generation batch is optimised num_iterations times
        self.trained_tokens += trained * passes
        self.forward_tokens += forward * passes
        self.trained_samples += kept_advantages.numel() * passes
        metrics = self._metrics["train"]
        metrics["usage/kept_samples"].append(kept_advantages.numel())
        metrics["usage/kept_tokens"].append(trained)
        metrics["usage/forward_tokens"].append(forward)
        metrics["usage/sample_usefulness"].append((kept_advantages != 0).float().mean().item())
        if self.accuracy_reward is not None:
            metrics["accuracy"].append(metrics[f"rewards/{self.accuracy_reward}/mean"][-1])

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if self.model.training:
            logs["usage/trained_tokens_total"] = self.trained_tokens
            logs["usage/forward_tokens_total"] = self.forward_tokens
        super().log(logs, start_time)

    def usage_summary(self, last: int = 5) -> dict[str, float]:
        """Tokens and samples trained on, and the mean completion length over the last `last` logged rows
        (late-training length is how the family's conciseness claims are compared)."""
        lengths = [row["completions/mean_length"] for row in self.state.log_history if "completions/mean_length" in row]
        return {
            "train/trained_tokens_total": self.trained_tokens,
            "train/forward_tokens_total": self.forward_tokens,
            "train/trained_samples_total": self.trained_samples,
        } | ({"train/completion_length": sum(lengths[-last:]) / len(lengths[-last:])} if lengths else {})
