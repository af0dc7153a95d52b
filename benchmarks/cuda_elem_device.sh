#!/usr/bin/env bash
# One device call: build the CUDA extension, run the CUDA tests, the benchmarks, then memcheck.
# Usage: benchmarks/cuda_elem_device.sh OUTDIR [bench args...]   (e.g. --quick --no-compile)
set -uo pipefail
OUT=${1:?outdir}; shift
export MAX_JOBS=16 INFINILM_CUDA=1 PYTHONPATH=$PWD
# The default /opt/gcc compiler wrapper there yields a .so whose C++ exceptions segfault in the unwinder
# (any TORCH_CHECK failure); the system gcc 13.3 (the one torch was built with) does not.
[ -x /usr/bin/g++ ] && export CC=/usr/bin/gcc CXX=/usr/bin/g++
nvidia-smi --query-gpu=name,clocks.sm,clocks.mem,temperature.gpu,power.draw --format=csv > "$OUT/gpu.txt" 2>&1
t0=$(date +%s)
python setup.py -q build_ext --inplace > "$OUT/build.log" 2>&1 || { tail -60 "$OUT/build.log"; exit 1; }
echo "build: $(( $(date +%s) - t0 )) s"
if [ -n "${VARIANTS:-}" ]; then
  nvcc -O3 -std=c++17 -gencode=arch=compute_90,code=sm_90 -I. benchmarks/rms_norm_variants.cu -o /tmp/rmsv && /tmp/rmsv | tee "$OUT/variants.log"
fi
[ -n "${DIAG:-}" ] && bash benchmarks/cuda_elem_diag.sh 2>&1 | tee "$OUT/diag.log"
python -m pytest tests -q -k "${TESTS:-cuda}" -p no:cacheprovider --maxfail=30 -W ignore > "$OUT/test.log" 2>&1
echo "tests rc=$? ($(( $(date +%s) - t0 )) s): $(grep -o '\.' "$OUT/test.log" | wc -l) dots; $(grep -E "passed|failed" "$OUT/test.log" | tail -1)"
grep -E "^(FAILED|ERROR)|Fatal|line [0-9]+ in test_" "$OUT/test.log" | head -20
python benchmarks/bench_ops.py "$@" > "$OUT/bench.log" 2>&1
echo "bench rc=$? ($(( $(date +%s) - t0 )) s)"
if [ -n "${MEMCHECK:-}" ]; then
  timeout 150 compute-sanitizer --tool memcheck --error-exitcode 3 python tests/sanitize_cuda_ops.py > "$OUT/memcheck.log" 2>&1
  echo "memcheck rc=$? ($(( $(date +%s) - t0 )) s): $(grep -E "ERROR SUMMARY|all ops ran" "$OUT/memcheck.log" | tr '\n' ' ')"
fi
cat "$OUT/bench.log"
