"""Each infinilm op against its plain-PyTorch equivalent (and torch.compile on CUDA), same run, one table.

    python benchmarks/bench_ops.py [--device cpu|cuda] [--quick]

Memory-bound ops report achieved GB/s (bytes read + written) and the share of the measured copy ceiling.
"""
import argparse
import importlib
import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(1, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from common import Table, bench_us, copy_ceiling_gbs, maybe_compile  # noqa: E402

from infinilm_torch import ops  # noqa: E402


def torch_rms_norm(x, w, eps=1e-5):
    xf = x.float()
    return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps) * w.float()).to(x.dtype)


def torch_add_rms_norm(x, r, w, eps=1e-5):
    r = r + x
    return torch_rms_norm(r, w, eps), r


def torch_silu_and_mul(x):
    d = x.shape[-1] // 2
    return F.silu(x[..., :d]) * x[..., d:]


def torch_rope(pos, q, k, table):
    half = table.shape[1] // 2
    cos, sin = table[pos, :half].to(q.dtype)[:, None], table[pos, half:].to(q.dtype)[:, None]

    def rot(x):
        a, b = x[..., :half], x[..., half:]
        return torch.cat([a * cos - b * sin, b * cos + a * sin], dim=-1)

    return rot(q), rot(k)


def torch_cache_write(k, v, kc, vc, slots, bs):
    blk, off = slots // bs, slots % bs
    kc[blk, :, off] = k
    vc[blk, :, off] = v


def run_elementwise(table, device, dtype, tokens, hidden, inter, compile_on):
    esz = torch.tensor([], dtype=dtype).element_size()
    c_norm = maybe_compile(torch_rms_norm, compile_on)
    c_add = maybe_compile(torch_add_rms_norm, compile_on)
    c_silu = maybe_compile(torch_silu_and_mul, compile_on)
    for T in tokens:
        for H in hidden:
            x = torch.randn(T, H, device=device, dtype=dtype)
            r = torch.randn(T, H, device=device, dtype=dtype)
            w = torch.randn(H, device=device, dtype=dtype)
            cfg = f"T={T} H={H}"
            table.add("rms_norm", cfg, bench_us(lambda: ops.rms_norm(x, w, 1e-5), device), 2 * T * H * esz,
                      bench_us(lambda: torch_rms_norm(x, w), device),
                      bench_us(lambda: c_norm(x, w), device) if c_norm else None)
            table.add("fused_add_rms_norm", cfg, bench_us(lambda: ops.fused_add_rms_norm(x, r, w, 1e-5), device),
                      4 * T * H * esz, bench_us(lambda: torch_add_rms_norm(x, r, w), device),
                      bench_us(lambda: c_add(x, r, w), device) if c_add else None)
        g = torch.randn(T, 2 * inter, device=device, dtype=dtype)
        table.add("silu_and_mul", f"T={T} I={inter}", bench_us(lambda: ops.silu_and_mul(g), device), 3 * T * inter * esz,
                  bench_us(lambda: torch_silu_and_mul(g), device),
                  bench_us(lambda: c_silu(g), device) if c_silu else None)


def run_rope_cache(table, device, dtype, tokens, hq, hk, d, compile_on):
    esz = torch.tensor([], dtype=dtype).element_size()
    rope = ops.rope_cos_sin_cache(8192, d, 500000.0).to(device)
    c_rope = maybe_compile(torch_rope, compile_on)
    bs = 16
    for T in tokens:
        pos = torch.randint(0, 8192, (T,), device=device)
        q = torch.randn(T, hq, d, device=device, dtype=dtype)
        k = torch.randn(T, hk, d, device=device, dtype=dtype)
        nbytes = 2 * T * (hq + hk) * d * esz
        table.add("rotary_embedding", f"T={T} {hq}/{hk}x{d}", bench_us(lambda: ops.rotary_embedding(pos, q, k, rope, True), device),
                  nbytes, bench_us(lambda: torch_rope(pos, q, k, rope), device),
                  bench_us(lambda: c_rope(pos, q, k, rope), device) if c_rope else None)
        nb = (T + bs - 1) // bs + 8
        kc = torch.randn(nb, hk, bs, d, device=device, dtype=dtype)
        vc = torch.randn_like(kc)
        slots = torch.randperm(nb * bs, device=device)[:T]
        kk, vv = torch.randn(T, hk, d, device=device, dtype=dtype), torch.randn(T, hk, d, device=device, dtype=dtype)
        table.add("reshape_and_cache", f"T={T} {hk}x{d} bs={bs}",
                  bench_us(lambda: ops.reshape_and_cache(kk, vv, kc, vc, slots), device), 4 * T * hk * d * esz,
                  bench_us(lambda: torch_cache_write(kk, vv, kc, vc, slots, bs), device))
        # The fused op against the two launches it replaces (the "torch" column here: ours, unfused).
        separate = bench_us(lambda: (ops.rotary_embedding(pos, q, kk, rope, True),
                                     ops.reshape_and_cache(kk, vv, kc, vc, slots)), device)
        fused = bench_us(lambda: ops.rotary_embedding_and_cache(pos, q, kk, vv, kc, vc, slots, rope, True), device)
        table.add("rotary_embedding_and_cache (vs separate)", f"T={T} {hq}/{hk}x{d} bs={bs}", fused,
                  2 * T * (hq + hk) * d * esz + 3 * T * hk * d * esz, separate)


def run_cases(table, device, quick):
    """Attention and sampling cases live in benchmarks/cases_*.py; each yields Table.add keyword rows."""
    here = os.path.dirname(os.path.abspath(__file__))
    for name in sorted(os.listdir(here)):
        if not (name.startswith("cases_") and name.endswith(".py")):
            continue
        mod = importlib.import_module(name[:-3])
        if hasattr(mod, "rows"):
            for row in mod.rows(device, quick=quick):
                table.add(**row)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default="bfloat16", choices=["float32", "float16", "bfloat16"])
    ap.add_argument("--quick", action="store_true", help="fewer sizes")
    ap.add_argument("--no-compile", action="store_true", help="skip the torch.compile baseline")
    args = ap.parse_args(argv)
    device, dtype = args.device, getattr(torch, args.dtype)
    torch.manual_seed(0)
    cuda = device.startswith("cuda")
    compile_on = cuda and not args.no_compile
    ceiling = copy_ceiling_gbs(device)
    name = torch.cuda.get_device_name() if cuda else f"CPU ({torch.get_num_threads()} threads)"
    print(f"device: {name}; dtype {args.dtype}; measured copy ceiling {ceiling:.1f} GB/s; torch {torch.__version__}")
    table = Table(ceiling)
    if cuda:
        tokens = [1, 128, 4096] if args.quick else [1, 128, 4096, 16384]
        run_elementwise(table, device, dtype, tokens, [4096, 8192], 14336, compile_on)
        run_rope_cache(table, device, dtype, [128, 4096, 16384], 32, 8, 128, compile_on)
    else:  # Llama-3.2-1B sizes: hidden 2048, intermediate 8192, 32/8 heads of 64
        tokens = [1, 128] if args.quick else [1, 128, 512]
        run_elementwise(table, device, dtype, tokens, [2048], 8192, compile_on)
        run_rope_cache(table, device, dtype, tokens, 32, 8, 64, compile_on)
    run_cases(table, device, args.quick)
    table.print()


if __name__ == "__main__":
    main()
