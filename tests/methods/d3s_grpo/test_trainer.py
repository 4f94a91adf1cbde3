"""GRPO, D³S and PODS at trainer level (the D³S invariants of docs/methods.md) and end to end on toy_math."""

from __future__ import annotations

import inspect
import json
import math
import threading
from types import SimpleNamespace

import pytest
import torch

G = 4  # completions per prompt
PROMPTS = 4
LOSS_TYPES = ("grpo", "bnpo", "dr_grpo", "dapo", "cispo", "sapo", "luspo", "vespo")


def length_reward(prompts, completions, **_):
    """A deterministic reward with ties and spread, so groups have distinct advantages."""
    return [float(len(c[-1]["content"]) % 3) for c in completions]


@pytest.fixture(scope="module")
def make(tiny_model, tmp_path_factory):
    """`make(cls, **trainer_kwargs)`: a GRPO-family trainer on the tiny model, ready for compute_loss."""
    import datasets
    from trl import GRPOConfig

    from tokalign.methods.grpo.trainer import AccountingGRPOTrainer
    from tokalign.models import load_causal_lm, load_tokenizer

    rows = [{"prompt": [{"role": "user", "content": f"What is {a} + {a + 1}?"}], "answer": str(2 * a + 1)} for a in range(8)]
    data = datasets.Dataset.from_list(rows)

    def _make(cls=AccountingGRPOTrainer, **kwargs):
        args = GRPOConfig(
            output_dir=str(tmp_path_factory.mktemp("grpo")), per_device_train_batch_size=G * PROMPTS,
            num_generations=G, max_completion_length=10, steps_per_generation=1, max_steps=5,
            report_to="none", seed=0, use_cpu=True, disable_tqdm=True,
        )
        trainer = cls(
            model=load_causal_lm(tiny_model), reward_funcs=[length_reward], args=args, train_dataset=data,
            processing_class=load_tokenizer(tiny_model), **kwargs,
        )
        trainer.model.train()
        trainer.current_gradient_accumulation_steps = 1
        return trainer

    _make.inputs = [row for row in rows[:PROMPTS] for _ in range(G)]
    return _make


def d3s(make, **kwargs):
    from tokalign.methods.d3s_grpo.trainer import D3SGRPOTrainer

    settings = dict(n_init=G, n_final=G, k_init=1.0, k_final=1.0)
    return make(D3SGRPOTrainer, **(settings | kwargs))


@pytest.fixture(scope="module")
def rollout(make):
    """One scored generation batch of the plain GRPO trainer (TRL's output dict)."""
    from trl import GRPOTrainer

    torch.manual_seed(0)
    out = GRPOTrainer._generate_and_score_completions(make(), make.inputs)
    return out


def loss_and_grads(trainer, inputs, capture=None):
    """Loss and parameter gradients of one compute_loss + backward; `capture` keeps per-token log-probs."""
    trainer.model.zero_grad()
    if capture is not None:
        original = trainer._get_per_token_logps_and_entropies

        def keep(*args, **kwargs):
            logps, entropies, aux = original(*args, **kwargs)
            if logps.requires_grad:
                logps.retain_grad()
                capture.append(logps)
            return logps, entropies, aux

        trainer._get_per_token_logps_and_entropies = keep
    loss = trainer.compute_loss(trainer.model, inputs)
    loss.backward()
    if capture is not None:
        del trainer._get_per_token_logps_and_entropies
    return loss.detach(), {n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.grad is not None}


# Invariant 1: N = G and K = 1 reproduce plain GRPO exactly, every loss type (and GSPO's sequence level).
@pytest.mark.parametrize("level", ["token", "sequence"])
def test_full_selection_is_plain_grpo(make, rollout, level):
    from trl import GRPOTrainer

    plain, full = make(GRPOTrainer), d3s(make)
    selected, _ = full.down_sample(dict(rollout))
    for loss_type in LOSS_TYPES:
        if loss_type == "vespo" and level == "sequence":
            continue  # TRL's vespo is token-level only
        for t in (plain, full):
            t.loss_type, t.importance_sampling_level = loss_type, level
        loss0, grads0 = loss_and_grads(plain, rollout)
        loss1, grads1 = loss_and_grads(full, selected)
        assert torch.equal(loss0, loss1), loss_type
        assert grads0.keys() == grads1.keys()
        assert all(torch.equal(grads0[n], grads1[n]) for n in grads0), loss_type


# Sample level: rows really leave the batch; kept advantages are bit-identical (invariant 4).
@pytest.mark.parametrize("scope", ["group", "batch"])
def test_dropped_rows_leave_the_batch(make, rollout, scope):
    from tokalign.losses import select_samples

    trainer = d3s(make, n_init=2, n_final=2, sample_scope=scope)
    selected, kept_adv = trainer.down_sample(dict(rollout))
    kept, expected = select_samples(rollout["advantages"], 2, group_size=G, scope=scope)
    assert selected["completion_ids"].shape[0] == 2 * PROMPTS
    for key in ("prompt_ids", "prompt_mask", "completion_ids", "completion_mask"):
        assert torch.equal(selected[key], rollout[key][kept])
    assert torch.equal(selected["advantages"], rollout["advantages"][kept]) and torch.equal(selected["advantages"], expected)
    assert torch.equal(kept_adv, rollout["advantages"][kept])
    assert int(selected["num_items_in_batch"]) == int(rollout["completion_mask"][kept].sum())


