#!/usr/bin/env bash
# MA-RLHF's main comparison (PPO vs MA-PPO with fixed n=5, ppl and parsing macro actions, three
# seeds) and its tokalign table with training curves.
#   scripts/reproduce/reproduce_ma_rlhf.sh          # the paper: Gemma-2B and 7B on TL;DR and HH-RLHF (SFT -> RM -> PPO)
#   scripts/reproduce/reproduce_ma_rlhf.sh --toy    # the laptop twin (tiny model, toy gold reward), CPU
# Extra arguments are Hydra overrides for every run. Per-model numbers: the authors' README table
# (ernie-research/MA-RLHF): SFT and RM batch, epochs and learning rate, PPO learning rates; the rest
# of the PPO setting is conf/experiment/ma_rlhf.yaml. Their 20/40/40 split of each dataset into SFT,
# RM and RL parts is not reproduced: every stage reads the dataset's training split.
source "$(dirname "$0")/common.sh"
if $toy; then
  toy_table "MA-RLHF" \
    'metrics=[eval/gold_reward,eval/gold_reward_ref,eval/win_rate,eval/kl_ref,eval/word_salad,eval/malformed,train/reward_last,train/macro_length]' \
    'curves=[train/reward,train/kl]'
fi
every_stage=(launcher=deepspeed launcher.num_gpus=8 trainer.precision=bf16 trainer.lr_scheduler=cosine trainer.warmup_ratio=0.1
        trainer.max_steps=0)
# model: SFT (lr, epochs, per-GPU batch x accumulation = global / 8) | RM (lr, per-GPU batch) | PPO lr (actor = critic)
declare -A sft=([gemma_2b]="5e-5 3 8 8" [gemma_7b]="2e-5 1 4 4")
declare -A rm=([gemma_2b]="1e-5 8" [gemma_7b]="1e-6 16")
declare -A ppo=([gemma_2b]=1.5e-5 [gemma_7b]=1e-6)
for model in gemma_2b gemma_7b; do
  read -r sft_lr sft_epochs sft_batch sft_accumulation <<<"${sft[$model]}"
  read -r rm_lr rm_batch <<<"${rm[$model]}"
  for data in tldr hh_rlhf; do
    stage="$root/$model-$data"
    [[ $model == gemma_7b && $data == hh_rlhf ]] && rm_batch=8   # 7B: RM batch 128 on TL;DR, 64 on HH-RLHF
    # 1. SFT on the preferred responses, 2. a reward model on the pairs, 3. the PPO sweep.
    tokalign train method=sft model="$model" dataset="$data" dataset.columns.completion=chosen "${every_stage[@]}" \
      trainer.learning_rate="$sft_lr" trainer.num_epochs="$sft_epochs" trainer.per_device_batch_size="$sft_batch" \
      trainer.gradient_accumulation_steps="$sft_accumulation" hydra.run.dir="$stage/sft" "$@"
    tokalign train method=reward model="$model" model.path="$stage/sft/model" dataset="$data" "${every_stage[@]}" \
      trainer.learning_rate="$rm_lr" trainer.num_epochs=1 trainer.per_device_batch_size="$rm_batch" \
      hydra.run.dir="$stage/rm" "$@"
    tokalign train -m experiment=ma_rlhf model="$model" dataset="$data" model.path="$stage/sft/model" \
      method.reward="model:$stage/rm" trainer.learning_rate="${ppo[$model]}" method.critic_learning_rate="${ppo[$model]}" \
      hydra.sweep.dir="$stage/ppo" "$@"
  done
done
tokalign table runs="$root" out="$root/table" title="MA-RLHF" 'group_by=[model.name,dataset.name,arm]' \
  'metrics=[eval/rm_score,eval/rm_win_rate,train/reward_last]' 'curves=[train/reward,train/kl]'
