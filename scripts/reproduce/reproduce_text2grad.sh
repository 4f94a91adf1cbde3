#!/usr/bin/env bash
# Text2Grad's comparison (PPO vs Text2Grad vs labels + score, three seeds) and its tokalign table.
#   scripts/reproduce/reproduce_text2grad.sh CRITIC   # the SLF5K setting (conf/experiment/text2grad.yaml), 8 GPUs
#   scripts/reproduce/reproduce_text2grad.sh --toy    # the laptop twin (tiny model, toy oracle critic), CPU
# CRITIC: a generative critic answering JSON {textual_feedback, good_spans, poor_spans} (docs/text2grad.md).
# Extra arguments are Hydra overrides for every run.
source "$(dirname "$0")/common.sh"
if $toy; then
  toy_table "Text2Grad" \
    'metrics=[eval/gold_reward,eval/gold_reward_ref,eval/win_rate,eval/kl_ref,eval/word_salad,eval/malformed,train/reward_last]' \
    'curves=[train/reward,train/kl,train/text2grad/label_return]'
fi
critic=${1:?usage: scripts/reproduce/reproduce_text2grad.sh CRITIC [overrides...] | --toy}
shift
tokalign train -m experiment=text2grad method.critic_model="$critic" hydra.sweep.dir="$root" "$@"
tokalign table runs="$root" out="$root/table" title="Text2Grad" \
  'metrics=[eval/kl_ref,train/reward_last]' 'curves=[train/reward,train/kl,train/text2grad/label_return]'