def test_pods_renormalises_kept_advantages(make, rollout):
    from tokalign.losses import select_samples

    trainer = d3s(make, n_init=2, n_final=2, renormalize=True)
    selected, _ = trainer.down_sample(dict(rollout))
    _, expected = select_samples(rollout["advantages"], 2, group_size=G, renormalize=True)
    assert torch.equal(selected["advantages"], expected)


# Invariants 7 and 8: the token mask keeps ⌈K·n⌉ valid tokens, unkept tokens and dropped rows get
# exactly zero gradient, and log-probs at kept positions do not change (attention mask untouched).
@pytest.mark.parametrize("normalization", ["kept", "all"])
def test_token_mask_and_zero_gradients(make, rollout, normalization):
    trainer = d3s(make, n_init=2, n_final=2, k_init=0.3, k_final=0.3, token_normalization=normalization)
    selected, _ = trainer.down_sample(dict(rollout))
    valid = selected["completion_mask"].bool()
    key = "tool_mask" if normalization == "kept" else "d3s_token_mask"
    token_mask = selected[key].bool()
    assert not (token_mask & ~valid).any()
    assert int(token_mask.sum()) == math.ceil(0.3 * int(valid.sum()))
    if normalization == "kept":
        assert int(selected["num_items_in_batch"]) == int(token_mask.sum())

    masked, unmasked = [], []
    loss_and_grads(trainer, selected, capture=masked)
    plain = {k: v for k, v in selected.items() if k not in ("tool_mask", "d3s_token_mask")}
    loss_and_grads(d3s(make, n_init=2, n_final=2), plain, capture=unmasked)
    grad = masked[0].grad
    assert torch.all(grad[~token_mask] == 0) and grad[token_mask].abs().sum() > 0
    assert torch.equal(masked[0][token_mask], unmasked[0][token_mask])


def test_token_mask_ignores_advantage_scale(make, rollout):
    trainer = d3s(make, n_init=2, n_final=2, k_init=0.3, k_final=0.3)
    scaled = dict(rollout, advantages=rollout["advantages"] * 3.0)
    first, _ = trainer.down_sample(dict(rollout))
    second, _ = trainer.down_sample(scaled)
    assert torch.equal(first["tool_mask"], second["tool_mask"])


# Invariant 6 through the trainer: the schedule runs from (n_init, k_init) to (n_final, k_final).
def test_schedule_follows_training_progress(make):
    trainer = d3s(make, n_init=2, n_final=4, k_init=0.2, k_final=0.6)
    trainer.state.max_steps = 5
    trainer.state.global_step = 0
    assert trainer.current_nk() == (2, 0.2)
    trainer.state.global_step = 4
    assert trainer.current_nk() == (4, 0.6)
    trainer.schedule = "constant"
    assert trainer.current_nk() == (2, 0.2)


class ThreadRanks:
    """Two ranks as two threads of one process: collectives exchange tensors through a barrier."""

    num_processes = 2

    def __init__(self, accelerator):
        self.accelerator = accelerator  # everything but the collectives
        self.local, self.slots = threading.local(), [None, None]
        self.barrier = threading.Barrier(2, timeout=120)

    def __getattr__(self, name):
        return getattr(self.accelerator, name)

    @property
    def process_index(self):
        return self.local.rank

    def _exchange(self, x):
        self.slots[self.process_index] = x
        self.barrier.wait()
        both = list(self.slots)
        self.barrier.wait()
        return both

    def gather(self, x):
        both = self._exchange(x)
        return torch.stack(both) if x.dim() == 0 else torch.cat(both)

    def pad_across_processes(self, x, dim=0, pad_index=0):
        size = max(t.size(dim) for t in self._exchange(x))
        shape = list(x.shape)
        shape[dim] = size - x.size(dim)
        return torch.cat([x, x.new_full(shape, pad_index)], dim=dim)


