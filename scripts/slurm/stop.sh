#!/usr/bin/env bash
# Stop the daemons scripts/slurm/start.sh started (and only those): SLURM first, then slurmdbd,
# then MariaDB and munged; each wave in parallel.
#   scripts/slurm/stop.sh [state_dir] [--purge]    --purge also deletes the state dir
set -euo pipefail

STATE=$(realpath -m "${1:-${TOKALIGN_SLURM_DIR:-/tmp/tokalign-slurm}}")
list=$STATE/run/started

stop_wave() {  # names...: SIGTERM to each recorded pid, wait up to 10 s, then SIGKILL
    local pids=() names=() name pidfile pid
    for wanted in "$@"; do
        while read -r name pidfile; do
            [ "$name" = "$wanted" ] && [ -s "$pidfile" ] || continue
            pid=$(cat "$pidfile")
            kill "$pid" 2>/dev/null && pids+=("$pid") && names+=("$name")
        done <"$list"
    done
    for i in "${!pids[@]}"; do
        for _ in $(seq 100); do kill -0 "${pids[$i]}" 2>/dev/null || break; sleep 0.1; done
        if kill -0 "${pids[$i]}" 2>/dev/null; then
            echo "slurm: ${names[$i]} (${pids[$i]}) ignored SIGTERM, killing" >&2
            kill -9 "${pids[$i]}" 2>/dev/null || true
        fi
        echo "slurm: stopped ${names[$i]} (${pids[$i]})" >&2
    done
}

if [ -s "$list" ]; then
    stop_wave slurmd slurmctld
    stop_wave slurmdbd
    stop_wave mariadb munged
    rm -f "$list"
fi
if [ "${2:-}" = "--purge" ]; then rm -rf "$STATE"; fi
