"""Runs every CUDA op once per dtype on small awkward shapes, for compute-sanitizer's memcheck and racecheck.

    compute-sanitizer --tool memcheck python tests/sanitize_cuda_ops.py
    compute-sanitizer --tool racecheck --racecheck-report hazard python tests/sanitize_cuda_ops.py --attention
    compute-sanitizer --tool synccheck python tests/sanitize_cuda_ops.py --attention

--attention runs only the paged-attention cases (decode: no split, fused split merge, separate merge kernel;
prefill; every CUDA head size, block sizes 8 and 128, GQA 1/4/6, sliding window and soft-cap); racecheck is
slow, so those shapes stay small.
"""
import os
import sys

import torch

from infinilm_torch import ops


def _attention_cases(dev):
    for dt in (torch.float32, torch.float16, torch.bfloat16):
        for D, hk, g, bs in ((64, 2, 4, 16), (80, 1, 6, 8), (96, 2, 1, 128), (128, 1, 8, 32), (256, 1, 4, 16)):
            lens = [1, 0, 3 * bs + 1, 300]
            need = [max(1, -(-n // bs)) for n in lens]
            kc = torch.randn(sum(need) + 1, hk, bs, D, device=dev, dtype=dt)
            vc = torch.randn_like(kc)
            bt = torch.zeros(len(lens), max(need), dtype=torch.int32, device=dev)
            at = 0
            for r, k in enumerate(need):
                bt[r, :k] = torch.arange(at, at + k, device=dev)
                at += k
            sl = torch.tensor(lens, device=dev, dtype=torch.int32)
            q = torch.randn(len(lens), hk * g, D, device=dev, dtype=dt)
            for kw in (dict(), dict(window_left=20, softcap=10.0)):
                for splits in (None, "1", "4", "-4"):  # plan, no split, fused merge, merge kernel
                    if splits is None:
                        os.environ.pop("INFINILM_DECODE_SPLITS", None)
                    else:
                        os.environ["INFINILM_DECODE_SPLITS"] = splits
                    ops.paged_attention_decode(q, kc, vc, bt, sl, D**-0.5, **kw)
                os.environ.pop("INFINILM_DECODE_SPLITS", None)
                qsl = torch.tensor([0, 1, 1, 1 + 2 * bs, 2 + 2 * bs], device=dev, dtype=torch.int32)
                qp = torch.randn(int(qsl[-1]), hk * g, D, device=dev, dtype=dt)
                ops.paged_attention_prefill(qp, kc, vc, bt, qsl, sl, D**-0.5, **kw)


def main():
    dev = "cuda"
    if "--attention" in sys.argv:
        _attention_cases(dev)
        torch.cuda.synchronize()
        print("sanitize_cuda_ops: attention ran")
        return
    _attention_cases(dev)
    for dt in (torch.float32, torch.float16, torch.bfloat16):
        for T, H in ((1, 8), (7, 769), (5, 4096), (3, 8192 * 2 + 8)):
            x, r, w = torch.randn(T, H, device=dev, dtype=dt), torch.randn(T, H, device=dev, dtype=dt), \
                torch.randn(H, device=dev, dtype=dt)
            ops.rms_norm(x, w, 1e-6)
            ops.rms_norm(x[:, 1:], w[1:], 1e-6)  # misaligned rows: scalar path
            ops.fused_add_rms_norm(x, r, w, 1e-6)
            ops.silu_and_mul(torch.randn(T, 2 * H, device=dev, dtype=dt))
        for D, rot in ((128, 128), (64, 32), (80, 80)):
            table = ops.rope_cos_sin_cache(64, rot, 1e4).to(dev)
            q, k = torch.randn(9, 4, D, device=dev, dtype=dt), torch.randn(9, 2, D, device=dev, dtype=dt)
            pos = torch.tensor([0, 63, 64, -1, 5, 1 << 40, 7, 8, 9], device=dev)
            for neox in (True, False):
                ops.rotary_embedding(pos, q, k, table, neox)
                ops.rotary_embedding(pos.int(), q[:, :, :], k, table, neox)
            kc = torch.randn(4, 2, 16, D, device=dev, dtype=dt)
            vc = torch.randn_like(kc)
            slots = torch.tensor([0, 63, 64, -1, 5, 1 << 40, 7, 8, 9], device=dev)
            ops.reshape_and_cache(k, k, kc, vc, slots)
            ops.reshape_and_cache(k, k, kc, vc, slots.int())
        for B, V in ((1, 128256), (5, 1000), (3, 7), (4, 4100)):
            logits = torch.randn(B, V, device=dev).to(dt)
            for tk, tp, t in ((50, 0.95, 0.8), (0, 0.9, 1.0), (0, 1.0, 1.0), (1, 1.0, 1.0), (3000, 0.5, 1.0)):
                ops.sample(logits, torch.full((B,), t, device=dev), torch.full((B,), tk, device=dev),
                           torch.full((B,), tp, device=dev), torch.arange(B, device=dev))
    torch.cuda.synchronize()
    print("sanitize_cuda_ops: all ops ran")


if __name__ == "__main__":
    main()
