"""CPU dense-layer cases: the engine's skinny linear (decode steps) against torch's F.linear (MKL / oneDNN).

    python benchmarks/cases_linear.py

One decode step's worth of weights of the 134M-parameter bench_engine Llama (12 layers of qkv, o, gate_up,
down, and the lm_head; 440 MB fp32), so the weights stream from memory as in the engine rather than sitting in
cache. bytes = the weights read once; the roofline is the measured copy ceiling. The second table times each skinny
build (AVX-512 where the CPU has AVX512-BF16, AVX2) against F.linear on the same streamed weights.
"""
import os
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(1, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from infinilm_torch.lib import _infinilm  # noqa: E402

SHAPES = [(2304, 768), (768, 768), (4096, 768), (768, 2048)] * 12 + [(32000, 768)]


def best_ms(fn, weights, xs, repeats):
    for w in weights:  # warm-up
        fn(xs[w.shape[1]], w)
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        for w in weights:
            fn(xs[w.shape[1]], w)
        best = min(best, time.perf_counter() - t)
    return best * 1e3


def bench_linear(cases, repeats=3):
    """Rows (config, ours µs, torch µs, bytes) for (dtype, rows) cases."""
    out = []
    for dtype in dict.fromkeys(d for d, _ in cases):
        weights = [torch.randn(*s, dtype=dtype) for s in SHAPES]
        nbytes = sum(w.numel() * w.element_size() for w in weights)
        for d, m in cases:
            if d != dtype:
                continue
            xs = {k: torch.randn(m, k, dtype=dtype) for k in {s[1] for s in SHAPES}}
            ours = best_ms(_infinilm._linear, weights, xs, repeats)
            base = best_ms(F.linear, weights, xs, repeats)
            out.append((f"{str(dtype)[6:]} rows={m} (49 weights, {nbytes >> 20} MiB)", 1e3 * ours, 1e3 * base, nbytes))
        del weights
    return out


def rows(device, quick=False):
    """Table.add keyword rows for benchmarks/bench_ops.py (CPU only: on CUDA the engine uses at::linear)."""
    if device != "cpu":
        return
    cases = [(torch.float32, 1), (torch.float32, 8)] if quick else [
        (torch.float32, 1), (torch.float32, 4), (torch.float32, 8), (torch.float32, 16),
        (torch.bfloat16, 1), (torch.bfloat16, 4)]
    for config, ours, base, nbytes in bench_linear(cases):
        yield dict(op="linear (engine)", config=config, ours_us=ours, nbytes=nbytes, torch_us=base)


def isa_rows(dtypes=(torch.float32, torch.bfloat16), ms=(1, 4, 8, 16), repeats=3):
    """Each skinny build (INFINILM_CPU_LINEAR=skinny, INFINILM_CPU_ISA caps it) vs F.linear, streamed weights."""
    print(f"{'case':<44} {'AVX-512 ms':>10} {'AVX2 ms':>8} {'F.linear ms':>11}   (the engine's choice is measured)")
    for dtype in dtypes:
        weights = [torch.randn(*s, dtype=dtype) for s in SHAPES]
        for m in ms:
            xs = {k: torch.randn(m, k, dtype=dtype) for k in {s[1] for s in SHAPES}}
            got = []
            for cap in ("", "avx2"):
                os.environ.update(INFINILM_CPU_LINEAR="skinny", INFINILM_CPU_ISA=cap)
                got.append(best_ms(_infinilm._linear, weights, xs, repeats))
            os.environ.pop("INFINILM_CPU_LINEAR")
            os.environ.pop("INFINILM_CPU_ISA")
            got.append(best_ms(F.linear, weights, xs, repeats))
            print(f"{f'{str(dtype)[6:]} rows={m}':<44} {got[0]:>10.1f} {got[1]:>8.1f} {got[2]:>11.1f}", flush=True)
        del weights


if __name__ == "__main__":
    print(f"{'case':<44} {'ours ms':>9} {'F.linear ms':>11} {'speedup':>8}   ({torch.get_num_threads()} threads)")
    for config, ours, base, _ in bench_linear([(torch.float32, m) for m in (1, 4, 8, 16)]
                                              + [(torch.bfloat16, m) for m in (1, 4, 8)]):
        print(f"{config:<44} {ours / 1e3:>9.1f} {base / 1e3:>11.1f} {base / ours:>7.2f}x")
    isa_rows()
