"""A short tour of the operators: one Llama-style decoder layer's worth of infinilm ops on random data."""
import time

import torch

from infinilm_torch import ops


def main(argv=None) -> int:
    torch.manual_seed(0)
    T, H, Hq, Hk, D = 7, 256, 4, 2, 64
    x = torch.randn(T, H)
    w = torch.randn(H)
    t0 = time.perf_counter()
    y = ops.rms_norm(x, w, 1e-5)
    ref = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-5) * w
    print(f"rms_norm           max|err| = {(y - ref).abs().max():.2e}")
    g = torch.randn(T, 2 * H)
    z = ops.silu_and_mul(g)
    print(f"silu_and_mul       max|err| = {(z - torch.nn.functional.silu(g[:, :H]) * g[:, H:]).abs().max():.2e}")
    cache = ops.rope_cos_sin_cache(128, D, 10000.0)
    q, k = torch.randn(T, Hq, D), torch.randn(T, Hk, D)
    ops.rotary_embedding(torch.arange(T), q, k, cache, True)
    print(f"rotary_embedding   rotated q {tuple(q.shape)}, k {tuple(k.shape)}")
    print(f"done in {1e3 * (time.perf_counter() - t0):.1f} ms")
    return 0
