#!/usr/bin/env bash
# D³S's main table (GRPO, PODS, GRPO+D³S and its sample-only / token-only ablations, three seeds):
# Pass@1 and Pass@k, and the tokens each method trained on.
#   scripts/reproduce_d3s.sh              # the paper: Qwen2.5-Math-7B, Qwen2.5-Math-1.5B, Llama-3.1-8B
#   scripts/reproduce_d3s.sh --toy        # the laptop twin (tiny model, toy arithmetic), CPU
# Extra arguments are Hydra overrides for every run.
set -euo pipefail
toy=false
if [[ "${1:-}" == "--toy" ]]; then toy=true; shift; fi
root=${ROOT:-multirun/d3s$($toy && echo _toy)/$(date +%Y-%m-%d_%H-%M-%S)}
if $toy; then
  tokalign train -m experiment=d3s_toy hydra.sweep.dir="$root" "$@"
  tokalign table runs="$root" out="$root/table" title="D3S (toy)" \
    'metrics=[eval/pass@1,eval/pass@1_ref,eval/pass@4,eval/pass@8,train/trained_tokens_total,train/trained_samples_total]'
  exit
fi
for model in qwen2_5_math_7b qwen2_5_math_1_5b llama3_1_8b; do
  tokalign train -m experiment=d3s model="$model" hydra.sweep.dir="$root/$model" "$@"
done
tokalign table runs="$root" out="$root/table" title="D3S" 'group_by=[model.name,arm]' \
  'metrics=[eval/pass@1,eval/pass@8,train/trained_tokens_total,train/trained_samples_total]'
