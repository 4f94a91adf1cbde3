#!/usr/bin/env bash
# TGDPO's main table (DPO vs TGDPO α = 0.5 / 1 / 2, three seeds) and its tokalign table.
#   scripts/reproduce_tgdpo.sh            # the paper: Llama-3-8B-Instruct, Llama-3.2-3B-Instruct, Gemma-2-2B-it
#   scripts/reproduce_tgdpo.sh --toy      # the laptop twin (tiny model, toy task), CPU
# Extra arguments are Hydra overrides for every run, e.g. seed=0 or hydra/launcher=slurm.
# With JUDGE_QUESTIONS=<dir> holding alpaca_eval.json, mt_bench.jsonl and arena_hard.jsonl, every
# finished run's answers are exported for those judges (docs/reproducing.md).
set -euo pipefail
toy=false
if [[ "${1:-}" == "--toy" ]]; then toy=true; shift; fi
root=${ROOT:-multirun/tgdpo$($toy && echo _toy)/$(date +%Y-%m-%d_%H-%M-%S)}
if $toy; then
  tokalign train -m experiment=tgdpo_toy hydra.sweep.dir="$root" "$@"
  tokalign table runs="$root" out="$root/table" title="TGDPO (toy)" \
    'metrics=[eval/win_rate,eval/gold_reward,eval/gold_reward_ref,eval/kl_ref,eval/word_salad,eval/malformed]'
  exit
fi
for setting in "llama3_8b_instruct princeton-nlp/llama3-ultrafeedback-armorm" \
               "llama3_2_3b_instruct princeton-nlp/llama3-ultrafeedback-armorm" \
               "gemma2_2b_it princeton-nlp/gemma2-ultrafeedback-armorm"; do
  read -r model data <<<"$setting"
  # The guidance model is the DPO policy of the same setting: train it first, then sweep the table.
  tokalign train experiment=tgdpo +arm=tgdpo_dpo model="$model" dataset.hub_id="$data" \
    hydra.run.dir="$root/$model/guidance" "$@"
  TGDPO_GUIDANCE="$root/$model/guidance/model" \
    tokalign train -m experiment=tgdpo model="$model" dataset.hub_id="$data" hydra.sweep.dir="$root/$model" "$@"
done
if [[ -n "${JUDGE_QUESTIONS:-}" ]]; then
  for run in "$root"/*/*/; do
    [[ -f "$run/summary.json" ]] || continue
    tokalign eval run_dir="$run" 'eval.export=[alpaca_eval,mt_bench,arena_hard]' \
      "eval.export_questions={alpaca_eval: $JUDGE_QUESTIONS/alpaca_eval.json, mt_bench: $JUDGE_QUESTIONS/mt_bench.jsonl, arena_hard: $JUDGE_QUESTIONS/arena_hard.jsonl}"
  done
fi
tokalign table runs="$root" out="$root/table" title="TGDPO" 'group_by=[model.name,arm]'
