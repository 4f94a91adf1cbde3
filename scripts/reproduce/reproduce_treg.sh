#!/usr/bin/env bash
# T-REG's main table (DPO vs DPO-REG α = 0.1 / 0.25 / 0.5 and the static-weight ablation, three seeds)
# and its tokalign table.
#   scripts/reproduce/reproduce_treg.sh          # the paper: Llama-3-8B-Instruct and Gemma-2-9B-it, on-policy UltraFeedback
#   scripts/reproduce/reproduce_treg.sh --toy    # the laptop twin (tiny model, toy task), CPU
# Extra arguments are Hydra overrides for every run, e.g. seed=0 or hydra/launcher=slurm.
# With JUDGE_QUESTIONS=<dir> holding alpaca_eval.json and arena_hard.jsonl, every finished run's
# answers are exported for those judges (docs/reproducing.md).
source "$(dirname "$0")/common.sh"
if $toy; then
  toy_table "T-REG" 'metrics=[eval/win_rate,eval/gold_reward,eval/gold_reward_ref,eval/kl_ref,eval/word_salad,eval/malformed]'
fi
# r̂ comes from the starting policy itself: no model to train first.
tokalign train -m experiment=treg hydra.sweep.dir="$root/llama3_8b_instruct" "$@"
tokalign train -m experiment=treg model=gemma2_9b_it dataset.hub_id=princeton-nlp/gemma2-ultrafeedback-armorm \
  hydra.sweep.dir="$root/gemma2_9b_it" "$@"
export_answers alpaca_eval,arena_hard "$root"/*/*/
tokalign table runs="$root" out="$root/table" title="T-REG" 'group_by=[model.name,arm]'
