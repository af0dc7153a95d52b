"""Benchmark cases for the CUDA paged attention ops (decode GB/s, prefill TFLOP/s) against torch SDPA.

Each case function returns rows: dict(op, config, us, rate, unit, pct, baseline_us, speedup), where `pct` is
the share of the ceiling measured in the same run (device copy bandwidth for decode, a large bf16 matmul for
prefill) and `baseline_us` is torch SDPA on the same K/V laid out contiguously. Timing: CUDA-graph replays
(launch gaps removed for both sides), median over replays; decode rotates several input sets when one
set would fit in L2. Run directly for a table: python benchmarks/cases_cuda_attention.py
"""
from __future__ import annotations

import math
import statistics

import torch
import torch.nn.functional as F

from infinilm_torch import ops

HQ, HK, D, BS = 32, 8, 128, 16  # Llama-3-8B attention, block_size 16
L2_BYTES = 50 * 2**20


def time_graph(fns, reps=25, warmup=3):
    """Median microseconds per call of the callables `fns`, captured back to back in one CUDA graph."""
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for f in fns:
            f()
    torch.cuda.current_stream().wait_stream(s)
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        for f in fns:
            f()
    for _ in range(warmup):
        g.replay()
    times = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        g.replay()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b) * 1e3 / len(fns))
    return statistics.median(times)


