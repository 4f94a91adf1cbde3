#!/usr/bin/env bash
# The GPU check on a machine with no network (the lent GPU machine), in one command:
#
#     scripts/gpu/gpu_check.sh [--tiny] [gpu_check.py options]      # with .whl/ sent along
#
# Installs the wheelhouse (`make gpu-wheels`) beside the image's packages, checks the imports,
# prints the versions and runs scripts/gpu/gpu_check.py; its JSON and Markdown go to --out, or to
# $OUT (the folder such a machine sends back), or to scripts/results. PYTHON picks the
# interpreter (default python3), WHEELS the wheelhouse (default .whl).
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
python="${PYTHON:-python3}"
wheels="${WHEELS:-$root/.whl}"
started=$SECONDS

"$python" "$root/scripts/gpu/wheelhouse.py" select "$wheels" >/dev/null  # a missing or stale wheelhouse: one line
site="$(mktemp -d "${TMPDIR:-/tmp}/tokalign-gpu-site.XXXXXX")"
trap 'rm -rf "$site"' EXIT
mapfile -t selected < <("$python" "$root/scripts/gpu/wheelhouse.py" select "$wheels" 2>/dev/null)
"$python" -m pip install -q --no-index --no-deps --no-compile --disable-pip-version-check --target "$site" "${selected[@]}"
export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}" PATH="$site/bin:$PATH"
export HF_HUB_OFFLINE=1 WANDB_MODE=disabled TOKENIZERS_PARALLELISM=false

echo "gpu-check: $("$python" -c 'import sys; print(sys.version.split()[0])') at $(command -v "$python"), ${#selected[@]} wheels in $((SECONDS - started)) s"
"$python" "$root/scripts/gpu/wheelhouse.py" imports --site "$site"
if ! broken="$("$python" -m pip check --disable-pip-version-check 2>&1)"; then  # reported; the check still runs
  sed 's/^/gpu-check: pip check: /' <<<"$broken"
fi

out="${OUT:-$root/scripts/results}"
cd "$root"
status=0
"$python" scripts/gpu/gpu_check.py --out "$out" "$@" || status=$?
exit "$status"
