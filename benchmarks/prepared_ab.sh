#!/bin/bash
# The prepared-JPEG input pipeline of an older checkout against the current
# tree, alternating, on the same prepared files (one pinned core, 8 passes over
# ROOT's 1,032 images per measurement): longer than side_by_side.sh's 2 passes,
# whose spread on shared cores hides a 10% difference.
#   ROOT: a folder that benchmarks/input_pipeline.py's make_folder + prepare_folder made
#   OLD=/tmp/old ROOT=/tmp/pb bash benchmarks/prepared_ab.sh
set -u
NEW=$(cd "$(dirname "$0")/.." && pwd)
OLD=${OLD:?a checkout of the older commit}
ROOT=${ROOT:?a prepared benchmark folder}
PY=${PY:-$NEW/.venv/bin/python}
for r in 1 2 3 4 5; do
  for v in old new; do
    d=$NEW; [ $v = old ] && d=$OLD
    (cd "$d" && "$PY" benchmarks/input_pipeline.py --worker --pipeline=prepared --root="$ROOT" \
        --n=1 --batch=64 --passes=8 2>/dev/null | tail -1 | sed "s/^/$v $r /")
  done
done
