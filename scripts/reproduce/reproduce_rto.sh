#!/usr/bin/env bash
# RTO's main comparison (PPO vs RTO, three seeds) and its tokalign table with training curves.
#   scripts/reproduce/reproduce_rto.sh RM_DIR     # the paper's setting (conf/experiment/rto.yaml), 8 GPUs
#   scripts/reproduce/reproduce_rto.sh --toy      # the laptop twin (tiny model, toy gold reward), CPU
# RM_DIR: the reward model (RTO-RL/Llama3.2-1B-RewardModel) as a *ForSequenceClassification
# directory (docs/rto.md); it also initialises the critic. The DPO model (RTO-RL/Llama3-8B-DPO)
# and the SFT model come from the hub. Extra arguments are Hydra overrides for every run.
source "$(dirname "$0")/common.sh"
if $toy; then
  toy_table "RTO" \
    'metrics=[eval/gold_reward,eval/gold_reward_ref,eval/win_rate,eval/kl_ref,eval/word_salad,eval/malformed,train/reward_last]' \
    'curves=[train/reward,train/kl]'
fi
rm_dir=${1:?usage: scripts/reproduce/reproduce_rto.sh RM_DIR [overrides...] | --toy}
shift
tokalign train -m experiment=rto method.reward="model:$rm_dir" hydra.sweep.dir="$root" "$@"
tokalign table runs="$root" out="$root/table" title="RTO" \
  'metrics=[eval/rm_score,eval/rm_win_rate,eval/kl_ref,train/reward_last]' 'curves=[train/reward,train/kl,train/rto/dpo_reward]'
