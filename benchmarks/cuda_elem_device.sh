#!/usr/bin/env bash
# One device call: build the CUDA extension, run the CUDA tests, the benchmarks, then memcheck.
# Usage: benchmarks/cuda_elem_device.sh OUTDIR [quick]
set -uo pipefail
OUT=${1:?outdir}; QUICK=${2:-}
export MAX_JOBS=16 INFINILM_CUDA=1
nvidia-smi --query-gpu=name,clocks.sm,clocks.mem,temperature.gpu,power.draw --format=csv > "$OUT/gpu.txt" 2>&1
t0=$(date +%s)
python setup.py -q build_ext --inplace > "$OUT/build.log" 2>&1 || { tail -60 "$OUT/build.log"; exit 1; }
echo "build: $(( $(date +%s) - t0 )) s"
python -m pytest tests -q -k "cuda" -p no:cacheprovider --maxfail=30 -W ignore > "$OUT/test.log" 2>&1
echo "tests rc=$? ($(( $(date +%s) - t0 )) s): $(tail -1 "$OUT/test.log")"
grep -E "^(FAILED|ERROR)" "$OUT/test.log" | head -20
python benchmarks/bench_ops.py ${QUICK:+--quick} > "$OUT/bench.log" 2>&1
echo "bench rc=$? ($(( $(date +%s) - t0 )) s)"
if command -v compute-sanitizer > /dev/null; then
  timeout 120 compute-sanitizer --tool memcheck --error-exitcode 3 python tests/sanitize_cuda_ops.py > "$OUT/memcheck.log" 2>&1
  echo "memcheck rc=$? ($(( $(date +%s) - t0 )) s): $(tail -2 "$OUT/memcheck.log" | tr '\n' ' ')"
else
  echo "compute-sanitizer not found: $(ls /usr/local/cuda*/bin 2>/dev/null | grep -i sanit)"
fi
cat "$OUT/bench.log"
