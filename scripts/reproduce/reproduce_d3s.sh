#!/usr/bin/env bash
# D³S's main table (GRPO, PODS, GRPO+D³S and its sample-only / token-only ablations, three seeds):
# Pass@1 and Pass@k, and the tokens each method trained on.
#   scripts/reproduce/reproduce_d3s.sh            # the paper: Qwen2.5-Math-7B, Qwen2.5-Math-1.5B, Llama-3.1-8B
#   scripts/reproduce/reproduce_d3s.sh --toy      # the laptop twin (tiny model, toy arithmetic), CPU
# Extra arguments are Hydra overrides for every run.
source "$(dirname "$0")/common.sh"
if $toy; then
  toy_table "D3S" \
    'metrics=[eval/pass@1,eval/pass@1_ref,eval/pass@4,eval/pass@8,train/trained_tokens_total,train/trained_samples_total]'
fi
for model in qwen2_5_math_7b qwen2_5_math_1_5b llama3_1_8b; do
  tokalign train -m experiment=d3s model="$model" hydra.sweep.dir="$root/$model" "$@"
done
tokalign table runs="$root" out="$root/table" title="D3S" 'group_by=[model.name,arm]' \
  'metrics=[eval/pass@1,eval/pass@8,train/trained_tokens_total,train/trained_samples_total]'
