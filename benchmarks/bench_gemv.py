"""Decode-sized linear layers on CUDA: infinilm's skinny GEMM kernel vs torch.nn.functional.linear (cuBLAS).

Per shape: median µs (triton do_bench, L2 flushed between calls), weight GB/s, % of the copy ceiling measured in
the same run, cuBLAS µs. Then whole decode steps: every product of a model's step (each layer its own weights, so
nothing is served from L2) captured in one CUDA graph per side and replayed, timed with CUDA events.

    python benchmarks/bench_gemv.py [--models 1b,8b] [--rows 1,4,8]
"""
import argparse
import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from common import Table, bench_us, copy_ceiling_gbs  # noqa: E402

from infinilm_torch import ops  # noqa: E402

# name: (layers, [(label, N, K)], (lm_head N, K))
MODELS = {
    "1b": (16, [("qkv", 3072, 2048), ("o", 2048, 2048), ("gate_up", 16384, 2048), ("down", 2048, 8192)],
           (128256, 2048)),
    "8b": (32, [("qkv", 6144, 4096), ("o", 4096, 4096), ("gate_up", 28672, 4096), ("down", 4096, 14336)],
           (128256, 4096)),
}


def bench_gemv(table, model, m, dtype):
    _, shapes, lm = MODELS[model]
    for label, n, k in shapes + [("lm_head", *lm)]:
        w = torch.randn(n, k, device="cuda", dtype=dtype) / k ** 0.5
        x = torch.randn(m, k, device="cuda", dtype=dtype)
        os.environ["INFINILM_CUDA_LINEAR"] = "gemv"  # the kernel itself, not the per-shape choice
        ours = bench_us(lambda: ops.linear(x, w), "cuda")
        base = bench_us(lambda: F.linear(x, w), "cuda")
        table.add("gemv", f"{model} {label} M={m} {n}x{k}", ours, nbytes=w.numel() * w.element_size(),
                  torch_us=base)
        del w


def graph_step_us(fns, reps=20):
    """Device time of one replay of all fns captured in one CUDA graph (median of reps, CUDA events)."""
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for f in fns:
            f()
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        for f in fns:
            f()
    g.replay()
    times = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        g.replay()
        b.record()
        b.synchronize()
        times.append(1e3 * a.elapsed_time(b))
    return sorted(times)[len(times) // 2]


def bench_step(table, model, m, dtype):
    layers, shapes, lm = MODELS[model]
    weights = [torch.randn(n, k, device="cuda", dtype=dtype) for _ in range(layers) for _, n, k in shapes]
    weights.append(torch.randn(*lm, device="cuda", dtype=dtype))
    xs = {k: torch.randn(m, k, device="cuda", dtype=dtype) for k in {w.shape[1] for w in weights}}
    nbytes = sum(w.numel() * w.element_size() for w in weights)
    os.environ["INFINILM_CUDA_LINEAR"] = "gemv"
    ours = graph_step_us([lambda w=w: ops.linear(xs[w.shape[1]], w) for w in weights])
    os.environ.pop("INFINILM_CUDA_LINEAR")  # per-shape timed choice, as the engine runs by default
    auto = graph_step_us([lambda w=w: ops.linear(xs[w.shape[1]], w) for w in weights])
    base = graph_step_us([lambda w=w: F.linear(xs[w.shape[1]], w) for w in weights])
    table.add("decode-step products", f"{model} M={m} ({len(weights)} products, graph)", ours, nbytes=nbytes,
              torch_us=base)
    table.add("decode-step products, timed choice", f"{model} M={m} ({len(weights)} products, graph)", auto,
              nbytes=nbytes, torch_us=base)
    del weights


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="1b,8b")
    ap.add_argument("--rows", default="1,2,4,8")
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16"])
    args = ap.parse_args(argv)
    dtype = getattr(torch, args.dtype)
    ceiling = copy_ceiling_gbs("cuda")
    print(f"device: {torch.cuda.get_device_name()}; {args.dtype}; measured copy ceiling {ceiling:.1f} GB/s "
          f"(read + written); GB/s below = weight bytes read / time; 'torch' = F.linear (cuBLAS), same run")
    table = Table(ceiling)
    rows = [int(r) for r in args.rows.split(",")]
    for model in args.models.split(","):
        for m in rows:
            bench_gemv(table, model, m, dtype)
        for m in rows:
            bench_step(table, model, m, dtype)
    table.print()


if __name__ == "__main__":
    main()
