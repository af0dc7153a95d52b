"""Programmatic dependent launch (INFINILM_CUDA_PDL=1, read once per process): a decode chain of norms, skinny
products and fused silu products, eager and replayed from a CUDA graph, gives bitwise the results of the same
chain without it (the kernels' arithmetic is unchanged; only when their launches may overlap). Each setting runs
in its own process."""
import json
import os
import subprocess
import sys

import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")

CHAIN = r"""
import json, os, sys, torch
from infinilm_torch import ops
torch.manual_seed(int(sys.argv[1]))
dt, H, I, L = torch.bfloat16, 2048, 8192, 4
ws = [(torch.randn(3 * H, H, device="cuda", dtype=dt) / H ** 0.5, torch.randn(2 * I, H, device="cuda", dtype=dt) / H ** 0.5,
       torch.randn(H, I, device="cuda", dtype=dt) / I ** 0.5, torch.rand(H, device="cuda", dtype=dt) + 0.5) for _ in range(L)]
def step(x, res):
    for qkv, gu, down, g in ws:
        ops.fused_add_rms_norm(x, res, g)
        h = ops.linear(x, qkv)[:, :H].contiguous()     # a product right after a norm
        ops.fused_add_rms_norm(h, res, g)
        x = ops.silu_and_mul_linear(ops.linear(h, gu), down)  # product after product, fused silu
    return x
out = {}
for rows in (1, 3):
    for mode in ("gemv", "rows"):
        os.environ["INFINILM_CUDA_LINEAR"] = mode
        x0 = torch.randn(rows, H, device="cuda", dtype=dt)
        r0 = torch.randn(rows, H, device="cuda", dtype=dt)
        x, r = x0.clone(), r0.clone()
        eager = step(x, r)
        x, r = x0.clone(), r0.clone()
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            y = step(x, r)
        for _ in range(3):
            x.copy_(x0); r.copy_(r0); g.replay()
        torch.cuda.synchronize()
        out[f"{mode}-{rows}"] = [eager.float().sum().item(), eager.float().abs().sum().item(),
                                 (y.float() - eager.float()).abs().max().item()]
print(json.dumps(out))
"""


def run_chain(pdl, seed):
    env = dict(os.environ, INFINILM_CUDA_PDL="1" if pdl else "0")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    p = subprocess.run([sys.executable, "-c", CHAIN, str(seed)], env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    return json.loads(p.stdout.strip().splitlines()[-1])


def test_pdl_chain_matches():
    seed = int(torch.randint(0, 2**31 - 1, ()).item())
    off, on = run_chain(False, seed), run_chain(True, seed)
    assert off.keys() == on.keys()
    for k in off:
        assert on[k][2] == 0.0, f"{k}: graph replay differs from eager under PDL: {on[k]}"
        assert off[k][2] == 0.0, f"{k}: graph replay differs from eager: {off[k]}"
        assert on[k][:2] == off[k][:2], f"{k}: PDL changed the results: {on[k]} vs {off[k]} (seed {seed})"
        assert torch.isfinite(torch.tensor(on[k])).all() and on[k][1] > 0
