"""The PPO loop (MA-RLHF macro actions included), on accelerate: one process, DDP or DeepSpeed ZeRO.

`fit(run)` drives it: `setup` (policy, frozen reference, critic, reward, optimizers), then per
iteration the rollout, scoring, advantage and update stages, logging, and sealed checkpoints
that `resume=auto` continues exactly (models, optimizers, schedulers, RNG, step, history).
`engines` holds what differs between backends.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Callable

import torch
from omegaconf import OmegaConf
from torch import nn

from tokalign import rewards
from tokalign.artifacts.checkpoint import latest_checkpoint
from tokalign.artifacts.tracking import say
from tokalign.bases.ppo.advantages import Advantages, Whiten, advantages_and_returns, segments
from tokalign.bases.ppo.checkpoint import load_checkpoint, save_checkpoint
from tokalign.bases.ppo.config import reward_spec, settings
from tokalign.bases.ppo.engines import (
    Trained,
    all_finite,
    generation_model,
    make_accelerator,
    prepare_frozen,
    rollout_whiten,
    whole_state_dict,
)
from tokalign.bases.ppo.models import Critic, load_critic
from tokalign.bases.ppo.rollout import Rollout, colocated_engine, prompt_batch, sample
from tokalign.bases.ppo.scoring import Scored, TokenRewards, kl_score_rewards, score
from tokalign.bases.ppo.update import ppo_update
from tokalign.cluster import preemption
from tokalign.config import option
from tokalign.errors import DivergenceError, ModelError
from tokalign.losses import masked_mean
from tokalign.modeling import lora


@dataclass
class Trainer:
    """Everything an iteration needs: the run, settings, models, their optimizer steps and schedulers."""

    run: Any
    m: Any
    accelerator: Any
    policy: Any
    frozen: dict
    critic: Critic
    actor_step: Trained
    critic_step: Trained
    schedulers: list
    reward_fn: Callable
    token_rewards: TokenRewards
    whiten: Whiten
    nlp: Any
    rollout_size: int
    steps: int
    engine: Any = None  # a colocated vLLM engine (rollout.engine=vllm); None: the policy generates
    advantages: Advantages = advantages_and_returns
    # (scored, mask, m) -> the mask of the tokens trained on (a method may keep tokens or rows out); None: all
    train_mask: Callable[[Scored, torch.Tensor, Any], torch.Tensor] | None = None


def setup(
    run,
    *,
    frozen_extra: dict | None = None,
    token_rewards: TokenRewards = kl_score_rewards,
    advantages: Advantages = advantages_and_returns,
    train_mask: Callable[[Scored, torch.Tensor, Any], torch.Tensor] | None = None,
) -> Trainer:
    """Models and optimizers; `frozen_extra` adds frozen models (loaded whole) whose log-probs `token_rewards`
    reads; `advantages` replaces the advantage stage and `train_mask` narrows the trained tokens."""
    from transformers import get_scheduler

    cfg, t = run.cfg, run.cfg.trainer
    m = settings(cfg.method, run.method.config)
    accelerator = make_accelerator(cfg)
    rollout_size = t.per_device_batch_size * t.gradient_accumulation_steps * m.num_mini_batches
    steps = (
        t.max_steps
        if t.max_steps > 0
        else math.ceil(t.num_epochs * len(run.train_data) / (rollout_size * accelerator.num_processes))
    )
    updates = steps * m.num_ppo_epochs * m.num_mini_batches

    spec = reward_spec(cfg.method)
    reward_fn = rewards.reward_function(spec, cfg.dataset, "method.reward")  # first: a wrong reward fails fast
    if hasattr(reward_fn, "model"):
        reward_fn.model = prepare_frozen(reward_fn.model, accelerator)
    # With LoRA the reference is the policy with its adapters disabled: no second copy of the base.
    shared_ref = cfg.model.lora.enabled and cfg.launcher.name != "deepspeed"
    policy, ref = run.load_policy(), None if shared_ref else run.load_policy()
    rm_path = rewards.reward_model_path(spec)
    use_rm = m.critic_init == "reward_model" or (m.critic_init == "auto" and rm_path is not None)
    if (
        use_rm
        and cfg.model.lora.enabled
        and lora.full_model_dir(rm_path) == str(rm_path)
        and lora.is_adapter_dir(rm_path)
    ):
        raise ModelError(  # the critic's own adapter would name the reward model's base, not the reward model
            f"the critic starts from the LoRA reward model {rm_path}, which has no merged copy: train it with "
            "model.lora.merge=true, or set method.critic_init=policy"
        )
    critic = load_critic(
        rm_path if use_rm else run.model_path,
        option(cfg.model.dtype),
        run.tokenizer.pad_token_id,
        cfg.model.trust_remote_code,
    )
    # LoRA: the policy trains adapters; the critic its own adapters and value head (tokalign.bases.ppo.models)
    policy = lora.wrap(policy, cfg.model.lora, lora.CAUSAL_LM, t.gradient_checkpointing)
    critic.model = lora.wrap(critic.model, cfg.model.lora, lora.SEQ_CLS, t.gradient_checkpointing)
    if accelerator.is_main_process:
        say(f"{lora.describe_parameters(policy, 'policy')}; {lora.describe_parameters(critic, 'critic')}")
    for model in (policy, critic.model):
        for module in model.modules():  # PPO ratios need identical rollout and update forwards (LoRA's dropout too)
            if isinstance(module, nn.Dropout):
                module.p = 0.0
        if t.gradient_checkpointing:
            model.gradient_checkpointing_enable()
    nlp = None
    if m.termination == "parsing" and m.spacy_model:
        import spacy

        nlp = spacy.load(m.spacy_model)

    def optimizer(model, lr):
        trained = [p for p in model.parameters() if p.requires_grad]
        return torch.optim.AdamW(trained, lr=lr, weight_decay=t.weight_decay, betas=tuple(t.adam_betas))

    critic_lr = m.critic_learning_rate if m.critic_learning_rate is not None else t.learning_rate
    actor_opt, critic_opt = optimizer(policy, t.learning_rate), optimizer(critic, critic_lr)
    schedulers = [
        get_scheduler(
            option(t.lr_scheduler),
            opt,
            num_warmup_steps=math.ceil(t.warmup_ratio * updates),
            num_training_steps=updates,
            scheduler_specific_kwargs=OmegaConf.to_container(t.lr_scheduler_kwargs),
        )
        for opt in (actor_opt, critic_opt)
    ]
    # One model per prepare: under DeepSpeed each becomes its own engine.
    policy, actor_opt = accelerator.prepare(policy, actor_opt)
    critic, critic_opt = accelerator.prepare(critic, critic_opt)
    frozen = {
        name: prepare_frozen(model, accelerator)
        for name, model in {"ref": ref, **(frozen_extra or {})}.items()
        if model is not None
    }
    if shared_ref:
        frozen = {"ref": lora.BaseOnly(accelerator.unwrap_model(policy)), **frozen}
    for scheduler in schedulers:  # stepped once per update here, so kept out of accelerate's scaling
        accelerator.register_for_checkpointing(scheduler)
    stepping = dict(accumulation=t.gradient_accumulation_steps, max_grad_norm=t.max_grad_norm)
    actor_step = Trained(policy, actor_opt, accelerator, what="policy", **stepping)
    critic_step = Trained(critic, critic_opt, accelerator, what="critic", **stepping)
    return Trainer(
        run,
        m,
        accelerator,
        policy,
        frozen,
        critic,
        actor_step,
        critic_step,
        schedulers,
        reward_fn,
        token_rewards,
        rollout_whiten(accelerator),
        nlp,
        rollout_size,
        steps,
        colocated_engine(run, max_num_seqs=rollout_size),
        advantages,
        train_mask,
    )


def rollout(tr: Trainer, batch: dict, seed: int, step: int = 0) -> Rollout:
    """Sample, score and compute advantages for one batch of prompts, at iteration `step` (0-based)."""
    t, m = tr.run.cfg.trainer, tr.m
    with generation_model(tr.policy, tr.accelerator) as policy:
        input_ids, attention_mask, responses, mask = sample(
            policy,
            tr.run.tokenizer,
            list(batch["prompt"]),
            m,
            max_prompt_len=max(1, t.max_length - m.max_new_tokens),
            device=tr.accelerator.device,
            engine=tr.engine,
            version=step,
            seed=seed,
        )
    s = score(
        tr.accelerator.unwrap_model(tr.policy),
        tr.frozen,
        tr.critic,
        tr.reward_fn,
        tr.run.tokenizer,
        batch,
        input_ids,
        attention_mask,
        responses,
        mask,
        m,
        forward_batch=t.per_device_batch_size,
    )
    if tr.train_mask is not None:
        mask = tr.train_mask(s, mask, m)
    token_rewards, reward_metrics = tr.token_rewards(s, mask, m)
    segment_ids = segments(m, mask, s.logps["ref"], responses, tr.run.tokenizer, seed, tr.nlp)
    advantages, returns = tr.advantages(m, token_rewards, s.values, mask, segment_ids, tr.whiten)
    return Rollout(
        input_ids,
        attention_mask,
        responses,
        mask,
        s.old_logps,
        s.logps["ref"],
        s.values,
        s.scores,
        token_rewards,
        segment_ids,
        advantages,
        returns,
        reward_metrics,
    )


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
        **{key: float(value) for key, value in r.metrics.items()},
    }


def _check_rollout(row: dict[str, float], step: int, kl_limit: float) -> None:
    bad = {k: row[k] for k in ("reward", "kl", "rlhf_reward") if not math.isfinite(row[k])}
    if bad or row["kl"] > kl_limit:
        what = ", ".join(f"{k} {v}" for k, v in bad.items()) or f"kl {row['kl']:.4g} > method.kl_limit={kl_limit}"
        raise DivergenceError(
            f"the rollout of iteration {step + 1} diverged ({what}); nothing was saved. "
            "Lower trainer.learning_rate; resume=auto continues the last good checkpoint"
        )


def iteration(tr: Trainer, step: int) -> dict[str, float]:
    """One PPO iteration (0-based `step`): rollout, macro GAE, update; returns its metrics."""
    cfg, t, m, acc = tr.run.cfg, tr.run.cfg.trainer, tr.m, tr.accelerator
    batch = prompt_batch(tr.run.train_data, step, tr.rollout_size, cfg.seed, acc.process_index, acc.num_processes)
    tick = time.perf_counter()
    with acc.autocast():  # the unwrapped policy under the same precision as its updates
        r = rollout(
            tr, batch, seed=cfg.seed + (step * acc.num_processes + acc.process_index) * tr.rollout_size, step=step
        )
    rollout_s = time.perf_counter() - tick
    metrics = rollout_metrics(r)
    _check_rollout(metrics, step, m.kl_limit)
    tick = time.perf_counter()
    stats = ppo_update(tr.actor_step, tr.critic_step, r, m, micro_batch=t.per_device_batch_size)
    for _ in range(m.num_ppo_epochs * m.num_mini_batches):  # one scheduler step per optimizer step
        for scheduler in tr.schedulers:
            scheduler.step()
    update_s = time.perf_counter() - tick
    tokens = r.mask.sum().item() * acc.num_processes
    row = {
        **metrics,
        **stats,
        "rollout_tokens_per_s": tokens / rollout_s,
        "train_tokens_per_s": tokens * m.num_ppo_epochs / update_s,
        "rollout_s": rollout_s,
        "update_s": update_s,
        "lr": tr.schedulers[0].get_last_lr()[0],
        "critic_lr": tr.schedulers[1].get_last_lr()[0],
    }
    if acc.num_processes > 1:  # the mean over ranks (the timings: the mean rank's)
        means = acc.reduce(torch.tensor(list(row.values()), device=acc.device), reduction="mean")
        row = dict(zip(row, means.tolist()))
    return row


def fit(run, **setup_args) -> dict:
    """Train (resuming when asked), save the final policy and critic, return the summary's training metrics."""
    from tqdm.auto import tqdm

    t = run.cfg.trainer
    tr = setup(run, **setup_args)
    acc = tr.accelerator
    checkpoints = run.dir / "checkpoints"
    resume = run.resume_checkpoint()
    start, history = load_checkpoint(acc, resume) if resume else (0, [])
    window: list[dict] = []
    progress = tqdm(
        total=tr.steps, initial=start, desc=run.cfg.method.name, disable=not acc.is_main_process, dynamic_ncols=True
    )

    def log(done: int) -> None:
        nonlocal window
        if window:
            run.tracker.log({f"train/{k}": sum(w[k] for w in window) / len(window) for k in window[-1]}, step=done)
        window = []

    def save(done: int) -> None:
        if not all_finite(acc, tr.policy, tr.critic):
            raise DivergenceError(f"the weights became non-finite at iteration {done}; nothing was saved")
        acc.wait_for_everyone()
        save_checkpoint(acc, checkpoints, done, history, t.save_total_limit)

    preemption.install()  # a scheduler's SIGTERM stops, its SIGUSR2 checkpoints, at an iteration's end
    try:
        for step in range(start, tr.steps):
            row = iteration(tr, step)
            history.append(row)
            window.append(row)
            done = step + 1
            progress.set_postfix(reward=f"{row['reward']:.3g}", kl=f"{row['kl']:.3g}", refresh=False)
            progress.update()
            if done % max(1, t.logging_steps) == 0 or done in (1, tr.steps):  # first and last always
                log(done)
            every = run.cfg.eval.every_steps
            if every > 0 and done % every == 0:
                with generation_model(tr.policy, acc) as policy:
                    run.evaluate_during(policy, done)
            saved = t.save_steps > 0 and done % t.save_steps == 0
            if saved:
                save(done)
            request = preemption.poll()
            if request.checkpoint:
                if not saved:
                    log(done)
                    save(done)
                say(f"preempted: saved checkpoint-{done}, handing over for requeue")
                preemption.hand_over()
            if request.stop:
                last = latest_checkpoint(checkpoints)
                raise request.stopped(
                    f"at iteration {done}", f"resume=auto continues from {last}" if last else "no sealed checkpoint yet"
                )
    finally:
        preemption.uninstall()
    progress.close()
    if not all_finite(acc, tr.policy, tr.critic):  # a run shorter than save_steps was never checked
        last = latest_checkpoint(checkpoints)
        raise DivergenceError(
            f"the weights are non-finite after iteration {tr.steps}; the final model was not saved"
            + (f"; {last} is the last finite checkpoint" if last else "")
        )
    # Under ZeRO-3 every rank takes part in gathering the weights; rank 0 writes them whole.
    policy_state, critic_state = whole_state_dict(acc, tr.policy), whole_state_dict(acc, tr.critic)
    run.save_model(acc.unwrap_model(tr.policy), run.tokenizer, state_dict=policy_state)
    if acc.is_main_process:
        if critic_state is not None:  # keys of the Critic wrapper: model.<name>
            critic_state = {key.removeprefix("model."): value for key, value in critic_state.items()}
        lora.save_trained(
            acc.unwrap_model(tr.critic).model, run.tokenizer, run.dir / "critic", run.cfg.model, state_dict=critic_state
        )
    first, last = (history[0], history[-1]) if history else ({}, {})
    return {
        "train/steps": tr.steps,
        "train/reward_first": first.get("reward"),
        "train/reward_last": last.get("reward"),
        "train/kl_last": last.get("kl"),
        "train/macro_length": last.get("macro_length"),
    }
