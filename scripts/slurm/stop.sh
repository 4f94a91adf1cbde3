#!/usr/bin/env bash
# Stop the daemons scripts/slurm/start.sh started (and only those), newest first.
#   scripts/slurm/stop.sh [state_dir] [--purge]    --purge also deletes the state dir
set -euo pipefail

STATE=$(realpath -m "${1:-${TOKALIGN_SLURM_DIR:-/tmp/tokalign-slurm}}")
list=$STATE/run/started
if [ -s "$list" ]; then
    tac "$list" | while read -r name pidfile; do
        [ -s "$pidfile" ] || continue
        pid=$(cat "$pidfile")
        kill "$pid" 2>/dev/null || continue
        for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -0 "$pid" 2>/dev/null && { echo "slurm: $name ($pid) ignored SIGTERM, killing" >&2; kill -9 "$pid" 2>/dev/null || true; }
        echo "slurm: stopped $name ($pid)" >&2
    done
    rm -f "$list"
fi
if [ "${2:-}" = "--purge" ]; then rm -rf "$STATE"; fi
