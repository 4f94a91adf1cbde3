"""GRPO, D³S and PODS at trainer level (the D³S invariants of docs/methods.md) and end to end on toy_math."""

from __future__ import annotations

import inspect
import json
import math
import threading

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

    from tokalign.bases.grpo.trainer import AccountingGRPOTrainer
    from tokalign.modeling.models import load_causal_lm, load_tokenizer

    rows = [
        {"prompt": [{"role": "user", "content": f"What is {a} + {a + 1}?"}], "answer": str(2 * a + 1)} for a in range(8)
    ]
    data = datasets.Dataset.from_list(rows)

    def _make(cls=AccountingGRPOTrainer, **kwargs):
        args = GRPOConfig(
            output_dir=str(tmp_path_factory.mktemp("grpo")),
            per_device_train_batch_size=G * PROMPTS,
            num_generations=G,
            max_completion_length=10,
            steps_per_generation=1,
            max_steps=5,
            report_to="none",
            seed=0,
            use_cpu=True,
            disable_tqdm=True,
        )
        trainer = cls(
            model=load_causal_lm(tiny_model),
            reward_funcs=[length_reward],
            args=args,
            train_dataset=data,
            processing_class=load_tokenizer(tiny_model),
            **kwargs,
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
    selected, _, _ = full.down_sample(dict(rollout))
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
    selected, kept_adv, trained = trainer.down_sample(dict(rollout))
    kept, expected = select_samples(rollout["advantages"], 2, group_size=G, scope=scope)
    assert selected["completion_ids"].shape[0] == 2 * PROMPTS
    for key in ("prompt_ids", "prompt_mask", "completion_ids", "completion_mask"):
        assert torch.equal(selected[key], rollout[key][kept])
    assert torch.equal(selected["advantages"], rollout["advantages"][kept]) and torch.equal(
        selected["advantages"], expected
    )
    assert torch.equal(kept_adv, rollout["advantages"][kept])
    assert int(selected["num_items_in_batch"]) == trained == int(rollout["completion_mask"][kept].sum())


def test_pods_renormalises_the_kept_raw_rewards(make):
    """PODS standardises the kept samples' raw rewards, read where TRL computes them."""
    from tokalign.losses import select_samples

    trainer = d3s(make, n_init=2, n_final=2, renormalize=True)
    torch.manual_seed(0)
    out = trainer._generate_and_score_completions(make.inputs)
    B = len(make.inputs)
    raw = torch.tensor(list(trainer._logs["rewards"]["length_reward"])[-B:])
    advantages = torch.tensor(list(trainer._logs["advantages"])[-B:])
    _, expected = select_samples(advantages, 2, group_size=G, renormalize=True, rewards=raw)
    _, restandardised = select_samples(advantages, 2, group_size=G, renormalize=True)
    assert torch.equal(out["advantages"], expected)
    assert not torch.equal(expected, restandardised)  # the 1e-4 guard acts on std(r), not on std(A)
    with pytest.raises(RuntimeError, match="raw rewards"):
        trainer.down_sample(dict(out))  # a batch whose rewards TRL did not compute


def two_pass(make, selected, k, normalization, scope, **loss):
    """Loss, gradients and token mask of the earlier two-pass D³S: entropies from a separate no-grad
    forward choose the mask before TRL's loss runs (as `tool_mask`, or as the top-entropy mask)."""
    from trl import GRPOTrainer

    from tokalign.bases.grpo.trainer import loss_weights
    from tokalign.losses import d3s_token_mask
    from tokalign.methods.d3s_grpo.trainer import KEEP_RATIO

    class TwoPass(GRPOTrainer):
        def get_high_entropy_mask(self, entropies, mask, threshold):
            return token_mask

    ref = make(TwoPass)
    for name, value in loss.items():
        setattr(ref, name, value)
    inputs = {key: v for key, v in selected.items() if key != KEEP_RATIO}
    ids = torch.cat([inputs["prompt_ids"], inputs["completion_ids"]], 1)
    attention = torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], 1)
    with torch.no_grad():
        _, entropies, _ = ref._get_per_token_logps_and_entropies(
            ref.model, ids, attention, inputs["completion_ids"].size(1), batch_size=G * PROMPTS, compute_entropy=True
        )
    token_mask = d3s_token_mask(inputs["advantages"], entropies, loss_weights(inputs).bool(), k, scope=scope)
    if normalization == "kept":
        inputs["tool_mask"], inputs["num_items_in_batch"] = token_mask.long(), token_mask.sum()
    else:
        ref.top_entropy_quantile = 0.0
    return (*loss_and_grads(ref, inputs), token_mask)


