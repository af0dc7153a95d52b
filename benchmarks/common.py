"""Benchmark helpers: a device-aware median timer, the measured copy ceiling, and the fixed-width table."""
import statistics
import time

import torch


def sync(device):
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def bench_us(fn, device, warmup=3, min_time=0.2, max_iters=200):
    """Median wall time of fn() in µs (CUDA: triton.testing.do_bench when available, else synchronised timing)."""
    if str(device).startswith("cuda"):
        try:
            from triton.testing import do_bench

            return 1e3 * do_bench(fn, warmup=25, rep=100, return_mode="median")
        except ImportError:
            pass
    for _ in range(warmup):
        fn()
    sync(device)
    times, start = [], time.perf_counter()
    while len(times) < max_iters and (time.perf_counter() - start < min_time or len(times) < 5):
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return 1e6 * statistics.median(times)


def copy_ceiling_gbs(device, nbytes=None):
    """Measured device copy bandwidth in GB/s (bytes read + written), the roofline for memory-bound ops."""
    nbytes = nbytes or ((1 << 30) if str(device).startswith("cuda") else (256 << 20))
    src = torch.randn(nbytes // 4, device=device)
    dst = torch.empty_like(src)
    us = bench_us(lambda: dst.copy_(src), device)
    return 2 * nbytes / us / 1e3


def maybe_compile(fn, enabled):
    if not enabled:
        return None
    try:
        return torch.compile(fn, fullgraph=True)
    except Exception:  # noqa: BLE001 - a missing compiler just drops the column
        return None


MATMUL_TFLOPS = 790.0


class Table:
    """Fixed-width result table; one row per (op, config)."""

    HEAD = ("op", "config", "ours µs", "GB/s", "% ceil", "torch µs", "compile µs", "speedup")

    def __init__(self, ceiling_gbs):
        self.ceiling = ceiling_gbs
        self.rows = []

    def add(self, op, config, ours_us, nbytes=None, torch_us=None, compile_us=None, flops=None):
        rate = ""
        pct = ""
        if flops:  # % of the bf16 matmul rate of an H200 (ANCHORS.md: 790 TFLOP/s on random data)
            rate, pct = f"{flops / ours_us / 1e6:.1f}TF", f"{100 * flops / ours_us / 1e6 / MATMUL_TFLOPS:.0f}%"
        elif nbytes:
            gbs = nbytes / ours_us / 1e3
            rate, pct = f"{gbs:.1f}", f"{100 * gbs / self.ceiling:.0f}%"
        best = min(x for x in (torch_us, compile_us) if x) if (torch_us or compile_us) else None
        self.rows.append((op, config, f"{ours_us:.1f}", rate, pct, f"{torch_us:.1f}" if torch_us else "-",
                          f"{compile_us:.1f}" if compile_us else "-", f"{best / ours_us:.2f}x" if best else "-"))

    def print(self):
        widths = [max(len(str(r[i])) for r in [self.HEAD] + self.rows) for i in range(len(self.HEAD))]
        fmt = "  ".join(f"{{:<{w}}}" if i < 2 else f"{{:>{w}}}" for i, w in enumerate(widths))
        print(fmt.format(*self.HEAD))
        print("  ".join("-" * w for w in widths))
        for r in self.rows:
            print(fmt.format(*r))
