#!/usr/bin/env bash
# TGDPO's main table (DPO vs TGDPO α = 0.5 / 1 / 2, three seeds) and its tokalign table.
#   scripts/reproduce/reproduce_tgdpo.sh          # the paper: Llama-3-8B-Instruct, Llama-3.2-3B-Instruct, Gemma-2-2B-it
#   scripts/reproduce/reproduce_tgdpo.sh --toy    # the laptop twin (tiny model, toy task), CPU
# Extra arguments are Hydra overrides for every run, e.g. seed=0 or hydra/launcher=slurm.
# With JUDGE_QUESTIONS=<dir> holding alpaca_eval.json, mt_bench.jsonl and arena_hard.jsonl, every
# finished run's answers are exported for those judges (docs/reproducing.md).
source "$(dirname "$0")/common.sh"
if $toy; then
  toy_table "TGDPO" 'metrics=[eval/win_rate,eval/gold_reward,eval/gold_reward_ref,eval/kl_ref,eval/word_salad,eval/malformed]'
fi
for setting in "llama3_8b_instruct princeton-nlp/llama3-ultrafeedback-armorm" \
               "llama3_2_3b_instruct princeton-nlp/llama3-ultrafeedback-armorm" \
               "gemma2_2b_it princeton-nlp/gemma2-ultrafeedback-armorm"; do
  read -r model data <<<"$setting"
  # The guidance is the DPO model of the same setting (the baseline row): train it first, then sweep the table.
  tokalign train experiment=tgdpo +arm=baseline/dpo model="$model" dataset.hub_id="$data" \
    hydra.run.dir="$root/$model/guidance" "$@"
  DPO_MODEL="$root/$model/guidance/model" \
    tokalign train -m experiment=tgdpo model="$model" dataset.hub_id="$data" hydra.sweep.dir="$root/$model" "$@"
done
export_answers alpaca_eval,mt_bench,arena_hard "$root"/*/*/
tokalign table runs="$root" out="$root/table" title="TGDPO" 'group_by=[model.name,arm]'
