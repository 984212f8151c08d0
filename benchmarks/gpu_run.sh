#!/usr/bin/env bash
# One call on a lent GPU (H100/H200): the training-step table, then whether
# training is input-bound (the paper's model in bfloat16), results under $OUT.
#
#   OUT=/path/to/results bash benchmarks/gpu_run.sh            # a GPU, ~8 minutes
#   OUT=/tmp/gpu_smoke bash benchmarks/gpu_run.sh --smoke      # any machine, tiny settings
#
# Writes $OUT/train_step.{json,log}, $OUT/end_to_end_prepared.{json,log}
# (256 x 256 JPEGs: the prepared data, cropped without resampling) and
# $OUT/end_to_end_on_the_fly.{json,log} (500 x 375 JPEGs resampled on the
# fly), and $OUT/device.txt. PYTHON picks the interpreter (default: python3),
# which needs requirements.txt and benchmarks/requirements.txt installed.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:?set OUT to a results directory}
PYTHON=${PYTHON:-python3}
mkdir -p "$OUT"
export TF_CPP_MIN_LOG_LEVEL=2 XLA_PYTHON_CLIENT_PREALLOCATE=false

if [[ "${1:-}" == "--smoke" ]]; then
  STEP_ARGS=(--model=alexnet_tiny --impls=jax --batch_sizes=4 --dtypes=float32 --steps=1 --warmup=1)
  E2E_ARGS=(--smoke --rounds=1 --jpegs=32)
else
  # The issue's targets are bfloat16 at batch 512; float32 for reference.
  STEP_ARGS=(--batch_sizes=128,256,512 --dtypes=bfloat16,float32 --rounds=1)
  E2E_ARGS=(--config=configs/ilsvrc.py --set=model.dtype=bfloat16 --set=batch_size=512
            --set=eval.batch_size=512 --steps=40 --rounds=2 --jpegs=4096)
fi

failed=0
step() {  # step NAME ARGS...: run one benchmark, log to $OUT/NAME.log, go on if it fails
  local name=$1; shift
  if "$PYTHON" "$@" > "$OUT/$name.log" 2>&1; then echo "== $name: ok"
  else echo "== $name: FAILED (exit $?)"; failed=1; fi
  grep -v '^[IWE][0-9]\{4\}\|^WARNING: All log\|oneDNN\|rebuild TensorFlow' "$OUT/$name.log" | tail -n 25
}

{ date -u; nvidia-smi -L 2>/dev/null || echo 'no nvidia-smi'; echo "cpus: $(nproc)";
  "$PYTHON" -c 'import jax; print(jax.devices())'; } | tee "$OUT/device.txt"
step train_step benchmarks/train_step.py "${STEP_ARGS[@]}" --output="$OUT/train_step.json"
step end_to_end_prepared benchmarks/end_to_end.py "${E2E_ARGS[@]}" --jpeg_size=256 \
  --output="$OUT/end_to_end_prepared.json"
step end_to_end_on_the_fly benchmarks/end_to_end.py "${E2E_ARGS[@]}" --jpeg_size=500x375 \
  --output="$OUT/end_to_end_on_the_fly.json"
exit $failed
