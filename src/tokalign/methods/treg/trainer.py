"""T-REG on TRL's DPOTrainer: DPO plus a regulariser towards self-generated token rewards (`treg_loss`).

The token rewards r̂ come from a frozen model (default: the reference, i.e. the starting policy)
scoring each response after a "better" and a "worse" revision of its prompt. The revised prompts
differ in length from the original, so the scores are aligned by response offset: the collator
builds the revised sequences ending at the last completion token the training batch keeps and
marks the same completion tokens, whose scores then land on the training batch's positions.
r̂ and the reference log-probs are per-token values of frozen models: precomputed once per
dataset and cached, or computed from each batch (`tokalign.bases.dpo.token_level`).

Extra hook overridden: `_prepare_dataset` (private; pinned by tests/bases/dpo/test_trl_hooks.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from trl.trainer.utils import pad

from tokalign.bases.dpo.token_level import (
    SIDES,
    DataCollatorForTokenPreference,
    TokenDPOTrainer,
)
from tokalign.losses import contrastive_token_rewards, treg_loss
from tokalign.methods.treg.prompts import BETTER, WORSE, revise

REVISIONS = ("better", "worse")
REVISED = ("input_ids", "attention_mask", "completion_mask")


def _prompt_ids(tokenizer, prompt: Any) -> list[int]:
    """Token ids of a prompt, as TRL's DPOTrainer tokenizes it (chat template with the generation prompt)."""
    if isinstance(prompt, str):
        return tokenizer(text=prompt)["input_ids"]
    return tokenizer.apply_chat_template(prompt, tokenize=True, add_generation_prompt=True, return_dict=True)[
        "input_ids"
    ]


def revision_prompt_ids(example: dict[str, Any], tokenizer, templates: dict[str, str]) -> dict[str, list[int]]:
    """`<kind>_prompt_ids` of each revision, cut like TRL cuts `prompt_ids` (where the tokenized prompt
    and prompt + completion diverge, the prompt's end is left to the completion)."""
    drop = len(_prompt_ids(tokenizer, example["prompt"])) - len(example["prompt_ids"])
    out = {}
    for kind, template in templates.items():
        ids = _prompt_ids(tokenizer, revise(example["prompt"], template))
        out[f"{kind}_prompt_ids"] = ids[: len(ids) - drop]
    return out


@dataclass
class DataCollatorForRevisions(DataCollatorForTokenPreference):
    """The token-level preference collator plus, unless the values are precomputed, each completion
    after the better and the worse revision prompts: `<kind>_input_ids`, `<kind>_attention_mask`,
    `<kind>_completion_mask`, rows in the training batch's order (chosen, then rejected).

    A revised row ends at the last completion token the training row keeps after truncation and
    its completion mask marks the same completion tokens (with `keep_end` it is cut to max_length
    plus the revision's extra prompt length), so row i marks as many tokens as training row i.
    """

    def torch_call(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        out = super().torch_call(examples)
        if self.precomputed(examples):
            return out
        kept = out["completion_mask"].sum(1).tolist()
        rows = [(e, side) for side in SIDES for e in examples]
        for kind in REVISIONS:
            ids, masks = [], []
            for (e, side), k in zip(rows, kept):
                prompt, completion = e[f"{kind}_prompt_ids"], e[f"{side}_ids"]
                end = k if self.truncation_mode == "keep_start" else len(completion)
                seq = prompt + completion[:end]
                if self.max_length is not None and self.truncation_mode == "keep_end":
                    seq = seq[-(self.max_length + max(0, len(prompt) - len(e["prompt_ids"]))) :]
                ids.append(torch.tensor(seq))
                masks.append(torch.tensor([0] * (len(seq) - k) + [1] * k))
            padded = dict(
                input_ids=(ids, self.pad_token_id),
                attention_mask=([torch.ones_like(x) for x in ids], 0),
                completion_mask=(masks, 0),
            )
            for name, (tensors, value) in padded.items():
                out[f"{kind}_{name}"] = pad(
                    tensors, padding_value=value, padding_side="right", pad_to_multiple_of=self.pad_to_multiple_of
                )
        return out


class TREGTrainer(TokenDPOTrainer):
    """DPOTrainer whose loss is `tokalign.losses.treg_loss` (Zhou et al., ACL 2025).

    `token_reward_model`: the frozen model whose contrast of the two revisions gives r̂ (sharing
    the policy's tokenizer); None: the reference. `better_prompt` / `worse_prompt`: templates in
    which `{prompt}` stands for the user's last turn.
    """

    sources = ("ref", "token_reward")
    input_columns = (*TokenDPOTrainer.input_columns, *(f"{kind}_prompt_ids" for kind in REVISIONS))

    def __init__(
        self,
        model,
        ref_model=None,
        *,
        args,
        processing_class,
        alpha: float,
        weighting: str = "adaptive",
        better_prompt: str = BETTER,
        worse_prompt: str = WORSE,
        token_reward_model=None,
        **kwargs,
    ):
        self.alpha, self.weighting = alpha, weighting
        self.revision_prompts = {"better": better_prompt, "worse": worse_prompt}
        self.own_scorer = token_reward_model is not None
        super().__init__(
            model,
            ref_model,
            args=args,
            processing_class=processing_class,
            frozen_models={"token_reward": token_reward_model} if self.own_scorer else {},
            **kwargs,
        )

    def make_collator(self, processing_class, args) -> DataCollatorForRevisions:
        return DataCollatorForRevisions(
            pad_token_id=processing_class.pad_token_id,
            max_length=args.max_length,
            truncation_mode=args.truncation_mode,
            pad_to_multiple_of=args.pad_to_multiple_of,
            sources=self.sources,
        )

    def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
        dataset = super()._prepare_dataset(dataset, processing_class, args, dataset_name)
        return dataset.map(
            revision_prompt_ids,
            fn_kwargs={"tokenizer": processing_class, "templates": self.revision_prompts},
            desc=f"Tokenizing the revision prompts of the {dataset_name} dataset",
        )

    def frozen_token_values(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        mask = inputs["completion_mask"][:, 1:].bool()
        scores = {}
        for kind in REVISIONS:
            revised = {name: inputs[f"{kind}_{name}"] for name in REVISED}
            logps = self.frozen_logps("token_reward", revised) if self.own_scorer else self.reference_logps(revised)
            scored = revised["completion_mask"][:, 1:].bool()
            scores[kind] = torch.zeros(mask.shape, dtype=logps.dtype, device=logps.device).masked_scatter(
                mask, logps[scored]
            )
        return {
            "ref": self.reference_logps(inputs),
            "token_reward": contrastive_token_rewards(scores["better"], scores["worse"], mask),
        }

    def token_loss(self, policy, values, mask):
        return treg_loss(
            *policy.chunk(2),
            *values["ref"].chunk(2),
            *values["token_reward"].chunk(2),
            *mask.chunk(2),
            beta=self.beta,
            alpha=self.alpha,
            weighting=self.weighting,
        )
