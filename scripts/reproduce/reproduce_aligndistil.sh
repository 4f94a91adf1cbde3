#!/usr/bin/env bash
# AlignDistil's table (DPO, AlignDistil off-policy and on-policy, the contrastive and adaptive
# teachers, three seeds) and its tokalign table.
#   scripts/reproduce/reproduce_aligndistil.sh         # the paper: Qwen2.5-1.5B-Instruct on UltraFeedback-binarized
#   scripts/reproduce/reproduce_aligndistil.sh --toy   # the laptop twin (tiny model, toy task), CPU
# Extra arguments are Hydra overrides for every run, e.g. seed=0 or hydra/launcher=slurm.
# With JUDGE_QUESTIONS=<dir> holding alpaca_eval.json, mt_bench.jsonl and arena_hard.jsonl, every
# finished run's answers are exported for those judges (docs/reproducing.md).
source "$(dirname "$0")/common.sh"
if $toy; then
  # single-process runs build (once per seed) and cache their DPO and reverse-DPO teachers
  toy_table "AlignDistil" \
    'metrics=[eval/win_rate,eval/gold_reward,eval/gold_reward_ref,eval/kl_ref,eval/word_salad,eval/malformed]'
fi
# The teachers first, as the authors (dpo_01.sh, reverse_dpo_01.sh): DPO and reverse DPO at β 0.1.
tokalign train experiment=aligndistil +arm=baseline/dpo hydra.run.dir="$root/teachers/dpo" "$@"
tokalign train experiment=aligndistil +arm=baseline/dpo method.reverse=true hydra.run.dir="$root/teachers/reverse_dpo" "$@"
DPO_MODEL="$root/teachers/dpo/model" REVERSE_DPO_MODEL="$root/teachers/reverse_dpo/model" \
  tokalign train -m experiment=aligndistil hydra.sweep.dir="$root/runs" "$@"
export_answers alpaca_eval,mt_bench,arena_hard "$root"/runs/*/
tokalign table runs="$root/runs" out="$root/table" title="AlignDistil" 'group_by=[arm]'
