#!/usr/bin/env bash
# MA-RLHF's main comparison (PPO vs MA-PPO with fixed n=5, ppl and parsing macro actions, three
# seeds) and its tokalign table with training curves.
#   scripts/reproduce_ma_rlhf.sh          # the paper: Gemma-2B and 7B on TL;DR and HH-RLHF (SFT -> RM -> PPO)
#   scripts/reproduce_ma_rlhf.sh --toy    # the laptop twin (tiny model, toy gold reward), CPU
# Extra arguments are Hydra overrides for every run.
set -euo pipefail
toy=false
if [[ "${1:-}" == "--toy" ]]; then toy=true; shift; fi
root=${ROOT:-multirun/ma_rlhf$($toy && echo _toy)/$(date +%Y-%m-%d_%H-%M-%S)}
if $toy; then
  tokalign train -m experiment=ma_rlhf_toy hydra.sweep.dir="$root" "$@"
  tokalign table runs="$root" out="$root/table" title="MA-RLHF (toy)" \
    'metrics=[eval/gold_reward,eval/win_rate,train/reward_last,train/macro_length]' 'curves=[train/reward,train/kl]'
  exit
fi
for model in gemma_2b gemma_7b; do
  for data in tldr hh_rlhf; do
    stage="$root/$model-$data"
    # 1. SFT on the preferred responses, 2. a reward model on the pairs, 3. the PPO sweep.
    tokalign train method=sft model="$model" dataset="$data" dataset.columns.completion=chosen \
      launcher=deepspeed launcher.num_gpus=8 trainer.precision=bf16 trainer.learning_rate=1e-5 trainer.max_steps=0 \
      hydra.run.dir="$stage/sft" "$@"
    tokalign train method=reward model="$model" model.path="$stage/sft/model" dataset="$data" \
      launcher=deepspeed launcher.num_gpus=8 trainer.precision=bf16 trainer.learning_rate=1e-5 trainer.max_steps=0 \
      hydra.run.dir="$stage/rm" "$@"
    tokalign train -m experiment=ma_rlhf model="$model" dataset="$data" model.path="$stage/sft/model" \
      method.reward="model:$stage/rm" hydra.sweep.dir="$stage/ppo" "$@"
  done
done
tokalign table runs="$root" out="$root/table" title="MA-RLHF" 'group_by=[model.name,dataset.name,arm]' \
  'metrics=[eval/rm_score,eval/rm_win_rate,train/reward_last]' 'curves=[train/reward,train/kl]'
