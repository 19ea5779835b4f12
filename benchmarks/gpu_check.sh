#!/usr/bin/env bash
# The GPU check of issue 23: every CUDA path of mmdistill in one run of under 8 minutes.
#
#   bash benchmarks/gpu_check.sh --prepare   # HERE, before the GPU call: stage .gpu_carry/ (wheels the GPU
#                                            # image lacks, the real data); needs the package registry
#   bash benchmarks/gpu_check.sh             # ON THE GPU MACHINE, from the repository root, e.g. through the
#                                            # device tool: run(command="bash benchmarks/gpu_check.sh",
#                                            #   carry=[".gpu_carry"], timeout_s=480)
#   bash benchmarks/gpu_check.sh --dry-run   # anywhere: every step on the CPU at the smallest size, installs nothing
#   bash benchmarks/gpu_check.sh --only resume torchrun   # a second try of some checks (they rewrite gpu.json)
#
# On the GPU machine it installs the carried wheels that are missing (no registry is needed), uses the
# machine's CUDA build of torch (or installs the Makefile's pinned torch where a registry is reachable),
# runs benchmarks/gpu_check.py run (the checks and what they measure are listed in its docstring),
# writes benchmarks/results/gpu.json (and $OUT/gpu.json, $OUT/gpu_check.log when $OUT is set) and
# prints a table. Exit 0 when every check passed.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
command -v "$PY" >/dev/null || PY=python
BUDGET=${GPU_CHECK_BUDGET:-330}   # seconds for the checks; install and start-up come on top

case "${1:-}" in
  --prepare) exec "$PY" benchmarks/gpu_check.py prepare "${@:2}" ;;
  --dry-run)
    for tool in timeout git; do command -v "$tool" >/dev/null || { echo "gpu_check: $tool not found" >&2; exit 2; }; done
    bash -n "$0"
    exec "$PY" benchmarks/gpu_check.py run --dry-run "${@:2}" ;;
  ""|--only) ;;   # --only CHECK...: a second try of the checks that failed (names in gpu_check.py)
  *) echo "usage: bash benchmarks/gpu_check.sh [--prepare | --dry-run [run options] | --only CHECK...]" >&2; exit 2 ;;
esac

LOG=/dev/null
if [ -n "${OUT:-}" ]; then mkdir -p "$OUT"; LOG="$OUT/gpu_check.log"; fi
{
  echo "== install ($(date -u +%H:%M:%S))"
  "$PY" benchmarks/gpu_check.py install
  export PYTHONPATH="${GPU_CHECK_SITE:-/tmp/mmdistill-site}:$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
  if [ -d .gpu_carry/data ]; then export MMDISTILL_DATA="$PWD/.gpu_carry/data"; fi
  export MMDISTILL_CACHE="${MMDISTILL_CACHE:-/tmp/mmdistill-cache}" PYTHONUNBUFFERED=1
  echo "== checks ($(date -u +%H:%M:%S), budget ${BUDGET}s)"
  # the hard stop leaves the JSON written after the last finished check in place
  timeout --signal=TERM --kill-after=10 $((BUDGET + 60)) "$PY" benchmarks/gpu_check.py run --budget "$BUDGET" "$@"
} 2>&1 | tee "$LOG"
exit "${PIPESTATUS[0]}"
