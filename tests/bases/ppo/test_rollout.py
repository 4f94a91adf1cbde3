"""The rollout stage with a separate sampling engine (rollout.engine=vllm), on CPU.

vLLM needs a GPU, so `CopyEngine` keeps `VLLMEngine`'s bookkeeping (`sync`, versions) and samples
with transformers from a copy of the policy that only the pushed weights update: a rollout that
sampled from stale weights would show in the copy.
"""

from __future__ import annotations

import copy
from types import SimpleNamespace

import torch

from tests.conftest import compose_config
from tokalign.bases.ppo.rollout import pad_responses, response_mask, sample
from tokalign.modeling.vllm_engine import VLLMEngine

SMALL = (
    "method=ppo",
    "logger=none",
    "trainer.per_device_batch_size=2",
    "method.max_new_tokens=8",
    "trainer.max_steps=2",
    "trainer.warmup_ratio=0",
)


class CopyLLM:
    """`vllm.LLM`'s weight-loading surface over a transformers model."""

    def __init__(self, model):
        self.model, self.pushes = model, 0
        runner = SimpleNamespace(model=SimpleNamespace(load_weights=self.load_weights))
        self.llm_engine = SimpleNamespace(
            model_executor=SimpleNamespace(driver_worker=SimpleNamespace(model_runner=runner))
        )

    def load_weights(self, weights):
        params = dict(self.model.named_parameters())
        with torch.no_grad():
            for name, tensor in weights:
                params[name].copy_(tensor)

    def reset_prefix_cache(self):
        self.pushes += 1


class CopyEngine(VLLMEngine):
    """Samples like the vLLM engine (unpadded prompt ids in, completion ids out) from its own weights."""

    def __init__(self, model, pad_token_id, eos_token_id):
        super().__init__(CopyLLM(model))
        self.pad, self.eos, self.prompts = pad_token_id, eos_token_id, []

    def sample(self, prompt_ids, *, n=1, max_new_tokens, temperature=1.0, top_p=1.0, top_k=0, seed=None):
        self.prompts.append(prompt_ids)
        width = max(map(len, prompt_ids))
        ids = torch.tensor([[self.pad] * (width - len(p)) + p for p in prompt_ids])
        out = self.llm.model.generate(
            input_ids=ids,
            attention_mask=(torch.arange(width) >= width - torch.tensor([len(p) for p in prompt_ids])[:, None]).long(),
            max_new_tokens=max_new_tokens,
            do_sample=True,
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            pad_token_id=self.pad,
            eos_token_id=self.eos,
        )
        responses = out[:, width:]
        mask = response_mask(responses, self.eos).bool()
        return [r[m].tolist() for r, m in zip(responses, mask)]


def test_engine_completions_take_generate_layout(tiny_model):
    """Completions as lists (what vLLM returns) become the same tensors as transformers' generate."""
    from tokalign.bases.ppo import config as ppo
    from tokalign.modeling.models import load_causal_lm, load_tokenizer

    policy, tok = load_causal_lm(tiny_model), load_tokenizer(tiny_model)
    m = ppo.settings(compose_config(*SMALL).method)
    prompts = ["Say something kind.", "Write a short line about the sea, please, in a few words."]
    torch.manual_seed(0)
    input_ids, attention_mask, responses, mask = sample(policy, tok, prompts, m, max_prompt_len=64, device="cpu")
    lists = [r[k.bool()].tolist() for r, k in zip(responses, mask)]
    padded = pad_responses(lists, tok.pad_token_id, "cpu")
    assert torch.equal(padded, responses) and torch.equal(response_mask(padded, tok.eos_token_id), mask)

    engine = CopyEngine(copy.deepcopy(policy), tok.pad_token_id, tok.eos_token_id)
    ids, attention, _, engine_mask = sample(policy, tok, prompts, m, max_prompt_len=64, device="cpu", engine=engine)
    prompt_width = input_ids.size(1) - responses.size(1)
    assert torch.equal(ids[:, :prompt_width], input_ids[:, :prompt_width])
    assert torch.equal(attention[:, prompt_width:], engine_mask)
    assert engine.prompts == [
        [
            [t for t, a in zip(row, keep) if a]
            for row, keep in zip(input_ids.tolist(), attention_mask[:, :prompt_width].tolist())
        ]
    ]


def test_each_rollout_samples_from_the_policy_after_the_previous_update(tmp_path, cache_dir):
    from tokalign.bases.ppo.loop import iteration, setup
    from tokalign.runtime.run import Run

    tr = setup(Run(compose_config(*SMALL, f"output_dir={tmp_path}")))
    policy = tr.accelerator.unwrap_model(tr.policy)
    assert tr.engine is None  # rollout.engine=hf: the policy generates itself
    tr.engine = engine = CopyEngine(copy.deepcopy(policy), tr.run.tokenizer.pad_token_id, tr.run.tokenizer.eos_token_id)
    copy_of = dict(engine.llm.model.named_parameters())

    iteration(tr, 0)
    assert (engine.version, engine.llm.pushes) == (0, 0)  # the engine started from the policy's checkpoint
    after_first = {n: p.detach().clone() for n, p in policy.named_parameters()}
    assert any(not torch.equal(after_first[n], copy_of[n]) for n in after_first)  # the update moved the policy
    iteration(tr, 1)
    assert (engine.version, engine.llm.pushes) == (1, 1)  # one push, before the second rollout
    assert all(torch.equal(copy_of[n], after_first[n]) for n in after_first)
    assert any(not torch.equal(p, after_first[n]) for n, p in policy.named_parameters())
