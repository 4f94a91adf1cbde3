"""RLTF on TRL's GRPOTrainer: two-turn rollouts, multi-turn GRPO, and the SD and FM terms.

Per generation batch: TRL generates and scores the first turn; the critic reads each attempt;
TRL generates and scores the second turn from the revision prompts (every row generates, so
TRL's groups keep their shape; rows whose attempt was right are then dropped). Advantages come
from `rltf_turn_advantages` on every rank's rewards. The training batch holds the first-turn rows
and the second-turn rows that exist; TRL's own loss trains them. The SD rows (first-turn prompt,
revision) and FM rows (feedback prompt, critique) stay beside the batch (steps_per_generation = 1,
one update per batch), get their own forward in `compute_loss`, and their token sums are divided
by the RL batch's token count, so that κ and λ_FM weigh them against the RL loss as the release's
token sums do. Second-turn metrics of TRL are logged under `second_turn/`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from trl import GRPOTrainer
from trl.trainer.utils import pad

from tokalign.bases.grpo.trainer import AccountingGRPOTrainer, loss_weights
from tokalign.data import toy_math
from tokalign.data.chat import prompt_text, with_text
from tokalign.losses import (
    feedback_modeling_loss,
    linear_coef,
    rltf_first_turn_advantages,
    rltf_sd_loss,
    rltf_turn_advantages,
)
from tokalign.methods.rltf import VERDICT

_PER_TOKEN = ("completion_ids", "completion_mask", "tool_mask", "old_per_token_logps", "ref_per_token_logps",
              "sampling_per_token_logps", "importance_sampling_ratio")  # fmt: skip


def take_rows(output: dict, rows: torch.Tensor) -> dict:
    """A TRL generation output restricted to `rows` (text-only outputs)."""
    return {k: v[rows] if isinstance(v, torch.Tensor) and v.ndim > 0 else v for k, v in output.items()}


def stack_turns(first: dict, second: dict, pad_id: int) -> dict:
    """Two TRL generation outputs as one batch: prompts left-padded, per-token tensors right-padded."""
    out = {}
    for key, a in first.items():
        b = second[key]
        if key == "num_items_in_batch":
            continue
        if key == "advantages":
            out[key] = torch.cat([a, b])
        elif key in ("prompt_ids", "prompt_mask"):
            width, value = max(a.size(1), b.size(1)), pad_id if key == "prompt_ids" else 0
            out[key] = torch.cat([F.pad(x, (width - x.size(1), 0), value=value) for x in (a, b)])
        elif key in _PER_TOKEN and a.ndim == 2:
            width = max(a.size(1), b.size(1))
            value = {"completion_ids": pad_id, "tool_mask": 1, "importance_sampling_ratio": 1}.get(key, 0)
            out[key] = torch.cat([F.pad(x, (0, width - x.size(1)), value=value) for x in (a, b)])
        else:
            raise ValueError(f"RLTF cannot stack generation output {key!r}: text-only rollouts are supported")
    return out


def padded(rows: list[list[int]], pad_id: int, side: str, device) -> tuple[torch.Tensor, torch.Tensor]:
    ids = [torch.tensor(r, dtype=torch.long) for r in rows]
    mask = [torch.ones_like(x) for x in ids]
    return (
        pad(ids, padding_value=pad_id, padding_side=side).to(device),
        pad(mask, padding_value=0, padding_side=side).to(device),
    )


class RLTFTrainer(AccountingGRPOTrainer):
    def __init__(
        self,
        *args,
        critic=None,
        solved_reward: float = 1.0,
        gamma: float = 0.1,
        sd_coef: float = 0.1,
        sd_schedule: str = "constant",
        sd_advantage: str = "second_turn",
        logprob_floor: float | None = -5.0,
        fm_coef: float = 0.0,
        revision_template: str = toy_math.REVISION_TEMPLATE,
        feedback_template: str = "{prompt} previous: {attempt} critique:",
        **kwargs,
    ):
        super().__init__(*args, **kwargs)
        if sd_schedule not in ("constant", "linear") or sd_advantage not in ("second_turn", "first_turn"):
            raise ValueError(f"unknown SD schedule {sd_schedule!r} or advantage {sd_advantage!r}")
        if self.args.steps_per_generation != 1 or self.num_iterations != 1:
            raise ValueError(
                "RLTF keeps its SD and FM rows per generation batch: steps_per_generation and num_iterations must be 1"
            )
        self.critic, self.solved_reward, self.gamma = critic, solved_reward, gamma
        self.sd_coef, self.sd_schedule, self.sd_advantage = sd_coef, sd_schedule, sd_advantage
        self.logprob_floor = -math.inf if logprob_floor is None else logprob_floor
        self.fm_coef = fm_coef
        self.revision_template, self.feedback_template = revision_template, feedback_template
        self._rewards: torch.Tensor | None = None
        self._side: dict = {}

    def current_sd_coef(self) -> float:
        if self.sd_schedule == "constant":
            return self.sd_coef
        steps = self.state.max_steps
        return linear_coef(self.state.global_step / max(steps - 1, 1), 0.0, self.sd_coef)

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        """TRL's rewards per function of every rank's completions; their weighted sums are kept."""
        per_func = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        self._rewards = (per_func * self.reward_weights.to(per_func.device).unsqueeze(0)).nansum(dim=1)
        return per_func

    def _turn(self, inputs) -> tuple[dict, torch.Tensor]:
        """One turn through TRL (generation, rewards, metrics) and every rank's rewards."""
        out = GRPOTrainer._generate_and_score_completions(self, inputs)
        rewards, self._rewards = self._rewards, None
        return out, rewards

    def _decode(self, output: dict) -> list[str]:
        ids = output["completion_ids"].masked_fill(output["completion_mask"] == 0, self._tokenizer.pad_token_id)
        return self._tokenizer.batch_decode(ids, skip_special_tokens=True)

    def _generate_and_score_completions(self, inputs):
        if not self.model.training:
            return super()._generate_and_score_completions(inputs)
        first, r0 = self._turn(inputs)
        attempts = self._decode(first)
        device = first["advantages"].device
        local = slice(self.accelerator.process_index * len(inputs), (self.accelerator.process_index + 1) * len(inputs))
        critiques = self._critiques(inputs, attempts, r0[local])
        revise = torch.tensor([c is not None for c in critiques], device=device)
        revise_all = self.accelerator.gather(revise.long()).bool()
        r1 = torch.zeros_like(r0)
        second = None
        if revise_all.any():  # every rank agrees, so every rank generates
            revisions = [
                {**x, "prompt": with_text(x["prompt"], self._revision(x, a, c))}
                for x, a, c in zip(inputs, attempts, critiques)
            ]
            seen = {k: len(v) for k, v in self._metrics["train"].items()}
            second, r1 = self._turn(revisions)
            self._second_turn_metrics(seen)
        groups = torch.arange(r0.numel(), device=device) // self.num_generations
        reached = torch.stack([torch.ones_like(revise_all), revise_all], -1)
        advantages = rltf_turn_advantages(torch.stack([r0, r1], -1), reached, groups, gamma=self.gamma)
        first["advantages"] = advantages[local, 0]
        rows = revise.nonzero().flatten()
        output = first
        if second is not None and rows.numel():
            second_rows = take_rows(second, rows)
            second_rows["advantages"] = advantages[local, 1][rows]
            output = stack_turns(first, second_rows, self._tokenizer.pad_token_id)
        trained = int(self.accelerator.reduce(loss_weights(output).sum(), reduction="sum"))
        output["num_items_in_batch"] = torch.tensor(trained, device=device)
        if second is not None:
            if self.sd_advantage == "first_turn":
                sd_advantages = rltf_first_turn_advantages(r0, r1, revise_all, groups)[local]
            else:
                sd_advantages = advantages[local, 1]
            self._side_rows(inputs, attempts, critiques, first, second, sd_advantages, rows)
        self._account(output, torch.cat([advantages[:, 0], advantages[revise_all, 1]]), trained)
        return output

    def _side_rows(self, inputs, attempts, critiques, first, second, sd_advantages, rows) -> None:
        """The SD rows (first-turn prompt, revision) and FM rows (feedback prompt, critique) of this rank's
        second turns. When another rank has some and this one none, one row with an all-zero loss mask
        stands in, so that every rank runs the same forwards (ZeRO-3 gathers weights in each)."""
        placeholder = rows.numel() == 0
        if placeholder:
            rows = rows.new_zeros(1)
        if self.sd_coef > 0:
            completion_mask = second["completion_mask"][rows] * (0 if placeholder else 1)
            self._side["sd"] = (
                first["prompt_ids"][rows], first["prompt_mask"][rows],
                second["completion_ids"][rows], completion_mask, sd_advantages[rows],
            )  # fmt: skip
        if self.fm_coef > 0:
            critiques = ["" if placeholder else c for c in critiques]
            prompt_ids, prompt_mask, reply_ids, reply_mask = self._feedback_rows(inputs, attempts, critiques, rows)
            self._side["fm"] = (prompt_ids, prompt_mask, reply_ids, reply_mask * (0 if placeholder else 1))

    def _critiques(self, inputs: list[dict], attempts: list[str], rewards: torch.Tensor) -> list[str | None]:
        """The critic's reading of each attempt; without a critic function, a verdict from the reward."""
        if self.critic is None:
            return [None if r >= self.solved_reward else VERDICT for r in rewards.tolist()]
        return [self.critic(prompt_text(x["prompt"]), a) for x, a in zip(inputs, attempts)]

    def _revision(self, example: dict, attempt: str, critique: str | None) -> str:
        return self.revision_template.format(
            prompt=prompt_text(example["prompt"]), attempt=attempt, critique=critique or ""
        )

    def _second_turn_metrics(self, seen: dict[str, int]) -> None:
        """Move what TRL logged for the second turn under `second_turn/`: the plain names stay the first
        turn's (the single-turn task the method is evaluated on)."""
        metrics = self._metrics["train"]
        for key in list(metrics):
            if key.startswith("second_turn/") or len(metrics[key]) <= seen.get(key, 0):
                continue
            metrics[f"second_turn/{key}"].extend(metrics[key][seen.get(key, 0) :])
            del metrics[key][seen.get(key, 0) :]

    def _feedback_rows(self, inputs, attempts, critiques, rows) -> tuple[torch.Tensor, ...]:
        """FM rows: the feedback prompt (question and attempt) as TRL tokenises prompts, the critique as the reply."""
        picked = rows.tolist()
        prompts = [
            with_text(inputs[i]["prompt"], self.feedback_template.format(prompt=prompt_text(inputs[i]["prompt"]),
                                                                         attempt=attempts[i]))
            for i in picked
        ]  # fmt: skip
        prompt_ids = self._tokenize_prompts(prompts)[0]
        eos = [self._tokenizer.eos_token_id] if self._tokenizer.eos_token_id is not None else []
        replies = [self._tokenizer(critiques[i], add_special_tokens=False)["input_ids"] + eos for i in picked]
        pad_id, device = self._tokenizer.pad_token_id, rows.device
        return (*padded(prompt_ids, pad_id, "left", device), *padded(replies, pad_id, "right", device))

    def _logps(self, model, prompt_ids, prompt_mask, completion_ids, completion_mask) -> torch.Tensor:
        ids = torch.cat([prompt_ids, completion_ids], 1)
        attention = torch.cat([prompt_mask, completion_mask], 1)
        return self._get_per_token_logps_and_entropies(model, ids, attention, completion_ids.size(1))[0]

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        loss = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        side, self._side = self._side, {}
        if not model.training or not side:
            return loss
        scale = loss_weights(inputs).sum().clamp(min=1) * self.current_gradient_accumulation_steps
        metrics = {}
        if "sd" in side:
            *batch, advantages = side["sd"]
            logps = self._logps(model, *batch)
            coef = self.current_sd_coef()
            sd, metrics = rltf_sd_loss(logps, logps.detach(), advantages, batch[3], coef=coef,
                                       logprob_floor=self.logprob_floor)  # fmt: skip
            metrics |= {"rltf/sd_coef": torch.tensor(coef), "loss/sd": sd.detach()}
            loss = loss + sd / scale
        if "fm" in side:
            logps = self._logps(model, *side["fm"])
            fm, fm_metrics = feedback_modeling_loss(logps, side["fm"][3], coef=self.fm_coef)
            metrics |= fm_metrics | {"loss/fm": fm.detach()}
            loss = loss + fm / scale
        for key, value in metrics.items():
            self._metrics["train"][key].append(self.accelerator.gather(value.to(loss.device).float()).mean().item())
        return loss
