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


def bench_paged_attention_decode(ceil, configs=((1, 512), (1, 4096), (1, 32768), (8, 4096), (32, 4096),
                                                (64, 8192), (128, 2048), (256, 2048), (256, 512),
                                                (1, 32768, "in-order blocks"), (32, 4096, "in-order blocks"))):
    rows = []
    for B, L, *note in configs:
        kv_bytes = 2 * B * L * HK * D * 2
        sets = max(1, min(8, math.ceil(2 * L2_BYTES / kv_bytes)))
        bt, caches = _paged(B, L, sets, sequential=bool(note))
        q = torch.randn(B, HQ, D, device="cuda", dtype=torch.bfloat16)
        sl = torch.full((B,), L, dtype=torch.int32, device="cuda")
        scale = 1 / math.sqrt(D)
        us = time_graph([lambda kc=kc, vc=vc: ops.paged_attention_decode(q, kc, vc, bt, sl, scale, L)
                         for kc, vc in caches])
        del caches
        qs = q.view(B, HQ, 1, D)
        kvs = [(torch.randn(B, HK, L, D, device="cuda", dtype=torch.bfloat16),
                torch.randn(B, HK, L, D, device="cuda", dtype=torch.bfloat16)) for _ in range(sets)]
        try:
            base = time_graph([lambda k=k, v=v: F.scaled_dot_product_attention(qs, k, v, scale=scale, enable_gqa=True)
                               for k, v in kvs])
        except RuntimeError:
            base = float("nan")
        del kvs
        moved = kv_bytes + 2 * B * HQ * D * 2
        gbps = moved / us / 1e3
        rows.append(dict(op="paged_attention_decode", config=f"B={B} ctx={L} " + "".join(note), us=us, rate=gbps,
                         unit="GB/s", nbytes=moved,
                         pct=100 * gbps / ceil["copy_gbps"], baseline_us=base, speedup=base / us))
        if B == 1 and L == 4096 and not note:  # the anchor's SDPA figure (865 GB/s) was taken eagerly: compare that way too
            kc, vc = _paged(B, L, 1)[1][0]
            k, v = torch.randn(2, B, HK, L, D, device="cuda", dtype=torch.bfloat16).unbind(0)
            e_us = time_eager(lambda: ops.paged_attention_decode(q, kc, vc, bt, sl, scale, L))
            e_base = time_eager(lambda: F.scaled_dot_product_attention(qs, k, v, scale=scale, enable_gqa=True))
            rows.append(dict(op="paged_attention_decode", config=f"B={B} ctx={L} eager", us=e_us, nbytes=moved,
                             rate=moved / e_us / 1e3, unit="GB/s", pct=100 * moved / e_us / 1e3 / ceil["copy_gbps"],
                             baseline_us=e_base, speedup=e_base / e_us))
    return rows


def _sdpa_prefill(S, scale):
    q = torch.randn(1, HQ, S, D, device="cuda", dtype=torch.bfloat16)
    k = torch.randn(1, HK, S, D, device="cuda", dtype=torch.bfloat16)
    v = torch.randn(1, HK, S, D, device="cuda", dtype=torch.bfloat16)
    best = float("inf")
    ke, ve = k.repeat_interleave(HQ // HK, 1), v.repeat_interleave(HQ // HK, 1)  # MHA layout: every backend
    for fn in (lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale, enable_gqa=True),
               lambda: F.scaled_dot_product_attention(q, ke, ve, is_causal=True, scale=scale)):
        try:
            best = min(best, time_graph([fn], reps=10))
        except RuntimeError:
            pass
    return best


def bench_paged_attention_prefill(ceil, configs=((512, 0, 1), (1024, 0, 1), (2048, 0, 1), (4096, 0, 1),
                                                 (8192, 0, 1), (1024, 3072, 4), (512, 0, 16))):
    """configs: (new tokens per request, cached prefix per request, requests)."""
    rows = []
    scale = 1 / math.sqrt(D)
    for S, P, n in configs:
        L = S + P
        bt, caches = _paged(n, L, 1)
        kc, vc = caches[0]
        T = S * n
        q = torch.randn(T, HQ, D, device="cuda", dtype=torch.bfloat16)
        qsl = torch.arange(0, T + 1, S, dtype=torch.int32, device="cuda")
        sl = torch.full((n,), L, dtype=torch.int32, device="cuda")
        us = time_graph([lambda: ops.paged_attention_prefill(q, kc, vc, bt, qsl, sl, scale, S, L)], reps=10)
        pairs = n * (S * P + S * (S + 1) // 2)  # (query, key) pairs computed
        tflops = 4 * pairs * D * HQ / us / 1e6
        base = _sdpa_prefill(S, scale) * n if P == 0 else float("nan")
        rows.append(dict(op="paged_attention_prefill", config=f"S={S} prefix={P} reqs={n}", us=us, rate=tflops,
                         flops=4 * pairs * D * HQ,
                         unit="TFLOP/s", pct=100 * tflops / ceil["matmul_tflops"], baseline_us=base,
                         speedup=base / us))
        del kc, vc, caches
    return rows


def rows(device, quick=False):
    """Table.add keyword rows for benchmarks/bench_ops.py (CUDA only; graph-replay timing, SDPA baseline)."""
    if not str(device).startswith("cuda"):
        return
    ceil = {"copy_gbps": float("nan"), "matmul_tflops": float("nan")}  # Table computes its own % of ceiling
    dec = ((1, 4096), (1, 32768), (32, 4096)) if quick else None
    pre = ((2048, 0, 1), (8192, 0, 1)) if quick else None
    out = (bench_paged_attention_decode(ceil, dec) if dec else bench_paged_attention_decode(ceil)) + (
        bench_paged_attention_prefill(ceil, pre) if pre else bench_paged_attention_prefill(ceil))
    for r in out:
        base = None if math.isnan(r["baseline_us"]) else r["baseline_us"]
        how = "" if "eager" in r["config"] else " (graph)"
        row = dict(op=r["op"], config=f"{r['config'].strip()} {HQ}/{HK}x{D} bs{BS}{how}", ours_us=r["us"],
                   torch_us=base)
        row.update({k: r[k] for k in ("nbytes", "flops") if k in r})
        yield row


def print_rows(rows, ceil):
    print(f"device: {ceil['device']}; copy {ceil['copy_gbps']:.0f} GB/s; bf16 matmul {ceil['matmul_tflops']:.0f} TFLOP/s")
    print(f"{'op':<24} {'config':<32} {'us':>9} {'rate':>9} {'unit':<8} {'%ceil':>6} {'SDPA us':>9} {'x SDPA':>7}")
    for r in rows:
        print(f"{r['op']:<24} {r['config']:<32} {r['us']:9.1f} {r['rate']:9.1f} {r['unit']:<8} {r['pct']:6.1f} "
              f"{r['baseline_us']:9.1f} {r['speedup']:7.2f}")


def main():
    torch.manual_seed(0)
    ceil = measure_ceilings()
    rows = bench_paged_attention_decode(ceil) + bench_paged_attention_prefill(ceil)
    print_rows(rows, ceil)


if __name__ == "__main__":
    main()
