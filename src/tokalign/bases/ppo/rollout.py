"""Rollout stage: which prompts an iteration uses, and the responses the policy samples for them.

The policy samples with transformers' generate, or (`rollout.engine=vllm`) through a colocated
vLLM engine that `sample` first brings to the policy's current weights.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

import torch

from tokalign.config import option
from tokalign.data.chat import as_messages


@dataclass
class Rollout:
    """One PPO iteration's samples: (B, P+R) sequences and (B, R) per-response-token tensors."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    responses: torch.Tensor
    mask: torch.Tensor
    old_logps: torch.Tensor
    ref_logps: torch.Tensor
    old_values: torch.Tensor
    scores: torch.Tensor
    rewards: torch.Tensor
    segment_ids: torch.Tensor
    advantages: torch.Tensor
    returns: torch.Tensor
    metrics: dict = field(default_factory=dict)  # the token-reward function's own (0-dim tensors)

    @property
    def position_ids(self) -> torch.Tensor:
        return position_ids(self.attention_mask)

    def rows(self, index: torch.Tensor) -> "Rollout":
        return Rollout(**{f.name: getattr(self, f.name)[index] for f in fields(self) if f.name != "metrics"})


def position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions counted over real tokens, so left padding does not shift them."""
    return (attention_mask.cumsum(-1) - 1).clamp(min=0)


def prompt_batch(data, step: int, size: int, seed: int, rank: int = 0, world: int = 1) -> dict:
    """This rank's prompts of iteration `step` (0-based): its slice of the global batch, a fresh
    shuffle per pass over the data."""
    total = len(data)
    start = (step * world + rank) * size
    orders: dict[int, torch.Tensor] = {}
    index = []
    for position in range(start, start + size):
        epoch, offset = divmod(position, total)
        if epoch not in orders:
            orders[epoch] = torch.randperm(total, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))
        index.append(int(orders[epoch][offset]))
    return data[index]


def response_mask(responses: torch.Tensor, eos_token_id: int) -> torch.Tensor:
    """1 up to and including the first EOS (everything when there is none), 0 after."""
    eos = (responses == eos_token_id).long()
    return ((eos.cumsum(-1) - eos) == 0).long()


def colocated_engine(run, *, max_num_seqs: int):
    """The colocated vLLM engine this process samples from with rollout.engine=vllm; None: the policy's generate.

    It computes in the training precision (bf16/fp16 autocast) or the model's dtype.
    """
    from tokalign.modeling.vllm_engine import VLLMEngine, uses_vllm

    cfg = run.cfg
    if not uses_vllm(cfg.get("rollout")):
        return None
    dtype = {"bf16": "bfloat16", "fp16": "float16"}.get(option(cfg.trainer.precision), option(cfg.model.dtype))
    return VLLMEngine.start(
        run.model_path,
        cfg.rollout,
        colocated=True,
        seed=cfg.seed,
        dtype=dtype,
        max_model_len=cfg.trainer.max_length,
        max_num_seqs=max_num_seqs,
        trust_remote_code=cfg.model.trust_remote_code,
    )


def pad_responses(completions: list[list[int]], pad_token_id: int, device) -> torch.Tensor:
    """(B, R) right-padded token ids of completions of different lengths, as generate returns them."""
    width = max(1, *(len(c) for c in completions))
    return torch.tensor([c + [pad_token_id] * (width - len(c)) for c in completions], dtype=torch.long, device=device)


@torch.no_grad()
def sample(
    policy, tokenizer, prompts: list, m, *, max_prompt_len: int, device, engine=None, version: int = 0, seed: int = 0
) -> tuple[torch.Tensor, ...]:
    """Left-padded prompts + sampled responses: (input_ids, attention_mask, responses, response mask).

    With a vLLM `engine`, the policy's weights after `version` updates are pushed to it first
    (once per version) and prompt i is sampled with seed + i.
    """
    texts = [tokenizer.apply_chat_template(as_messages(p), tokenize=False, add_generation_prompt=True) for p in prompts]
    enc = tokenizer(texts, return_tensors="pt", padding=True, padding_side="left", add_special_tokens=False)
    prompt_ids = enc["input_ids"][:, -max_prompt_len:].to(device)
    prompt_mask = enc["attention_mask"][:, -max_prompt_len:].to(device)
    if engine is None:
        was_training = policy.training
        policy.eval()
        sequences = policy.generate(
            input_ids=prompt_ids,
            attention_mask=prompt_mask,
            max_new_tokens=m.max_new_tokens,
            do_sample=True,
            temperature=m.temperature,
            top_k=m.top_k,
            top_p=m.top_p,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
        policy.train(was_training)
        responses = sequences[:, prompt_ids.shape[1] :]
    else:
        engine.sync(policy, version)
        unpadded = [ids[mask.bool()].tolist() for ids, mask in zip(prompt_ids, prompt_mask)]
        completions = engine.sample(
            unpadded,
            max_new_tokens=m.max_new_tokens,
            temperature=m.temperature,
            top_p=m.top_p,
            top_k=m.top_k,
            seed=seed,
        )
        responses = pad_responses(completions, tokenizer.pad_token_id, device)
    mask = response_mask(responses, tokenizer.eos_token_id)
    responses = responses.masked_fill(mask == 0, tokenizer.pad_token_id)
    return torch.cat([prompt_ids, responses], 1), torch.cat([prompt_mask, mask], 1), responses, mask
