#!/usr/bin/env bash
# One GPU session: build the CUDA extension, run the CUDA tests, then the op, engine and HF benchmarks.
# Usage (on the GPU machine, repo root): benchmarks/device_all.sh OUTDIR
# Each phase has its own time limit so a slow one cannot starve the rest; logs land in OUTDIR.
set -uo pipefail
OUT=${1:?outdir}
export MAX_JOBS=16 INFINILM_CUDA=1 PYTHONPATH=$PWD PYTHONUNBUFFERED=1
# A compiler wrapper that links libstdc++ statically makes every C++ exception from the extension crash in the
# unwinder; the system gcc (the one torch was built with) does not.
[ -x /usr/bin/g++ ] && export CC=/usr/bin/gcc CXX=/usr/bin/g++ LDSHARED="/usr/bin/g++ -shared"
t0=$(date +%s); el() { echo "$(( $(date +%s) - t0 ))s"; }
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"
python setup.py -q build_ext --inplace > "$OUT/build.log" 2>&1 || { tail -40 "$OUT/build.log"; exit 1; }
echo "build done $(el)"
timeout ${T_TESTS:-200} python -m pytest tests -p no:cacheprovider -rf -W ignore -k "cuda or Cuda or CUDA" \
  > "$OUT/test.log" 2>&1
echo "tests rc=$? $(el): $(grep -E "passed|failed" "$OUT/test.log" | tail -1)"
grep -E "^(FAILED|ERROR)" "$OUT/test.log" | head -20
timeout ${T_OPS:-120} python benchmarks/bench_ops.py --quick > "$OUT/bench_ops.log" 2>&1; echo "bench_ops rc=$? $(el)"
timeout ${T_ENGINE:-110} python benchmarks/bench_engine.py --device cuda --dtype bfloat16 --batch 1 32 \
  --hidden 2048 --layers 16 --heads 32 --kv-heads 8 --intermediate 8192 --vocab 128256 --prompt-len 128 \
  --new-tokens 32 > "$OUT/bench_engine.log" 2>&1; echo "bench_engine rc=$? $(el)"
timeout ${T_HF:-150} python benchmarks/bench_hf.py --device cuda --shapes llama-3.2-1b --batch 1 32 --repeats 2 \
  > "$OUT/bench_hf.log" 2>&1; echo "bench_hf rc=$? $(el)"
tail -n 60 "$OUT/bench_ops.log"; tail -n 15 "$OUT/bench_engine.log"; tail -n 20 "$OUT/bench_hf.log"