def captured_mask(trainer, inputs):
    """The token mask the trainer applies in its training forward (no backward)."""
    seen = []
    original = trainer.get_high_entropy_mask

    def keep(*args):
        seen.append(original(*args))
        return seen[-1]

    trainer.get_high_entropy_mask = keep
    try:
        with torch.no_grad():
            trainer.compute_loss(trainer.model, inputs)
    finally:
        del trainer.get_high_entropy_mask
    return seen[0]


# One forward: the token mask comes from the training forward's entropies, with the same loss and
# gradients as choosing it from a separate no-grad forward, for both normalisations, loss types, KL.
@pytest.mark.parametrize("normalization", ["kept", "all"])
@pytest.mark.parametrize("scope", ["batch", "sequence"])
def test_one_forward_matches_two_pass(make, rollout, normalization, scope):
    trainer = d3s(
        make, n_init=2, n_final=2, k_init=0.3, k_final=0.3, token_normalization=normalization, token_scope=scope
    )
    forwards = []
    trainer._get_per_token_logps_and_entropies = lambda *a, **kw: forwards.append(a)
    selected, _, trained = trainer.down_sample(dict(rollout))
    del trainer._get_per_token_logps_and_entropies
    assert forwards == []  # selection runs no forward of its own
    ref_logps = torch.randn(selected["completion_ids"].shape, generator=torch.Generator().manual_seed(1)) - 3
    for loss_type, level, beta in [
        ("dapo", "token", 0.0),
        ("grpo", "token", 0.04),
        ("bnpo", "sequence", 0.0),
        ("dr_grpo", "token", 0.04),
        ("cispo", "token", 0.0),
    ]:
        loss = dict(loss_type=loss_type, importance_sampling_level=level, beta=beta)
        inputs = dict(selected, ref_per_token_logps=ref_logps) if beta else dict(selected)
        loss0, grads0, mask = two_pass(make, inputs, 0.3, normalization, scope, **loss)
        for name, value in loss.items():
            setattr(trainer, name, value)
        loss1, grads1 = loss_and_grads(trainer, inputs)
        assert int(mask.sum()) == trained
        assert torch.equal(loss0, loss1), loss
        assert grads0.keys() == grads1.keys() and all(torch.equal(grads0[n], grads1[n]) for n in grads0), loss


# Invariants 7 and 8: the token mask keeps ⌈K·n⌉ valid tokens, unkept tokens and dropped rows get
# exactly zero gradient, and log-probs at kept positions do not change (attention mask untouched).
@pytest.mark.parametrize("normalization", ["kept", "all"])
def test_token_mask_and_zero_gradients(make, rollout, normalization):
    trainer = d3s(make, n_init=2, n_final=2, k_init=0.3, k_final=0.3, token_normalization=normalization)
    selected, _, trained = trainer.down_sample(dict(rollout))
    valid = selected["completion_mask"].bool()
    token_mask = captured_mask(trainer, selected).bool()
    assert not (token_mask & ~valid).any()
    assert int(token_mask.sum()) == math.ceil(0.3 * int(valid.sum())) == trained
    if normalization == "kept":
        assert int(selected["num_items_in_batch"]) == int(token_mask.sum())
    else:
        assert int(selected["num_items_in_batch"]) == int(valid.sum())

    masked, unmasked = [], []
    loss_and_grads(trainer, selected, capture=masked)
    loss_and_grads(
        d3s(make, n_init=2, n_final=2), {k: v for k, v in selected.items() if k != "d3s_keep_ratio"}, capture=unmasked
    )
    grad = masked[0].grad
    assert torch.all(grad[~token_mask] == 0) and grad[token_mask].abs().sum() > 0
    assert torch.equal(masked[0][token_mask], unmasked[0][token_mask])
    assert torch.equal(selected["completion_mask"].bool(), valid)  # the batch itself is left as it was


