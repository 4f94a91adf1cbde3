"""tokalign's PPO loop (MA-RLHF macro actions included), on accelerate so it runs under DDP.

`fit(run)` drives it: setup (policy, frozen reference, critic, reward, optimizers), then per
iteration a rollout, macro-action segmentation, GAE over segments and the clipped updates.
The knobs are `tokalign.methods.ppo.Config`; the maths is `tokalign.losses`.
"""

from __future__ import annotations

import importlib
import json
import math
import shutil
import time
from dataclasses import dataclass, fields
from typing import Any, Callable

import torch
from torch import nn

from tokalign.checkpoint import (
    COMPLETE_MARKER,
    complete_checkpoints,
    latest_checkpoint,
    save_atomic,
    seal,
)
from tokalign.config import option
from tokalign.data.loading import task_of
from tokalign.losses import (
    kl_penalty_rewards,
    macro_gae,
    masked_mean,
    ppo_policy_loss,
    ppo_value_loss,
    segment_macro_actions,
    whiten,
)
from tokalign.methods.ppo import Config, settings

# ---------------------------------------------------------------------------------------------
# Models


class Critic(nn.Module):
    """Per-token values: a sequence classifier's scalar ``score`` head applied at every position.

    Wrapping a ``*ForSequenceClassification`` keeps the critic a standard HF checkpoint, so it
    starts from a reward model (backbone + head) or from the policy (new head) alike.
    """

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask, position_ids, num_response: int) -> torch.Tensor:
        backbone = getattr(self.model, self.model.base_model_prefix)
        hidden = backbone(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False
        ).last_hidden_state
        # V_t is read at the position before response token t (the state x, y_<t).
        return self.model.score(hidden[:, -num_response - 1 : -1]).squeeze(-1).float()


def resolve_reward_model(path: str) -> str:
    """A model dir, or a run dir of method=reward (its ``model/``)."""
    from pathlib import Path

    p = Path(path).expanduser()
    if (p / "model" / "config.json").exists():
        return str(p / "model")
    if (p / "config.json").exists():
        return str(p)
    raise FileNotFoundError(f"method.reward_model={path}: neither a model dir nor a run dir with model/")


def load_critic(path: str, dtype: str, pad_token_id: int, trust_remote_code: bool = False) -> Critic:
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(
        path, num_labels=1, dtype=getattr(torch, dtype) if dtype != "auto" else "auto",
        trust_remote_code=trust_remote_code,
    )
    model.config.pad_token_id = pad_token_id
    return Critic(model)


def reward_function(cfg, m: Config) -> Callable:
    """The programmatic reward or reward-model scorer named by ``method.reward``."""
    from tokalign import rewards

    if m.reward == "task":
        task = task_of(cfg.dataset)
        if task not in rewards.TASK_REWARDS:
            raise ValueError(f"dataset {cfg.dataset.name!r} has no programmatic reward: set method.reward")
        return rewards.TASK_REWARDS[task]
    if m.reward in ("gold", "exact_match"):
        return {"gold": rewards.gold_reward, "exact_match": rewards.exact_match}[m.reward]
    if m.reward == "model":
        if not m.reward_model:
            raise ValueError("method.reward=model needs method.reward_model=<model dir or reward run dir>")
        return rewards.RewardModelScorer(resolve_reward_model(m.reward_model))
    module, _, name = m.reward.rpartition(":") if ":" in m.reward else m.reward.rpartition(".")
    if not module:
        raise ValueError(f"method.reward={m.reward!r}: expected task|gold|exact_match|model or module:function")
    return getattr(importlib.import_module(module), name)


def response_logits(model, input_ids, attention_mask, position_ids, num_response: int) -> torch.Tensor:
    """(B, R, V) logits predicting the R response tokens (the last R columns of input_ids)."""
    out = model(
        input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
        logits_to_keep=num_response + 1, use_cache=False,
    )
    return out.logits[:, :-1].float()


def token_logps(logits: torch.Tensor, tokens: torch.Tensor, temperature: float) -> torch.Tensor:
    """log π(y_t) of the sampling distribution (logits / temperature), (B, R)."""
    logits = logits / temperature
    return logits.gather(-1, tokens.unsqueeze(-1)).squeeze(-1) - logits.logsumexp(-1)


