"""Paged attention benchmark cases: ours over a shuffled paged cache vs torch SDPA on the same K/V laid out densely."""
import math

import torch
import torch.nn.functional as F

from common import bench_us

from infinilm_torch import ops

# Llama-3.2-1B attention: 32 query heads, 8 KV heads, head_dim 64.
HQ, HK, D, BS = 32, 8, 64, 16


def _paged(k, v, device):
    """Scatter dense K/V [B, Hk, L, D] into a paged cache with shuffled blocks; returns caches and block table."""
    B, hk, L, d = k.shape
    nb = math.ceil(L / BS)
    ids = torch.randperm(B * nb, device=device).view(B, nb)
    kc = torch.empty(B * nb, hk, BS, d, device=device, dtype=k.dtype)
    vc = torch.empty_like(kc)
    pad = nb * BS - L
    kp, vp = F.pad(k, (0, 0, 0, pad)), F.pad(v, (0, 0, 0, pad))
    kc[ids.flatten()] = kp.view(B, hk, nb, BS, d).transpose(1, 2).reshape(B * nb, hk, BS, d)
    vc[ids.flatten()] = vp.view(B, hk, nb, BS, d).transpose(1, 2).reshape(B * nb, hk, BS, d)
    return kc, vc, ids.to(torch.int32)


def _sdpa(q, k, v, causal):
    # Best of the GQA-native call and pre-expanded heads (expansion done outside the timed region).
    return F.scaled_dot_product_attention(q, k, v, is_causal=causal, enable_gqa=True)


def bench_attention(device, dtype=torch.bfloat16, quick=False):
    """Rows (name, ours µs, SDPA µs, bytes of K/V + q + out touched)."""
    esz = torch.tensor([], dtype=dtype).element_size()
    rows = []
    scale = D**-0.5
    for B, L in ([(1, 512), (8, 2048)] if quick else [(1, 512), (1, 2048), (8, 512), (8, 2048)]):
        q = torch.randn(B, HQ, D, device=device, dtype=dtype)
        k = torch.randn(B, HK, L, D, device=device, dtype=dtype)
        v = torch.randn_like(k)
        kc, vc, bt = _paged(k, v, device)
        sl = torch.full((B,), L, device=device, dtype=torch.int32)
        ours = bench_us(lambda: ops.paged_attention_decode(q, kc, vc, bt, sl, scale, L), device)
        q4 = q[:, :, None]
        k_rep, v_rep = k.repeat_interleave(HQ // HK, 1), v.repeat_interleave(HQ // HK, 1)
        base = min(bench_us(lambda: _sdpa(q4, k, v, False), device),
                   bench_us(lambda: F.scaled_dot_product_attention(q4, k_rep, v_rep), device))
        nbytes = (2 * B * HK * L * D + 2 * B * HQ * D) * esz
        rows.append((f"decode B={B} ctx={L}", ours, base, nbytes))
    for T in [128, 512]:
        q = torch.randn(T, HQ, D, device=device, dtype=dtype)
        k = torch.randn(1, HK, T, D, device=device, dtype=dtype)
        v = torch.randn_like(k)
        kc, vc, bt = _paged(k, v, device)
        qsl = torch.tensor([0, T], device=device, dtype=torch.int32)
        sl = torch.tensor([T], device=device, dtype=torch.int32)
        ours = bench_us(lambda: ops.paged_attention_prefill(q, kc, vc, bt, qsl, sl, scale, T, T), device)
        q4 = q.transpose(0, 1)[None]
        k_rep, v_rep = k.repeat_interleave(HQ // HK, 1), v.repeat_interleave(HQ // HK, 1)
        base = min(bench_us(lambda: _sdpa(q4, k, v, True), device),
                   bench_us(lambda: F.scaled_dot_product_attention(q4, k_rep, v_rep, is_causal=True), device))
        nbytes = (2 * T * HK * D + 2 * T * HQ * D) * esz
        rows.append((f"prefill T={T}", ours, base, nbytes))
    return rows


def rows(device, quick=False):
    """Table.add keyword rows for benchmarks/bench_ops.py; on CUDA prefill reports TFLOP/s (it is compute-bound)."""
    for name, ours, base, nbytes in bench_attention(device, quick=quick):
        kind, cfg = name.split(" ", 1)
        row = dict(op=f"paged_attention_{kind}", config=f"{cfg} {HQ}/{HK}x{D}", ours_us=ours, torch_us=base)
        if kind == "prefill" and str(device).startswith("cuda"):
            T = int(cfg.split("=")[1])
            row["flops"] = 2 * T * T * HQ * D  # causal: half of 4 * T^2 * Hq * D
        else:
            row["nbytes"] = nbytes
        yield row


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="bfloat16")
    a = ap.parse_args()
    print(f"{'case':24} {'ours µs':>10} {'SDPA µs':>10} {'speedup':>8} {'GB/s':>7}")
    for name, ours, base, nbytes in bench_attention(a.device, getattr(torch, a.dtype)):
        print(f"{name:24} {ours:10.1f} {base:10.1f} {base / ours:7.2f}x {nbytes / ours / 1e3:7.1f}")