def test_token_mask_ignores_advantage_scale(make, rollout):
    trainer = d3s(make, n_init=2, n_final=2, k_init=0.3, k_final=0.3)
    first, _, _ = trainer.down_sample(dict(rollout))
    second = dict(first, advantages=first["advantages"] * 3.0)
    assert torch.equal(captured_mask(trainer, first), captured_mask(trainer, second))


def test_later_passes_over_a_batch_keep_its_token_mask(make, rollout):
    """num_iterations > 1: the mask the rollout policy's entropies chose stays, however π_θ moves."""
    trainer = d3s(make, n_init=2, n_final=2, k_init=0.3, k_final=0.3)
    batch, _, _ = trainer.down_sample(dict(rollout))
    chosen = captured_mask(trainer, batch)
    with torch.no_grad():
        for p in trainer.model.parameters():
            p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(2)) * 0.5)
    assert torch.equal(captured_mask(trainer, batch), chosen)
    fresh, _, _ = trainer.down_sample(dict(rollout))
    assert not torch.equal(captured_mask(trainer, fresh), chosen)  # a new batch ranks by the moved policy


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

    def reduce(self, x, reduction="sum"):
        total = sum(self._exchange(x))
        return total if reduction == "sum" else total / 2

    def pad_across_processes(self, x, dim=0, pad_index=0):
        size = max(t.size(dim) for t in self._exchange(x))
        shape = list(x.shape)
        shape[dim] = size - x.size(dim)
        return torch.cat([x, x.new_full(shape, pad_index)], dim=dim)


def run_on_two_ranks(trainers, output, step):
    """`step(trainer, part)` on each half of `output` as rank 0 and rank 1 (one trainer each), with
    real collective semantics; their results."""
    half = len(output["advantages"]) // 2
    parts = [
        {k: (v[r * half : (r + 1) * half] if torch.is_tensor(v) and v.dim() else v) for k, v in output.items()}
        for r in range(2)
    ]
    ranks = ThreadRanks(trainers[0].accelerator)
    for t in trainers:
        t.accelerator = ranks
    results, errors = [None, None], []

    def work(rank):
        ranks.local.rank = rank
        try:
            results[rank] = step(trainers[rank], parts[rank])
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


# Invariant 9: no RNG, and every rank keeps exactly its slice of the one pooled selection, rows and tokens.
@pytest.mark.parametrize("scope", ["group", "batch"])
def test_ranks_agree_with_single_process_selection(make, rollout, scope):
    settings = dict(n_init=2, n_final=2, k_init=0.3, k_final=0.3, sample_scope=scope)
    trainer = d3s(make, **settings)
    whole, kept_adv, trained = trainer.down_sample(dict(rollout))
    again, _, _ = trainer.down_sample(dict(rollout))
    assert all(torch.equal(whole[k], again[k]) for k in ("completion_ids", "advantages"))
    whole_mask = captured_mask(trainer, whole)

    def select_and_mask(t, part):
        selected, kept, count = t.down_sample(part)
        return selected, kept, count, captured_mask(t, selected)

    first, second = run_on_two_ranks([d3s(make, **settings), d3s(make, **settings)], rollout, select_and_mask)
    for selected, kept, count, _ in (first, second):
        assert torch.equal(kept, kept_adv) and count == trained
        assert selected["num_items_in_batch"] == whole["num_items_in_batch"]
    for key in ("completion_ids", "advantages"):
        assert torch.equal(torch.cat([first[0][key], second[0][key]]), whole[key]), key
    length = whole_mask.size(1)
    pad = [torch.nn.functional.pad(m, (0, length - m.size(1))) for m in (first[3], second[3])]
    assert torch.equal(torch.cat(pad), whole_mask)