def run_on_two_ranks(trainer, output):
    """down_sample on each half of `output` as rank 0 and rank 1, with real collective semantics."""
    half = len(output["advantages"]) // 2
    parts = [{k: (v[r * half : (r + 1) * half] if torch.is_tensor(v) and v.dim() else v) for k, v in output.items()}
             for r in range(2)]
    trainer.accelerator = ranks = ThreadRanks(trainer.accelerator)
    results, errors = [None, None], []

    def work(rank):
        ranks.local.rank = rank
        try:
            results[rank] = trainer.down_sample(parts[rank])
        except Exception as err:  # surfaced below
            errors.append(err)
            ranks.barrier.abort()

    threads = [threading.Thread(target=work, args=(r,)) for r in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return results


# Invariant 9: no RNG, and every rank keeps exactly its slice of the one pooled selection.
@pytest.mark.parametrize("scope", ["group", "batch"])
def test_ranks_agree_with_single_process_selection(make, rollout, scope):
    trainer = d3s(make, n_init=2, n_final=2, k_init=0.3, k_final=0.3, sample_scope=scope)
    whole, kept_adv = trainer.down_sample(dict(rollout))
    again, _ = trainer.down_sample(dict(rollout))
    assert all(torch.equal(whole[k], again[k]) for k in ("completion_ids", "advantages", "tool_mask"))
    (first, kept0), (second, kept1) = run_on_two_ranks(trainer, rollout)
    assert torch.equal(kept0, kept_adv) and torch.equal(kept1, kept_adv)
    for key in ("completion_ids", "advantages", "tool_mask"):
        assert torch.equal(torch.cat([first[key], second[key]]), whole[key]), key
    assert first["num_items_in_batch"] == second["num_items_in_batch"] == whole["num_items_in_batch"]


def test_rank_with_nothing_kept_trains_a_zero_weight_row(make, rollout):
    half = len(rollout["advantages"]) // 2
    signs = torch.tensor([1.0, -1.0]).repeat(half // 2)
    advantages = torch.cat([torch.zeros(half), signs])  # rank 0 holds only all-tied groups
    trainer = d3s(make, n_init=2, n_final=2, sample_scope="batch")
    (first, _), (second, _) = run_on_two_ranks(trainer, dict(rollout, advantages=advantages))
    assert first["completion_ids"].size(0) == 1 and first["tool_mask"].sum() == 0
    assert second["completion_ids"].size(0) == 2 * PROMPTS


def test_private_trl_methods_keep_their_shape():
    """Fails loudly when TRL changes a private method this package overrides or relies on."""
    from trl import GRPOTrainer

    def params(fn):
        return list(inspect.signature(fn).parameters)

    assert params(GRPOTrainer._generate_and_score_completions) == ["self", "inputs"]
    assert params(GRPOTrainer._get_per_token_logps_and_entropies)[:7] == [
        "self", "model", "input_ids", "attention_mask", "logits_to_keep", "batch_size", "compute_entropy",
    ]
    assert params(GRPOTrainer.get_high_entropy_mask) == ["self", "entropies", "mask", "threshold"]
    assert params(GRPOTrainer.compute_loss) == ["self", "model", "inputs", "return_outputs", "num_items_in_batch"]
    source = inspect.getsource(GRPOTrainer._compute_loss)
    assert 'completion_mask if "tool_mask" not in inputs else completion_mask * inputs["tool_mask"]' in source
    assert "self.get_high_entropy_mask(entropies, mask, 1 - self.top_entropy_quantile)" in source
    assert 'inputs["num_items_in_batch"]' in source
    for key in ("prompt_ids", "completion_mask", "advantages", "num_items_in_batch"):
        assert f'"{key}": {key}' in inspect.getsource(GRPOTrainer._generate_and_score_completions)


@pytest.mark.slow
@pytest.mark.parametrize("method", ["grpo", "pods", "d3s_grpo"])
def test_end_to_end_on_toy_math(train, method):
    selection = {
        "grpo": [],
        "pods": ["method.n_init=2", "method.n_final=2"],
        "d3s_grpo": ["method.n_init=2", "method.n_final=3", "method.k_init=0.3", "method.k_final=0.6"],
    }[method]
    run_dir = train(
        f"method={method}", "dataset=toy_math", "trainer.max_steps=3", "trainer.logging_steps=1",
        "trainer.per_device_batch_size=16", "method.num_generations=4", "method.max_completion_length=12", *selection,
    )
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["train/steps"] == 3 and "eval/accuracy" in summary
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "train/usage/kept_samples" in r]
    assert len(steps) == 3 and all("train/accuracy" in r and "train/reward_std" in r for r in steps)
    kept = [r["train/usage/kept_samples"] for r in steps]
    tokens = [r["train/usage/kept_tokens"] for r in steps]
    forward = [r["train/usage/forward_tokens"] for r in steps]
    assert summary["train/trained_tokens_total"] == sum(tokens)
    assert [r["train/usage/trained_tokens_total"] for r in steps] == [sum(tokens[: i + 1]) for i in range(3)]
    if method == "grpo":
        assert kept == [16, 16, 16] and tokens == forward
    elif method == "pods":
        assert kept == [8, 8, 8] and tokens == forward
    else:
        assert [r["train/schedule/n"] for r in steps] == [2, 3, 3]
        assert [r["train/schedule/k"] for r in steps] == pytest.approx([0.3, 0.45, 0.6])
        assert kept == [8, 12, 12] and all(t < f for t, f in zip(tokens, forward))
