#!/bin/bash
# CPU seconds (user+sys) of the same throughput worker before (6c5d0db) and after issue 20, alternated
for i in 1 2 3; do
 for tree in /work/wt/bench /work/main; do
  for row in mmdistill_train mmdistill_distill_cache; do
   out=$( { cd $tree && PYTHONPATH=$tree/src /usr/bin/time -f "CPU %U %S" /work/main/.venv/bin/python benchmarks/throughput.py --worker $row --pair hinton --steps 1500 --samples 8192 --threads 1 --device cpu; } 2>&1 | grep -E "^RESULT|^CPU" | tr '\n' ' ')
   echo "$i $tree $row $out"
  done
 done
done