def time_eager(fn, reps=50, warmup=5):
    """Median microseconds per call issued from Python (launch overheads included), timed with events."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b) * 1e3)
    return statistics.median(times)


def measure_ceilings():
    """Device copy bandwidth (GB/s, bytes read + written) and bf16 matmul rate (TFLOP/s) on this card."""
    src = torch.randn(2**28, device="cuda")  # 1 GiB
    dst = torch.empty_like(src)
    us = min(time_eager(lambda: dst.copy_(src), reps=10), time_eager(lambda: torch.add(src, 0, out=dst), reps=10))
    copy_gbps = 2 * src.numel() * 4 / us / 1e3
    del src, dst
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    us = time_graph([lambda: a @ b], reps=10)
    mm_tflops = 2 * 8192**3 / us / 1e6
    return {"copy_gbps": copy_gbps, "matmul_tflops": mm_tflops, "device": torch.cuda.get_device_name()}


def _paged(B, L, sets, dtype=torch.bfloat16, sequential=False):
    """Block tables over shuffled blocks (the hard case: no two neighbours adjacent), or in order."""
    nb = (L + BS - 1) // BS
    ids = torch.arange(B * nb, device="cuda", dtype=torch.int32) if sequential else torch.randperm(
        B * nb, device="cuda", dtype=torch.int32)
    bt = ids.view(B, nb)
    caches = [(torch.randn(B * nb, HK, BS, D, device="cuda", dtype=dtype),
               torch.randn(B * nb, HK, BS, D, device="cuda", dtype=dtype)) for _ in range(sets)]
    return bt, caches


try:
    from torch.nn.attention import SDPBackend, sdpa_kernel

    SDPA_BACKENDS = (("cudnn", SDPBackend.CUDNN_ATTENTION), ("flash", SDPBackend.FLASH_ATTENTION),
                     ("efficient", SDPBackend.EFFICIENT_ATTENTION))
except ImportError:  # older torch: the default dispatch only
    SDPA_BACKENDS, sdpa_kernel = (), None


def time_sdpa_backends(make_fns, reps=25):
    """{backend: median us} for SDPA forced onto each backend (nan where it refuses the shapes)."""
    out = {}
    for name, backend in SDPA_BACKENDS:
        try:
            with sdpa_kernel([backend]):
                out[name] = time_graph(make_fns(), reps=reps)
        except RuntimeError:
            out[name] = float("nan")
    if not SDPA_BACKENDS:
        out["default"] = time_graph(make_fns(), reps=reps)
    return out


DECODE_GRID = tuple((B, L) for B in (1, 8, 32, 128) for L in (512, 4096, 32768))


def bench_paged_attention_decode(ceil, configs=DECODE_GRID + ((1, 32768, "in-order blocks"), (32, 4096, "softcap=50"),
                                                              (32, 32768, "window=4096"))):
    """Decode over the paged cache vs SDPA (each backend) on contiguous K/V [B, Hk, L, D], same run. Rows with
    a note (in-order blocks, a soft-cap, a window) have no SDPA baseline; a window's bytes are the window's."""
    rows = []
    for B, L, *note in configs:
        opt = {}
        for n in note:
            if "=" in n:
                key, val = n.split("=")
                opt = {"softcap": float(val)} if key == "softcap" else {"window_left": int(val) - 1}
        read = min(L, opt["window_left"] + 1) if "window_left" in opt else L
        kv_bytes = 2 * B * read * HK * D * 2
        sets = max(1, min(8, math.ceil(2 * L2_BYTES / kv_bytes)))
        bt, caches = _paged(B, L, sets, sequential="in-order blocks" in note)
        q = torch.randn(B, HQ, D, device="cuda", dtype=torch.bfloat16)
        sl = torch.full((B,), L, dtype=torch.int32, device="cuda")
        scale = 1 / math.sqrt(D)
        us = time_graph([lambda kc=kc, vc=vc: ops.paged_attention_decode(q, kc, vc, bt, sl, scale, L, **opt)
                         for kc, vc in caches])
        del caches
        qs = q.view(B, HQ, 1, D)
        kvs = [] if note else [(torch.randn(B, HK, L, D, device="cuda", dtype=torch.bfloat16),
                                torch.randn(B, HK, L, D, device="cuda", dtype=torch.bfloat16)) for _ in range(sets)]
        sdpa = {} if note else time_sdpa_backends(lambda: [
            lambda k=k, v=v: F.scaled_dot_product_attention(qs, k, v, scale=scale, enable_gqa=True) for k, v in kvs])
        del kvs
        moved = kv_bytes + 2 * B * HQ * D * 2
        best = min([t for t in sdpa.values() if not math.isnan(t)], default=float("nan"))
        cfg = f"B={B} ctx={L} " + "".join(note)
        rows.append(dict(op="paged_attention_decode", config=cfg, us=us, rate=moved / us / 1e3, unit="GB/s",
                         nbytes=moved, pct=100 * moved / us / 1e3 / ceil["copy_gbps"], baseline_us=best,
                         speedup=best / us))
        for name, t in sdpa.items():
            rows.append(dict(op=f"  sdpa[{name}]", config=cfg, us=t, rate=moved / t / 1e3, unit="GB/s", nbytes=moved,
                             pct=100 * moved / t / 1e3 / ceil["copy_gbps"], baseline_us=float("nan"),
                             speedup=float("nan")))
    return rows


def bench_paged_attention_prefill(ceil, configs=((2048, 0, 1, 64), (2048, 0, 1, 128), (8192, 0, 1, 64),
                                                 (8192, 0, 1, 128), (1024, 3072, 4, 128), (512, 0, 16, 128))):
    """configs: (new tokens per request, cached prefix per request, requests, head_dim); causal, GQA 32/8."""
    rows = []
    for S, P, n, d in configs:
        scale = 1 / math.sqrt(d)
        L = S + P
        nb = (L + BS - 1) // BS
        bt = torch.randperm(n * nb, device="cuda", dtype=torch.int32).view(n, nb)
        kc = torch.randn(n * nb, HK, BS, d, device="cuda", dtype=torch.bfloat16)
        vc = torch.randn_like(kc)
        T = S * n
        q = torch.randn(T, HQ, d, device="cuda", dtype=torch.bfloat16)
        qsl = torch.arange(0, T + 1, S, dtype=torch.int32, device="cuda")
        sl = torch.full((n,), L, dtype=torch.int32, device="cuda")
        us = time_graph([lambda: ops.paged_attention_prefill(q, kc, vc, bt, qsl, sl, scale, S, L)], reps=10)
        pairs = n * (S * P + S * (S + 1) // 2)  # (query, key) pairs computed
        flops = 4 * pairs * d * HQ
        sdpa = {}
        if P == 0 and n == 1:
            qq = torch.randn(1, HQ, S, d, device="cuda", dtype=torch.bfloat16)
            k = torch.randn(1, HK, S, d, device="cuda", dtype=torch.bfloat16)
            v = torch.randn_like(k)
            ke, ve = k.repeat_interleave(HQ // HK, 1), v.repeat_interleave(HQ // HK, 1)  # efficient: no GQA
            sdpa = time_sdpa_backends(lambda: [lambda: F.scaled_dot_product_attention(
                qq, ke, ve, is_causal=True, scale=scale)], reps=10)
        best = min([t for t in sdpa.values() if not math.isnan(t)], default=float("nan"))
        cfg = f"S={S} prefix={P} reqs={n} d={d}"
        rows.append(dict(op="paged_attention_prefill", config=cfg, us=us, rate=flops / us / 1e6, flops=flops,
                         unit="TFLOP/s", pct=100 * flops / us / 1e6 / ceil["matmul_tflops"], baseline_us=best,
                         speedup=best / us))
        for name, t in sdpa.items():
            rows.append(dict(op=f"  sdpa[{name}]", config=cfg, us=t, rate=flops / t / 1e6, flops=flops, unit="TFLOP/s",
                             pct=100 * flops / t / 1e6 / ceil["matmul_tflops"], baseline_us=float("nan"),
                             speedup=float("nan")))
        del kc, vc
    return rows


def rows(device, quick=False):
    """Table.add keyword rows for benchmarks/bench_ops.py (CUDA only; graph-replay timing, SDPA baselines)."""
    if not str(device).startswith("cuda"):
        return
    ceil = {"copy_gbps": float("nan"), "matmul_tflops": float("nan")}  # Table computes its own % of ceiling
    dec = ((1, 4096), (1, 32768), (32, 4096)) if quick else None
    pre = ((2048, 0, 1, 128), (8192, 0, 1, 128)) if quick else None
    out = (bench_paged_attention_decode(ceil, dec) if dec else bench_paged_attention_decode(ceil)) + (
        bench_paged_attention_prefill(ceil, pre) if pre else bench_paged_attention_prefill(ceil))
    for r in out:
        if math.isnan(r["us"]):
            continue
        base = None if math.isnan(r["baseline_us"]) else r["baseline_us"]
        row = dict(op=r["op"], config=f"{r['config'].strip()} {HQ}/{HK} bs{BS} (graph)", ours_us=r["us"], torch_us=base)
        row.update({k: r[k] for k in ("nbytes", "flops") if k in r})
        yield row


def print_rows(rows, ceil):
    print(f"device: {ceil['device']}; copy {ceil['copy_gbps']:.0f} GB/s; bf16 matmul {ceil['matmul_tflops']:.0f} TFLOP/s")
    print(f"{'op':<24} {'config':<32} {'us':>9} {'rate':>9} {'unit':<8} {'%ceil':>6} {'SDPA us':>9} {'x SDPA':>7}")
    for r in rows:
        print(f"{r['op']:<24} {r['config']:<36} {r['us']:9.1f} {r['rate']:9.1f} {r['unit']:<8} {r['pct']:6.1f} "
              f"{r['baseline_us']:9.1f} {r['speedup']:7.2f}")


def main(argv=None):
    import argparse
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", choices=("decode", "prefill"), help="run one half of the grid")
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    ceil = measure_ceilings()
    rows = [] if args.only == "prefill" else bench_paged_attention_decode(ceil)
    rows += [] if args.only == "decode" else bench_paged_attention_prefill(ceil)
    print_rows(rows, ceil)


if __name__ == "__main__":
    main()
