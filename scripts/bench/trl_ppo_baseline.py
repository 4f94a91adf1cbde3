"""TRL 1.12's PPOTrainer (`trl.experimental.ppo`) timed per iteration: the baseline of bench_ppo.py.

Runs in a separate environment holding trl==1.12.0 (the last release with a PPO trainer),
never tokalign's; it imports only torch, transformers, datasets and trl:

    /tmp/trl112/bin/python scripts/bench/trl_ppo_baseline.py --policy DIR --reward-model DIR --out DIR

Same settings as tokalign's side of the benchmark: the reward model also initialises the
critic, toy_pref-style prompts, one PPO epoch, one minibatch, a fixed response length (TRL
generates `response_length` tokens when no stop token is set), temperature 0.8, no top-k.
Writes the seconds of every iteration (rollout + update) to OUT/iterations.json.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

TEMPLATES = ("Write a short note about the {}.", "Describe the {} in a few words.", "Tell me about the {}.")
TOPICS = ("garden", "river", "city", "robot", "music", "winter", "ocean", "forest", "kitchen", "school")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--policy", required=True)
    p.add_argument("--reward-model", required=True)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--length", type=int, default=32)
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--out", required=True)
    args = p.parse_args()

    import datasets
    import torch
    from transformers import (
        AutoModelForCausalLM,
        AutoModelForSequenceClassification,
        AutoTokenizer,
        TrainerCallback,
    )
    from trl.experimental.ppo import PPOConfig, PPOTrainer

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(args.policy, padding_side="left")
    rng = random.Random(0)
    prompts = [rng.choice(TEMPLATES).format(rng.choice(TOPICS)) for _ in range(args.batch * args.steps)]
    ids = [
        tokenizer.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True, tokenize=True)
        for q in prompts
    ]
    ids = [x["input_ids"] if isinstance(x, dict) or hasattr(x, "keys") else x for x in ids]
    data = datasets.Dataset.from_dict({"input_ids": ids})

    def rm():
        model = AutoModelForSequenceClassification.from_pretrained(args.reward_model, num_labels=1)
        model.config.pad_token_id = tokenizer.pad_token_id
        return model

    out = Path(args.out)
    config = PPOConfig(
        output_dir=str(out),
        per_device_train_batch_size=args.batch,
        gradient_accumulation_steps=1,
        num_mini_batches=1,
        num_ppo_epochs=1,
        local_rollout_forward_batch_size=args.batch,
        total_episodes=args.batch * args.steps,
        response_length=args.length,
        temperature=0.8,
        kl_coef=0.05,
        learning_rate=args.lr,
        lr_scheduler_type="cosine",
        num_sample_generations=0,
        report_to="none",
        save_strategy="no",
        logging_steps=1,
        seed=0,
        stop_token=None,
        disable_tqdm=True,
        bf16=False,
    )
    ticks: list[float] = []

    class Timer(TrainerCallback):
        def on_train_begin(self, *a, **k):
            ticks.append(time.perf_counter())

        def on_step_end(self, *a, **k):
            ticks.append(time.perf_counter())

    trainer = PPOTrainer(
        args=config,
        processing_class=tokenizer,
        model=AutoModelForCausalLM.from_pretrained(args.policy),
        ref_model=AutoModelForCausalLM.from_pretrained(args.policy),
        reward_model=rm(),
        value_model=rm(),
        train_dataset=data,
        callbacks=[Timer()],
    )
    trainer.train()
    out.mkdir(parents=True, exist_ok=True)
    (out / "iterations.json").write_text(json.dumps([b - a for a, b in zip(ticks, ticks[1:])]))


if __name__ == "__main__":
    main()
