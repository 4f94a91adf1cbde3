"""InTRO on TRL's GRPOTrainer: GRPO's rollouts and rewards, InTRO's loss on the correct rationales.

Per generation batch (`down_sample`): rationales whose reward is below `keep_reward` get an
all-zero loss mask (they add nothing), and each row carries its answer-conditioned prompt x⊕y,
tokenised as TRL tokenises prompts. `compute_loss` runs the policy on x ⊕ z (with grad) and the
same weights on x⊕y ⊕ z (no grad), aligns both on the response tokens by offset, and calls
`intro_loss` (candidates from `intro_candidates`) or `intro_expected_loss`. TRL's clipped
objective, advantages and old log-probs are not used.
"""

from __future__ import annotations

import torch
from trl.trainer.utils import pad

from tokalign.bases.grpo.trainer import AccountingGRPOTrainer, loss_weights
from tokalign.data import toy_math
from tokalign.data.chat import prompt_text, with_text
from tokalign.losses import intro_candidates, intro_expected_loss, intro_loss

POSTERIOR_IDS, POSTERIOR_MASK = "intro_posterior_ids", "intro_posterior_mask"


def posterior_prompt(prompt, answer: str, template: str):
    """The prompt with the answer appended (x⊕y), in the prompt's own form (text or chat messages)."""
    return with_text(prompt, template.format(x=prompt_text(prompt), y=answer))


def response_logits(model, prompt_ids, prompt_mask, completion_ids, completion_mask) -> torch.Tensor:
    """(B, C, V) logits predicting each completion token after its (left-padded) prompt."""
    ids = torch.cat([prompt_ids, completion_ids], 1)
    attention = torch.cat([prompt_mask, completion_mask], 1)
    logits = model(input_ids=ids, attention_mask=attention).logits
    start = prompt_ids.size(1) - 1
    return logits[:, start : start + completion_ids.size(1)]


class InTROTrainer(AccountingGRPOTrainer):
    def __init__(
        self,
        *args,
        num_candidates: int = 5,
        w_max: float = 200.0,
        mode: str = "sampled",
        candidate_temperature: float = 1.0,
        posterior_template: str = toy_math.HINT_TEMPLATE,
        correction: bool = True,
        keep_reward: float = 1.0,
        answer_column: str = "answer",
        chunk_size: int | None = None,
        **kwargs,
    ):
        super().__init__(*args, **kwargs)
        if mode not in ("sampled", "expected"):
            raise ValueError(f"mode must be sampled or expected, got {mode!r}")
        self.num_candidates, self.w_max, self.mode = num_candidates, w_max, mode
        self.candidate_temperature, self.chunk_size = candidate_temperature, chunk_size
        self.posterior_template, self.correction = posterior_template, correction
        self.keep_reward, self.answer_column = keep_reward, answer_column
        self.generator = torch.Generator(self.accelerator.device).manual_seed(
            self.args.seed + self.accelerator.process_index
        )
        self._batch: tuple[list, torch.Tensor] | None = None

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        """TRL's rewards per function of every rank's completions; this rank's weighted sums are kept."""
        per_func = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        total = (per_func * self.reward_weights.to(per_func.device).unsqueeze(0)).nansum(dim=1)
        start = self.accelerator.process_index * len(prompts)
        self._batch = (inputs, total[start : start + len(prompts)])
        return per_func

    def down_sample(self, output: dict) -> tuple[dict, torch.Tensor, int]:
        """Zero the loss mask of wrong rationales and attach each row's x⊕y prompt."""
        if self._batch is None:
            raise RuntimeError(
                "InTRO needs this batch's rewards, but TRL did not compute them through _calculate_rewards"
            )
        (inputs, rewards), self._batch = self._batch, None
        if self.answer_column not in inputs[0]:
            raise ValueError(f"InTRO needs the gold answer: the dataset has no column {self.answer_column!r}")
        kept = (rewards >= self.keep_reward).to(output["completion_mask"].dtype)
        output["tool_mask"] = loss_weights(output) * kept.unsqueeze(1)
        prompts = [posterior_prompt(x["prompt"], str(x[self.answer_column]), self.posterior_template) for x in inputs]
        ids = [torch.tensor(row) for row in self._tokenize_prompts(prompts)[0]]
        device = output["prompt_ids"].device
        output[POSTERIOR_IDS] = pad(ids, padding_value=self._tokenizer.pad_token_id, padding_side="left").to(device)
        output[POSTERIOR_MASK] = pad([torch.ones_like(x) for x in ids], padding_value=0, padding_side="left").to(device)
        trained = int(self.accelerator.reduce(output["tool_mask"].sum(), reduction="sum"))
        output["num_items_in_batch"] = torch.tensor(trained, device=device)
        all_kept = self.accelerator.gather(kept).bool()
        return output, self.accelerator.gather(output["advantages"])[all_kept], trained

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if return_outputs:
            raise ValueError("InTRO does not return outputs")
        mask = loss_weights(inputs)
        completion, completion_mask = inputs["completion_ids"], inputs["completion_mask"]
        policy = response_logits(model, inputs["prompt_ids"], inputs["prompt_mask"], completion, completion_mask)
        policy = policy / self.temperature
        if self.correction:
            with torch.no_grad():
                posterior = response_logits(
                    model, inputs[POSTERIOR_IDS], inputs[POSTERIOR_MASK], completion, completion_mask
                )
            posterior = posterior / self.temperature
        else:
            posterior = policy.detach()
        if self.mode == "expected":
            loss, metrics = intro_expected_loss(
                policy, posterior, completion, mask, num_candidates=self.num_candidates, w_max=self.w_max,
                chunk_size=self.chunk_size,
            )  # fmt: skip
        else:
            candidates = intro_candidates(
                policy, completion, mask, num_candidates=self.num_candidates,
                temperature=self.candidate_temperature, generator=self.generator,
            )  # fmt: skip
            log_p, log_q = (  # log-softmax at the candidates only: no second (B, T, V) tensor
                x.float().gather(-1, candidates) - torch.logsumexp(x.float(), -1, keepdim=True)
                for x in (policy, posterior)
            )
            loss, metrics = intro_loss(log_p, log_q, mask, w_max=self.w_max)
        if not loss.requires_grad:  # no kept position in this batch: a zero that still reaches every weight
            loss = loss + 0 * policy.sum()
        mode = "train" if model.training else "eval"
        for key, value in metrics.items():
            self._metrics[mode][key].append(self.accelerator.gather(value.to(loss.device)).mean().item())
        return loss / (self.current_gradient_accumulation_steps if mode == "train" else 1)
