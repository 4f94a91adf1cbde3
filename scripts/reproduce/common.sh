# What every scripts/reproduce/reproduce_<paper>.sh shares; each sources it first, with its arguments:
#   source "$(dirname "$0")/common.sh"
# It takes a leading --toy off the arguments and sets
#   paper      the script's paper (reproduce_<paper>.sh): experiment=<paper>, its twin <paper>_toy
#   toy        true with --toy (the laptop twin), else false
#   root       $ROOT, else multirun/<paper>[_toy]/<time>: where every run and the table go
#   overrides  the remaining arguments: Hydra overrides for every run
set -euo pipefail
paper=$(basename "$0" .sh)
paper=${paper#reproduce_}
toy=false
if [[ "${1:-}" == "--toy" ]]; then toy=true; shift; fi
root=${ROOT:-multirun/$paper$($toy && echo _toy)/$(date +%Y-%m-%d_%H-%M-%S)}
overrides=("$@")

# toy_table TITLE [TABLE_ARG ...]: the laptop twin's sweep (every row x seed) into $root, its table
# under $root/table, and exit.
toy_table() {
  local title=$1
  shift
  tokalign train -m "experiment=${paper}_toy" hydra.sweep.dir="$root" "${overrides[@]}"
  tokalign table runs="$root" out="$root/table" title="$title (toy)" "$@"
  exit
}

# export_answers JUDGE[,JUDGE...] RUN_DIR...: with JUDGE_QUESTIONS=<dir> holding the judges' questions
# (alpaca_eval.json, mt_bench.jsonl, arena_hard.jsonl), each finished run's answers for those judges
# (docs/reproducing.md, "Answers for external judges"); without it, nothing.
export_answers() {
  [[ -n "${JUDGE_QUESTIONS:-}" ]] || return 0
  local judges=$1 judge run questions=""
  declare -A file=([alpaca_eval]=alpaca_eval.json [mt_bench]=mt_bench.jsonl [arena_hard]=arena_hard.jsonl)
  shift
  for judge in ${judges//,/ }; do questions+="${questions:+, }$judge: $JUDGE_QUESTIONS/${file[$judge]}"; done
  for run in "$@"; do
    [[ -f "$run/summary.json" ]] || continue
    tokalign eval run_dir="$run" "eval.export=[$judges]" "eval.export_questions={$questions}"
  done
}