def test_rank_with_nothing_kept_trains_a_zero_weight_row(make, rollout):
    half = len(rollout["advantages"]) // 2
    signs = torch.tensor([1.0, -1.0]).repeat(half // 2)
    advantages = torch.cat([torch.zeros(half), signs])  # rank 0 holds only all-tied groups
    trainers = [d3s(make, n_init=2, n_final=2, sample_scope="batch") for _ in range(2)]
    first, second = (
        out
        for out, _, _ in run_on_two_ranks(
            trainers, dict(rollout, advantages=advantages), lambda t, part: t.down_sample(part)
        )
    )
    assert first["completion_ids"].size(0) == 1 and first["tool_mask"].sum() == 0
    assert second["completion_ids"].size(0) == 2 * PROMPTS


def test_private_trl_methods_keep_their_shape():
    """Fails loudly when TRL changes a private method this package overrides or relies on."""
    import re

    from trl import GRPOConfig, GRPOTrainer

    def params(fn):
        return list(inspect.signature(fn).parameters)

    assert params(GRPOTrainer._generate_and_score_completions) == ["self", "inputs"]
    assert params(GRPOTrainer._get_per_token_logps_and_entropies)[:7] == [
        "self",
        "model",
        "input_ids",
        "attention_mask",
        "logits_to_keep",
        "batch_size",
        "compute_entropy",
    ]
    assert params(GRPOTrainer.get_high_entropy_mask) == ["self", "entropies", "mask", "threshold"]
    assert params(GRPOTrainer.compute_loss) == ["self", "model", "inputs", "return_outputs", "num_items_in_batch"]
    source = inspect.getsource(GRPOTrainer._compute_loss)
    mask_line = 'mask = completion_mask if "tool_mask" not in inputs else completion_mask * inputs["tool_mask"]'
    hook = "self.get_high_entropy_mask(entropies, mask, 1 - self.top_entropy_quantile)"
    assert mask_line in source and hook in source
    # the one-forward token mask narrows `mask` in the hook: nothing may read it between the two
    assert not re.search(r"\bmask\b", source[source.index(mask_line) + len(mask_line) : source.index(hook)])
    assert "compute_entropy=True" in source and "if self.top_entropy_quantile < 1.0:" in source
    assert 'inputs["num_items_in_batch"]' in source
    generate = inspect.getsource(GRPOTrainer._generate_and_score_completions)
    for key in ("prompt_ids", "completion_mask", "advantages", "num_items_in_batch"):
        assert f'"{key}": {key}' in generate
    # PODS's raw rewards: every rank's rewards per function, weighted and summed as TRL's own advantages use them
    assert params(GRPOTrainer._calculate_rewards) == ["self", "inputs", "prompts", "completions", "completion_ids_list"]
    assert "rewards_per_func = self._calculate_rewards(inputs, prompts, completions, completion_ids_list)" in generate
    assert "rewards = (rewards_per_func * self.reward_weights.to(device).unsqueeze(0)).nansum(dim=1)" in generate
    assert "gather(rewards_per_func)" in inspect.getsource(GRPOTrainer._calculate_rewards)
    assert GRPOConfig.multi_objective_aggregation == "sum_then_normalize"


@pytest.mark.slow
@pytest.mark.parametrize("method", ["grpo", "pods", "d3s_grpo"])
def test_end_to_end_on_toy_math(train, method):
    selection = {
        "grpo": [],
        "pods": ["method.n_init=2", "method.n_final=2"],
        "d3s_grpo": ["method.n_init=2", "method.n_final=3", "method.k_init=0.3", "method.k_final=0.6"],
    }[method]
    run_dir = train(
        f"method={method}",
        "dataset=toy_math",
        "trainer.max_steps=3",
        "trainer.logging_steps=1",
        "trainer.per_device_batch_size=16",
        "method.num_generations=4",
        "method.max_completion_length=12",
        *selection,
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
    lengths = [r["train/completions/mean_length"] for r in steps]
    assert summary["train/completion_length"] == pytest.approx(sum(lengths) / 3)
    assert [r["train/usage/trained_tokens_total"] for r in steps] == [sum(tokens[: i + 1]) for i in range(3)]
    if method == "grpo":
        assert kept == [16, 16, 16] and tokens == forward
    elif method == "pods":
        assert kept == [8, 8, 8] and tokens == forward
    else:
        assert [r["train/schedule/n"] for r in steps] == [2, 3, 3]
        assert [r["train/schedule/k"] for r in steps] == pytest.approx([0.3, 0.45, 0.6])
        assert kept == [8, 12, 12] and all(t < f for t, f in zip(tokens, forward))
