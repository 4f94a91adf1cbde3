"""Batched sampling from a causal LM or a vLLM engine, shared by evaluation and on-policy data building."""

from __future__ import annotations

from typing import Any

from tokalign.data.chat import as_messages


def generate(
    model,
    tokenizer,
    prompts: list[Any],
    *,
    max_new_tokens: int = 48,
    temperature: float = 1.0,
    top_p: float = 1.0,
    top_k: int = 0,
    num_samples: int = 1,
    batch_size: int = 32,
    seed: int = 0,
    desc: str = "generating",
) -> list[list[str]]:
    """`num_samples` completions per prompt (greedy when temperature == 0), decoded without specials.

    `model` is a transformers causal LM, or a `tokalign.modeling.vllm_engine.VLLMEngine`, which takes every
    prompt at once (`batch_size` is transformers' only) and seeds prompt i with seed + i.
    """
    import torch
    from tqdm.auto import tqdm

    from tokalign.modeling.vllm_engine import VLLMEngine

    texts = [tokenizer.apply_chat_template(as_messages(p), tokenize=False, add_generation_prompt=True) for p in prompts]
    if isinstance(model, VLLMEngine):
        ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
        completions = model.sample(
            ids,
            n=num_samples,
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            top_p=top_p,
            top_k=top_k,
            seed=seed,
        )
        decoded = tokenizer.batch_decode(completions, skip_special_tokens=True)
        return [decoded[i : i + num_samples] for i in range(0, len(decoded), num_samples)]
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    was_training = model.training
    model.eval()
    torch.manual_seed(seed)
    out: list[list[str]] = []
    try:
        for start in tqdm(range(0, len(texts), batch_size), desc=desc, unit="batch", leave=False, dynamic_ncols=True):
            enc = tokenizer(
                texts[start : start + batch_size], return_tensors="pt", padding=True, add_special_tokens=False
            )
            enc = {k: v.to(model.device) for k, v in enc.items()}
            sampling = (
                dict(do_sample=True, temperature=temperature, top_p=top_p, top_k=top_k)
                if temperature > 0
                else dict(do_sample=False)
            )
            seqs = model.generate(
                **enc,
                max_new_tokens=max_new_tokens,
                num_return_sequences=num_samples,
                pad_token_id=tokenizer.pad_token_id,
                eos_token_id=tokenizer.eos_token_id,
                **sampling,
            )
            decoded = tokenizer.batch_decode(seqs[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)
            out += [decoded[i : i + num_samples] for i in range(0, len(decoded), num_samples)]
    finally:
        tokenizer.padding_side = side
        model.train(was_training)
    return out


def sequence_logps(
    model, tokenizer, prompts: list[Any], completions: list[str], *, batch_size: int = 32
) -> list[float]:
    """log π(y | x) of each completion (its tokens and the closing EOS) after the chat-formatted prompt."""
    import torch

    out: list[float] = []
    for start in range(0, len(prompts), batch_size):
        rows, masks = [], []
        for p, c in zip(prompts[start : start + batch_size], completions[start : start + batch_size]):
            text = tokenizer.apply_chat_template(as_messages(p), tokenize=False, add_generation_prompt=True)
            prompt_ids = tokenizer(text, add_special_tokens=False)["input_ids"]
            ids = tokenizer(c, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
            rows.append(prompt_ids + ids)
            masks.append([0] * len(prompt_ids) + [1] * len(ids))
        width = max(map(len, rows))
        input_ids = torch.tensor([r + [tokenizer.pad_token_id] * (width - len(r)) for r in rows], device=model.device)
        response = torch.tensor([m + [0] * (width - len(m)) for m in masks], device=model.device)
        attention = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows], device=model.device)
        with torch.no_grad():
            logits = model(input_ids=input_ids, attention_mask=attention).logits[:, :-1].float()
        logps = logits.log_softmax(-1).gather(-1, input_ids[:, 1:, None])[..., 0]
        out += (logps * response[:, 1:]).sum(-1).tolist()
    return out
