#!/usr/bin/env bash
# One GPU session: build the CUDA extension, run the CUDA tests, then the op, engine and HF benchmarks.
# Usage (on the GPU machine, repo root): [PHASES="tests hf-eager"] benchmarks/device_all.sh OUTDIR
# Phases (default all, in this order): tests ops engine hf-eager hf-compiled. Each phase has its own time limit
# (T_TESTS, T_OPS, T_ENGINE, T_HF_EAGER, T_HF_COMPILED) so a slow one cannot starve the rest; logs land in OUTDIR.
set -uo pipefail
OUT=${1:?outdir}
PHASES=${PHASES:-tests ops engine hf-eager hf-compiled}
export MAX_JOBS=16 INFINILM_CUDA=1 PYTHONPATH=$PWD PYTHONUNBUFFERED=1
# A compiler wrapper that links libstdc++ statically makes every C++ exception from the extension crash in the
# unwinder; the system gcc (the one torch was built with) does not.
[ -x /usr/bin/g++ ] && export CC=/usr/bin/gcc CXX=/usr/bin/g++ LDSHARED="/usr/bin/g++ -shared"
t0=$(date +%s); el() { echo "$(( $(date +%s) - t0 ))s"; }
has() { [[ " $PHASES " == *" $1 "* ]]; }
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"
python setup.py -q build_ext --inplace > "$OUT/build.log" 2>&1 || { tail -40 "$OUT/build.log"; exit 1; }
echo "build done $(el)"
HF="python benchmarks/bench_hf.py --device cuda --shapes llama-3.2-1b --batch 1 32 --repeats 2"
if has tests; then
  timeout ${T_TESTS:-300} python -m pytest tests -p no:cacheprovider -rf -W ignore -k "cuda or Cuda or CUDA" \
    > "$OUT/test.log" 2>&1
  echo "tests rc=$? $(el): $(grep -E "passed|failed" "$OUT/test.log" | tail -1)"
  grep -E "^(FAILED|ERROR)" "$OUT/test.log" | head -20
fi
if has ops; then
  timeout ${T_OPS:-120} python benchmarks/bench_ops.py --quick > "$OUT/bench_ops.log" 2>&1; echo "bench_ops rc=$? $(el)"
  tail -n 60 "$OUT/bench_ops.log"
fi
if has engine; then
  timeout ${T_ENGINE:-110} python benchmarks/bench_engine.py --device cuda --dtype bfloat16 --batch 1 32 \
    --hidden 2048 --layers 16 --heads 32 --kv-heads 8 --intermediate 8192 --vocab 128256 --prompt-len 128 \
    --new-tokens 32 ${ENGINE_ARGS:-} > "$OUT/bench_engine.log" 2>&1; echo "bench_engine rc=$? $(el)"
  tail -n 15 "$OUT/bench_engine.log"
fi
if has hf-eager; then
  timeout ${T_HF_EAGER:-200} $HF --modes eager-dynamic eager-static > "$OUT/bench_hf_eager.log" 2>&1
  echo "bench_hf eager rc=$? $(el)"; tail -n 12 "$OUT/bench_hf_eager.log"
fi
if has hf-compiled; then
  timeout ${T_HF_COMPILED:-400} $HF --modes compiled > "$OUT/bench_hf_compiled.log" 2>&1
  echo "bench_hf compiled rc=$? $(el)"; tail -n 8 "$OUT/bench_hf_compiled.log"
fi
