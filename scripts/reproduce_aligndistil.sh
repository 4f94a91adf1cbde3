#!/usr/bin/env bash
# AlignDistil's table (DPO, AlignDistil off-policy and on-policy, the contrastive and adaptive
# teachers, three seeds) and its tokalign table.
#   scripts/reproduce_aligndistil.sh         # the paper: Qwen2.5-1.5B-Instruct on UltraFeedback-binarized
#   scripts/reproduce_aligndistil.sh --toy   # the laptop twin (tiny model, toy task), CPU
# Extra arguments are Hydra overrides for every run, e.g. seed=0 or hydra/launcher=slurm.
# With JUDGE_QUESTIONS=<dir> holding alpaca_eval.json, mt_bench.jsonl and arena_hard.jsonl, every
# finished run's answers are exported for those judges (docs/reproducing.md).
set -euo pipefail
toy=false
if [[ "${1:-}" == "--toy" ]]; then toy=true; shift; fi
root=${ROOT:-multirun/aligndistil$($toy && echo _toy)/$(date +%Y-%m-%d_%H-%M-%S)}
if $toy; then
  # single-process runs build (once per seed) and cache their DPO and reverse-DPO teachers
  tokalign train -m experiment=aligndistil_toy hydra.sweep.dir="$root" "$@"
  tokalign table runs="$root" out="$root/table" title="AlignDistil (toy)" \
    'metrics=[eval/win_rate,eval/gold_reward,eval/gold_reward_ref,eval/kl_ref,eval/word_salad,eval/malformed]'
  exit
fi
# The teachers first, as the authors (dpo_01.sh, reverse_dpo_01.sh): DPO and reverse DPO at β 0.1.
tokalign train experiment=aligndistil +arm=aligndistil_dpo hydra.run.dir="$root/teachers/dpo" "$@"
tokalign train experiment=aligndistil +arm=aligndistil_dpo method.reverse=true hydra.run.dir="$root/teachers/reverse_dpo" "$@"
ALIGNDISTIL_DPO="$root/teachers/dpo/model" ALIGNDISTIL_REVERSE_DPO="$root/teachers/reverse_dpo/model" \
  tokalign train -m experiment=aligndistil hydra.sweep.dir="$root/runs" "$@"
if [[ -n "${JUDGE_QUESTIONS:-}" ]]; then
  for run in "$root"/runs/*/; do
    [[ -f "$run/summary.json" ]] || continue
    tokalign eval run_dir="$run" 'eval.export=[alpaca_eval,mt_bench,arena_hard]' \
      "eval.export_questions={alpaca_eval: $JUDGE_QUESTIONS/alpaca_eval.json, mt_bench: $JUDGE_QUESTIONS/mt_bench.jsonl, arena_hard: $JUDGE_QUESTIONS/arena_hard.jsonl}"
  done
fi
tokalign table runs="$root/runs" out="$root/table" title="AlignDistil" 'group_by=[arm]'
