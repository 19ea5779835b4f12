#!/bin/bash
# CPU seconds (user+sys) of the same throughput worker before (6c5d0db) and after issue 20, alternated.
#   git worktree add --detach ../before 6c5d0db
#   bash benchmarks/results/throughput_issue20.sh ../before .        # BEFORE AFTER [PYTHON]
# Each tree runs its own src/ and benchmarks/throughput.py with the one interpreter given.
set -euo pipefail
before=$(cd "${1:?the tree before issue 20}" && pwd)
after=$(cd "${2:?the tree after issue 20}" && pwd)
python=${3:-$after/.venv/bin/python}
for i in 1 2 3; do
 for tree in "$before" "$after"; do
  for row in mmdistill_train mmdistill_distill_cache; do
   out=$( { cd "$tree" && PYTHONPATH="$tree/src" /usr/bin/time -f "CPU %U %S" "$python" benchmarks/throughput.py --worker $row --pair hinton --steps 1500 --samples 8192 --threads 1 --device cpu; } 2>&1 | grep -E "^RESULT|^CPU" | tr '\n' ' ')
   echo "$i $tree $row $out"
  done
 done
done
