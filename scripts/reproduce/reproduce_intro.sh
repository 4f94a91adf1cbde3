#!/usr/bin/env bash
# InTRO's comparison (GRPO, InTRO with n = 1 / 5 / 20 candidates, and the RAFT ablation q := p,
# three seeds): pass@1 and, for its conciseness claim, the mean completion length late in training.
#   scripts/reproduce/reproduce_intro.sh          # the paper's setting: Qwen2.5-1.5B base on MATH
#   scripts/reproduce/reproduce_intro.sh --toy    # the laptop twin (tiny model, toy arithmetic), CPU
# Extra arguments are Hydra overrides for every run, e.g. seed=0 or hydra/launcher=slurm.
source "$(dirname "$0")/common.sh"
if $toy; then
  toy_table "InTRO" 'metrics=[eval/pass@1,eval/pass@1_ref,eval/pass@4,train/completion_length]'
fi
tokalign train -m experiment=intro hydra.sweep.dir="$root/qwen2_5_1_5b" "$@"
tokalign table runs="$root" out="$root/table" title="InTRO" 'group_by=[model.name,arm]' \
  'metrics=[eval/pass@1,train/completion_length]'
