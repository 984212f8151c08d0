#!/bin/bash
# Side by side: the train step and the on-the-fly input pipeline of an older
# commit against the current tree, alternating in one run (one pinned core each)
# so that the load of a shared machine falls on both alike. PIPELINES: the input
# pipelines to time (benchmarks/input_pipeline.py --pipelines; default ours,prepared).
#   git worktree add /tmp/old 6c7120a && OLD=/tmp/old OUT=/tmp/sbs bash benchmarks/side_by_side.sh
set -u
NEW=$(cd "$(dirname "$0")/.." && pwd)
OLD=${OLD:?a checkout of the older commit}
OUT=${OUT:-/tmp/sbs}
PY=${PY:-$NEW/.venv/bin/python}
DATA=${DATA:-$NEW/../shared/data/imagenet-sample}
PIPELINES=${PIPELINES:-ours,prepared}
mkdir -p "$OUT"
for r in 1 2 3; do
  for v in old new; do
    d=$NEW; [ $v = old ] && d=$OLD
    (cd "$d" && "$PY" benchmarks/train_step.py --impls=jax --batch_sizes=32 --steps=5 --warmup=1 --rounds=1 --threads=1 --output="$OUT/ts_${v}_$r.json" > "$OUT/ts_${v}_$r.txt" 2>&1)
    (cd "$d" && "$PY" benchmarks/input_pipeline.py --data="$DATA" --pipelines="$PIPELINES" --cores=1 --rounds=1 --output="$OUT/ip_${v}_$r.json" > "$OUT/ip_${v}_$r.txt" 2>&1)
    echo "$r $v done $(date +%T) load $(cut -d' ' -f1 /proc/loadavg)"
  done
done
for v in old new; do for r in 1 2 3; do
  echo "$v round $r: train step $(grep '^jax ' "$OUT/ts_${v}_$r.txt" | awk '{print $4 " img/s, " $NF " img/cpu-s"}')"
  for p in ${PIPELINES//,/ }; do
    echo "  input $p: $(grep "round 1: $p " "$OUT/ip_${v}_$r.txt" | sed "s/ *round 1: $p *//")"
  done
done; done
