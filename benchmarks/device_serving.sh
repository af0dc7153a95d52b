#!/usr/bin/env bash
# GPU serving run (one call, < 8 min on an H200): bench-throughput vs transformers' generate_batch and padded
# generate, the server under bench-serving at three request rates, and SmolLM2 when /tmp/smollm2.gguf exists.
#
# Needs: the extension built in place (INFINILM_CUDA=1 python setup.py build_ext --inplace), the wheels of
# fastapi / uvicorn / starlette / pydantic(-core) / annotated-types / typing-inspection / opentelemetry-api /
# typing-extensions / gguf for Python 3.12 in .whl/ (carried). Logs go to $OUT (one file per part).
set -uo pipefail
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  && export PYTHONPATH=/tmp/site:$PWD || exit 1
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
T0=$(date +%s); BUDGET=${BUDGET:-465}
el(){ echo "[$(( $(date +%s) - T0 ))s] $*"; }
left(){ local l=$(( BUDGET - ($(date +%s) - T0) )); (( l < $1 )) && echo $(( l > 5 ? l : 5 )) || echo "$1"; }
python -c "import torch, transformers; from infinilm_torch.lib import _infinilm; print('torch', torch.__version__, \
'transformers', transformers.__version__, torch.cuda.get_device_name())" || { echo "extension not built"; exit 1; }
python -c "import fastapi, uvicorn, infinilm_torch.serving.server; print('fastapi', fastapi.__version__, \
'uvicorn', uvicorn.__version__)" 2>&1 | tail -3
nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv,noheader

# Llama-3.2-1B shapes, random weights, bf16 (initialised on the GPU: seconds, not a minute of CPU init).
timeout 60 python - > "$OUT/ckpt.log" 2>&1 <<'PY'
import torch, transformers
cfg = transformers.LlamaConfig(vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
    num_attention_heads=32, num_key_value_heads=8, head_dim=64, max_position_embeddings=8192, rope_theta=500000.0,
    tie_word_embeddings=True, torch_dtype="bfloat16", bos_token_id=1, eos_token_id=2)
torch.manual_seed(0)
with torch.device("cuda"):
    m = transformers.LlamaForCausalLM(cfg).to(torch.bfloat16)
m.save_pretrained("/tmp/llama1b")
PY
el "checkpoint rc=$?"

ENG="--device cuda --dtype bfloat16 --cache paged --max-kv-memory-bytes 40000000000 --max-num-seqs 256"
WL="--num-seqs 256 --min-len 100 --max-input-len 1024 --max-output-len 256"
timeout "$(left 250)" python -m infinilm_torch bench-throughput --model /tmp/llama1b $ENG $WL \
  --baseline hf-cb --baseline hf-generate --hf-batch-size 64 2>&1 | tr '\r' '\n' | grep -v "Warning\|warn(\|Converting\|Loading" | tee "$OUT/throughput.log"
el "throughput rc=${PIPESTATUS[0]}"
# The same engine at 64 requests: per-step and host ms at a smaller batch (no baselines), the front end's
# synchronous and overlapped (async scheduling) loops in interleaved rounds, with their medians.
timeout "$(left 90)" python -m infinilm_torch bench-throughput --model /tmp/llama1b $ENG --num-seqs 64 --min-len 100 \
  --max-input-len 1024 --max-output-len 256 --scheduling both --rounds 3 2>&1 | tail -n 7 | tee -a "$OUT/throughput.log"
# Batch-1 decode through the front end (one request, 314 new tokens at seed 0), both loops: the idle gap between steps.
timeout "$(left 60)" python -m infinilm_torch bench-throughput --model /tmp/llama1b $ENG --num-seqs 1 --min-len 16 \
  --max-input-len 16 --max-output-len 512 --scheduling both --rounds 3 2>&1 | tail -n 7 | tee -a "$OUT/throughput.log"

python -m infinilm_torch serve --model /tmp/llama1b $ENG --port 8011 > "$OUT/serve.log" 2>&1 &
SRV=$!
for i in $(seq 60); do python -c "import httpx; httpx.get('http://127.0.0.1:8011/health').raise_for_status()" \
  2>/dev/null && break; kill -0 $SRV 2>/dev/null || break; sleep 1; done
el "server up"
for r in 4 16 inf; do
  timeout "$(left 40)" python -m infinilm_torch bench-serving --base-url http://127.0.0.1:8011 --request-rate $r \
    --num-seqs 64 --min-len 100 --max-input-len 512 --max-output-len 128 --vocab-size 32000 2>&1 \
    | tail -n 3 | tee -a "$OUT/serving.log"
done
kill $SRV 2>/dev/null; wait $SRV 2>/dev/null
el "serving done"; tail -n 5 "$OUT/serve.log"

if [ -f /tmp/smollm2.gguf ]; then
  timeout "$(left 150)" python -m infinilm_torch bench-throughput --model /tmp/smollm2.gguf --device cuda \
    --dtype bfloat16 --cache paged --max-kv-memory-bytes 20000000000 --max-num-seqs 256 $WL --baseline hf-cb \
    --baseline hf-generate --hf-batch-size 64 2>&1 | tr '\r' '\n' | grep -v "Warning\|warn(\|Converting\|Loading" | tee "$OUT/throughput_smollm2.log"
  el "smollm2 rc=${PIPESTATUS[0]}"
else
  el "no /tmp/smollm2.gguf: SmolLM2 part skipped"
fi
