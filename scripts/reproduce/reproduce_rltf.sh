#!/usr/bin/env bash
# RLTF's comparison (single-turn GRPO, two-turn GRPO, RLTF-SD, RLTF-FM, three seeds), evaluated
# single-turn: accuracy on held-out problems.
#   scripts/reproduce/reproduce_rltf.sh           # the release's setting: Llama-3.1-8B-Instruct, LoRA r 32, a math set
#   scripts/reproduce/reproduce_rltf.sh --toy     # the laptop twin (tiny model, toy arithmetic, toy_math's critic), CPU
# Extra arguments are Hydra overrides for every run; pass method.critic=<module:function> for a
# critic of your own (without one the paper setting's critique is a plain verdict, docs/rltf.md).
source "$(dirname "$0")/common.sh"
if $toy; then
  toy_table "RLTF" 'metrics=[eval/pass@1,eval/pass@1_ref,eval/pass@4]'
fi
tokalign train -m experiment=rltf hydra.sweep.dir="$root/llama3_1_8b_instruct" "$@"
tokalign table runs="$root" out="$root/table" title="RLTF" 'group_by=[model.name,arm]' 'metrics=[eval/pass@1]'
