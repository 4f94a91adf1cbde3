#!/usr/bin/env bash
# Chain of Hindsight's Table 4 rows (CoH, SFT, DPO, λ = 0, FCM 0, no chain; three seeds) and the table.
#   scripts/reproduce/reproduce_coh.sh [PILE]   # the paper's setting (conf/experiment/coh.yaml), 8 GPUs
#   scripts/reproduce/reproduce_coh.sh --toy    # the laptop twin (tiny model, toy pairs), CPU
# PILE: a JSON/JSONL of {text} rows for the pretraining term; without it the term reads the training
# prompts with their chosen outputs (docs/coh.md). Extra arguments are Hydra overrides for every run.
source "$(dirname "$0")/common.sh"
if $toy; then
  toy_table "Chain of Hindsight" \
    'metrics=[eval/gold_reward,eval/gold_reward_ref,eval/win_rate,eval/kl_ref,eval/word_salad,eval/malformed]' \
    'curves=[train/loss,train/loss/feedback,train/loss/pretrain]'
fi
if [[ $# -gt 0 && "$1" != *=* ]]; then export COH_PRETRAIN_DATA=$1; shift; fi  # read by the CoH rows only
tokalign train -m experiment=coh hydra.sweep.dir="$root" "$@"
tokalign table runs="$root" out="$root/table" title="Chain of Hindsight" \
  'metrics=[eval/kl_ref,eval/win_rate]' 'curves=[train/loss,train/loss/feedback,train/loss/pretrain]'