def entropy(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Full-vocabulary entropy of the sampling distribution at each position."""
    logp = torch.log_softmax(logits / temperature, -1)
    return -(logp.exp() * logp).sum(-1)


# ---------------------------------------------------------------------------------------------
# Rollout


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

    @property
    def position_ids(self) -> torch.Tensor:
        return (self.attention_mask.cumsum(-1) - 1).clamp(min=0)

    def rows(self, index: torch.Tensor) -> "Rollout":
        return Rollout(**{f.name: getattr(self, f.name)[index] for f in fields(self)})


def response_mask(responses: torch.Tensor, eos_token_id: int) -> torch.Tensor:
    """1 up to and including the first EOS (everything when there is none), 0 after."""
    eos = (responses == eos_token_id).long()
    return ((eos.cumsum(-1) - eos) == 0).long()


def segments(m: Config, mask, ref_logps, responses, tokenizer, seed: int, nlp=None) -> torch.Tensor:
    """Macro actions of each response under ``m.termination`` (METHODS.md §3)."""
    texts = None
    if m.termination == "parsing":
        texts = [tokenizer.convert_ids_to_tokens(r[v.bool()].tolist()) for r, v in zip(responses, mask)]
    return segment_macro_actions(
        mask, m.termination, n=m.n, lengths=tuple(m.lengths), seed=seed,
        token_ppl=-ref_logps if m.termination == "ppl" else None,  # NLL: monotone in perplexity
        texts=texts, max_len=m.max_segment_len, nlp=nlp,
    )


def advantages_and_returns(m: Config, rewards, old_values, mask, segment_ids):
    """Macro GAE, with the optional whitening of rewards (before) and advantages (after)."""
    if m.whiten_rewards:
        rewards = whiten(rewards, mask, shift_mean=False)
    advantages, returns = macro_gae(
        rewards, old_values, mask, segment_ids, gamma=m.gamma, lam=m.lam,
        value_weighting=m.value_weighting, reward_aggregation=m.reward_aggregation,
    )
    if m.whiten_advantages:
        advantages = whiten(advantages, mask)
    return advantages, returns


@torch.no_grad()
def rollout(policy, ref, critic, reward_fn, tokenizer, batch: dict, m: Config, *, forward_batch: int, seed: int,
            max_prompt_len: int, device, nlp=None) -> Rollout:
    from tokalign.generation import as_messages

    texts = [tokenizer.apply_chat_template(as_messages(p), tokenize=False, add_generation_prompt=True)
             for p in batch["prompt"]]
    enc = tokenizer(texts, return_tensors="pt", padding=True, padding_side="left", add_special_tokens=False)
    prompt_ids, prompt_mask = enc["input_ids"][:, -max_prompt_len:], enc["attention_mask"][:, -max_prompt_len:]
    prompt_ids, prompt_mask = prompt_ids.to(device), prompt_mask.to(device)
    was_training = policy.training
    policy.eval()
    sequences = policy.generate(
        input_ids=prompt_ids, attention_mask=prompt_mask, max_new_tokens=m.max_new_tokens, do_sample=True,
        temperature=m.temperature, top_k=m.top_k, top_p=m.top_p,
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
    )
    policy.train(was_training)
    responses = sequences[:, prompt_ids.shape[1]:]
    mask = response_mask(responses, tokenizer.eos_token_id)
    responses = responses.masked_fill(mask == 0, tokenizer.pad_token_id)
    input_ids = torch.cat([prompt_ids, responses], 1)
    attention_mask = torch.cat([prompt_mask, mask], 1)
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    num_response = responses.shape[1]

    old_logps, ref_logps, old_values = [], [], []
    for i in range(0, len(input_ids), forward_batch):
        part = (input_ids[i : i + forward_batch], attention_mask[i : i + forward_batch], position_ids[i : i + forward_batch])
        tokens = responses[i : i + forward_batch]
        old_logps.append(token_logps(response_logits(policy, *part, num_response), tokens, m.temperature))
        ref_logps.append(token_logps(response_logits(ref, *part, num_response), tokens, m.temperature))
        old_values.append(critic(*part, num_response))
    old_logps, ref_logps, old_values = torch.cat(old_logps), torch.cat(ref_logps), torch.cat(old_values)

    completions = tokenizer.batch_decode(responses, skip_special_tokens=True)
    columns = {k: v for k, v in batch.items() if k != "prompt"}
    scores = torch.tensor(reward_fn(list(batch["prompt"]), completions, **columns), dtype=torch.float32, device=device)
    if m.score_clip is not None:
        scores = scores.clamp(-m.score_clip, m.score_clip)
    rewards = kl_penalty_rewards(old_logps, ref_logps, mask, scores, kl_coef=m.kl_coef, estimator=m.kl_estimator)
    segment_ids = segments(m, mask, ref_logps, responses, tokenizer, seed, nlp)
    advantages, returns = advantages_and_returns(m, rewards, old_values, mask, segment_ids)
    return Rollout(input_ids, attention_mask, responses, mask, old_logps, ref_logps, old_values, scores, rewards,
                   segment_ids, advantages, returns)


def rollout_metrics(r: Rollout) -> dict[str, float]:
    valid = r.mask.bool()
    residual_var = masked_mean((r.returns - r.old_values - masked_mean(r.returns - r.old_values, valid)) ** 2, valid)
    returns_var = masked_mean((r.returns - masked_mean(r.returns, valid)) ** 2, valid)
    num_segments = (r.segment_ids.max(-1).values + 1).sum()
    return {
        "reward": r.scores.mean().item(),
        "rlhf_reward": r.rewards.sum(-1).mean().item(),
        "kl": torch.where(valid, r.old_logps - r.ref_logps, 0).sum(-1).mean().item(),
        "explained_variance": (1 - residual_var / returns_var.clamp(min=1e-8)).item(),
        "macro_length": (valid.sum() / num_segments.clamp(min=1)).item(),
        "response_length": valid.sum(-1).float().mean().item(),
    }


# ---------------------------------------------------------------------------------------------
# Update


UPDATE_METRICS = {
    "policy/loss": "policy_loss", "value/loss": "value_loss", "policy/entropy": "entropy",
    "policy/clipfrac": "clipfrac", "policy/approx_kl": "approx_kl", "value/clipfrac": "value_clipfrac",
}


def ppo_update(policy, critic, actor_opt, critic_opt, r: Rollout, m: Config, *, micro_batch: int, accumulation: int,
               max_grad_norm: float, accelerator) -> dict[str, float]:
    """``num_ppo_epochs`` passes over the rollout in ``num_mini_batches`` shuffled minibatches."""
    size = len(r.input_ids)
    mini = size // m.num_mini_batches
    num_response = r.responses.shape[1]
    totals: dict[str, float] = {}
    count = 0
    for _ in range(m.num_ppo_epochs):
        order = torch.randperm(size, device=r.input_ids.device)
        for start in range(0, size, mini):
            for micro in range(start, start + mini, micro_batch):
                part = r.rows(order[micro : micro + micro_batch])
                inputs = (part.input_ids, part.attention_mask, part.position_ids)
                logits = response_logits(policy, *inputs, num_response)
                logps = token_logps(logits, part.responses, m.temperature)
                policy_loss, stats = ppo_policy_loss(
                    logps, part.old_logps, part.advantages, part.mask, clip_eps=m.clip_eps,
                    segment_ids=part.segment_ids, level=m.policy_loss_level,
                )
                accelerator.backward(policy_loss / accumulation)
                values = critic(*inputs, num_response)
                value_loss, value_stats = ppo_value_loss(
                    values, part.old_values, part.returns, part.mask, clip_eps_value=m.clip_eps_value
                )
                accelerator.backward(value_loss / accumulation)
                if not (math.isfinite(policy_loss.item()) and math.isfinite(value_loss.item())):
                    from tokalign.methods.common import NonFiniteLossError

                    raise NonFiniteLossError(f"PPO loss became non-finite (policy {policy_loss.item()}, value "
                                             f"{value_loss.item()}); lower trainer.learning_rate")
                stats = {**stats, **value_stats, "policy/loss": policy_loss.detach(), "value/loss": value_loss.detach(),
                         "policy/entropy": masked_mean(entropy(logits.detach(), m.temperature), part.mask)}
                for key, value in stats.items():
                    totals[key] = totals.get(key, 0.0) + float(value)
                count += 1
            for model, opt in ((policy, actor_opt), (critic, critic_opt)):
                if max_grad_norm > 0:
                    accelerator.clip_grad_norm_(model.parameters(), max_grad_norm)
                opt.step()
                opt.zero_grad(set_to_none=True)
    return {UPDATE_METRICS[key]: v / count for key, v in totals.items()}


# ---------------------------------------------------------------------------------------------
# Checkpoints: accelerate's state (models, optimizers, RNG, schedulers) + a completion marker


def save_checkpoint(accelerator, root, step: int, keep: int) -> None:
    """One process: written aside and moved into place. Several: every rank writes its part in
    place (accelerate saves each rank's RNG), then rank 0 seals the directory."""
    dest = root / f"checkpoint-{step}"

    def write(path):
        accelerator.save_state(str(path))
        if accelerator.is_main_process:
            (path / COMPLETE_MARKER).write_text(json.dumps({"global_step": step}))

    if accelerator.num_processes == 1:
        save_atomic(dest, write)
    else:
        write(dest)
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            seal(dest)
    if not accelerator.is_main_process:
        return
    done = complete_checkpoints(root)
    for old in done[: max(0, len(done) - keep)] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)


def load_checkpoint(accelerator, root) -> int:
    """Restore the latest complete checkpoint; returns its step (0 when there is none)."""
    path = latest_checkpoint(root)
    if path is None:
        return 0
    accelerator.load_state(str(path))
    return int(json.loads((path / COMPLETE_MARKER).read_text())["global_step"])


# ---------------------------------------------------------------------------------------------
# The loop


def prompt_batch(data, step: int, size: int, seed: int, rank: int = 0, world: int = 1) -> dict:
    """This rank's prompts of iteration ``step`` (0-based): its slice of the global batch, a fresh
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


@dataclass
class Trainer:
    """Everything an iteration needs: the run, settings, models, optimizers and schedulers."""

    run: Any
    m: Config
    accelerator: Any
    policy: Any
    ref: Any
    critic: Any
    actor_opt: Any
    critic_opt: Any
    schedulers: list
    reward_fn: Callable
    nlp: Any
    rollout_size: int
    steps: int


def setup(run) -> Trainer:
    from accelerate import Accelerator
    from transformers import get_scheduler

    cfg, t = run.cfg, run.cfg.trainer
    m = settings(cfg.method)
    precision = option(t.precision)
    # cpu=True on CPU-only machines: otherwise accelerate treats CPU ranks as unrelated single processes
    accelerator = Accelerator(mixed_precision="no" if precision == "fp32" else precision, cpu=not torch.cuda.is_available())
    rollout_size = t.per_device_batch_size * t.gradient_accumulation_steps * m.num_mini_batches
    global_rollout = rollout_size * accelerator.num_processes
    steps = t.max_steps if t.max_steps > 0 else math.ceil(t.num_epochs * len(run.train_data) / global_rollout)
    updates = steps * m.num_ppo_epochs * m.num_mini_batches

    policy, ref = run.load_policy(), run.load_policy()
    ref.requires_grad_(False).eval()
    use_rm_critic = m.critic_init == "reward_model" or (m.critic_init == "auto" and m.reward == "model")
    critic_path = resolve_reward_model(m.reward_model) if use_rm_critic else run.model_path
    critic = load_critic(critic_path, cfg.model.dtype, run.tokenizer.pad_token_id, cfg.model.trust_remote_code)
    for model in (policy, critic.model):
        for module in model.modules():  # PPO ratios need identical rollout and update forwards
            if isinstance(module, nn.Dropout):
                module.p = 0.0
        if t.gradient_checkpointing:
            model.gradient_checkpointing_enable()
    reward_fn = reward_function(cfg, m)
    if hasattr(reward_fn, "model"):
        reward_fn.model.to(accelerator.device)
    nlp = None
    if m.termination == "parsing" and m.spacy_model:
        import spacy

        nlp = spacy.load(m.spacy_model)

    def optimizer(model, lr):
        return torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=t.weight_decay)

    critic_lr = m.critic_learning_rate if m.critic_learning_rate is not None else t.learning_rate
    actor_opt, critic_opt = optimizer(policy, t.learning_rate), optimizer(critic, critic_lr)
    schedulers = [
        get_scheduler(t.lr_scheduler, opt, num_warmup_steps=math.ceil(t.warmup_ratio * updates), num_training_steps=updates)
        for opt in (actor_opt, critic_opt)
    ]
    policy, critic, actor_opt, critic_opt = accelerator.prepare(policy, critic, actor_opt, critic_opt)
    ref = ref.to(accelerator.device)
    for scheduler in schedulers:  # stepped once per update here, so kept out of accelerate's scaling
        accelerator.register_for_checkpointing(scheduler)
    return Trainer(run, m, accelerator, policy, ref, critic, actor_opt, critic_opt, schedulers, reward_fn, nlp,
                   rollout_size, steps)


def iteration(tr: Trainer, step: int) -> dict[str, float]:
    """One PPO iteration (0-based ``step``): rollout, macro GAE, update; returns its metrics."""
    cfg, t, m = tr.run.cfg, tr.run.cfg.trainer, tr.m
    acc = tr.accelerator
    batch = prompt_batch(tr.run.train_data, step, tr.rollout_size, cfg.seed, acc.process_index, acc.num_processes)
    tick = time.perf_counter()
    with tr.accelerator.autocast():  # the unwrapped policy under the same precision as its updates
        r = rollout(
            tr.accelerator.unwrap_model(tr.policy), tr.ref, tr.critic, tr.reward_fn, tr.run.tokenizer, batch, m,
            forward_batch=t.per_device_batch_size,
            seed=cfg.seed + (step * acc.num_processes + acc.process_index) * tr.rollout_size,
            max_prompt_len=max(1, t.max_length - m.max_new_tokens), device=tr.accelerator.device, nlp=tr.nlp,
        )
    rollout_s = time.perf_counter() - tick
    tick = time.perf_counter()
    stats = ppo_update(
        tr.policy, tr.critic, tr.actor_opt, tr.critic_opt, r, m, micro_batch=t.per_device_batch_size,
        accumulation=t.gradient_accumulation_steps, max_grad_norm=t.max_grad_norm, accelerator=tr.accelerator,
    )
    for _ in range(m.num_ppo_epochs * m.num_mini_batches):  # one scheduler step per optimizer step
        for scheduler in tr.schedulers:
            scheduler.step()
    update_s = time.perf_counter() - tick
    tokens = r.mask.sum().item() * acc.num_processes
    row = {
        **rollout_metrics(r), **stats,
        "rollout_tokens_per_s": tokens / rollout_s,
        "train_tokens_per_s": tokens * m.num_ppo_epochs / update_s,
        "rollout_s": rollout_s, "update_s": update_s,
        "lr": tr.schedulers[0].get_last_lr()[0], "critic_lr": tr.schedulers[1].get_last_lr()[0],
    }
    if acc.num_processes > 1:  # the mean over ranks (the timings: the mean rank's)
        means = acc.reduce(torch.tensor(list(row.values()), device=acc.device), reduction="mean")
        row = dict(zip(row, means.tolist()))
    return row


def fit(run) -> dict:
    from tokalign.checkpoint import save_pretrained_atomic

    t = run.cfg.trainer
    tr = setup(run)
    accelerator = tr.accelerator
    checkpoints = run.dir / "checkpoints"
    start = load_checkpoint(accelerator, checkpoints) if run.resume else 0
    history: list[dict] = []
    window: list[dict] = []
    for step in range(start, tr.steps):
        row = iteration(tr, step)
        history.append(row)
        window.append(row)
        done = step + 1
        if done % max(1, t.logging_steps) == 0 or done == tr.steps:
            run.tracker.log({f"train/{k}": sum(w[k] for w in window) / len(window) for k in row}, step=done)
            window = []
        if t.save_steps > 0 and done % t.save_steps == 0:
            accelerator.wait_for_everyone()
            save_checkpoint(accelerator, checkpoints, done, t.save_total_limit)

    run.save_model(accelerator.unwrap_model(tr.policy), run.tokenizer)
    if accelerator.is_main_process:
        save_pretrained_atomic(accelerator.unwrap_model(tr.critic).model, run.tokenizer, run.dir / "critic")
    first, last = (history[0], history[-1]) if history else ({}, {})
    return {
        "train/steps": tr.steps,
        "train/reward_first": first.get("reward"),
        "train/reward_last": last.get("reward"),
        "train/kl_last": last.get("kl"),
        "train/macro_length": last.get("macro_length"),
    }
