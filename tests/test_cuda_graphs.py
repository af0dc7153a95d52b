"""CUDA only: each op captured in a CUDA graph replays correctly with new inputs; CUDA agrees with the CPU
kernels; out-of-range positions and slots on the device never write."""
import pytest
import torch

from infinilm_torch import ops
from conftest import DTYPES, assert_close
from test_sampling import params, ref_draw, ref_filter, P_SLACK

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
DEV = "cuda"


def capture(fn):
    """Warm up on a side stream, then capture fn() into a graph; returns (graph, static outputs)."""
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        fn()
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        out = fn()
    return g, out


def refill(*tensors):
    for t in tensors:
        t.copy_(torch.randn_like(t.float()).to(t.dtype) if t.is_floating_point() else t)


@pytest.mark.parametrize("dtype", DTYPES)
def test_graph_rms_norm_and_fused_add(dtype):
    T, H = 19, 4096
    xs, rs = torch.randn(T, H, device=DEV, dtype=dtype), torch.randn(T, H, device=DEV, dtype=dtype)
    w = torch.randn(H, device=DEV, dtype=dtype)
    g1, y = capture(lambda: ops.rms_norm(xs, w, 1e-5))
    g2, _ = capture(lambda: ops.fused_add_rms_norm(xs, rs, w, 1e-5))
    for _ in range(3):
        refill(xs, rs)
        x0, r0 = xs.clone(), rs.clone()
        g1.replay()
        torch.cuda.synchronize()
        assert_close(y, ops.rms_norm(x0, w, 1e-5), dtype)
        g2.replay()
        xe, re = x0.clone(), r0.clone()
        ops.fused_add_rms_norm(xe, re, w, 1e-5)
        assert_close(rs, re, dtype)
        assert_close(xs, xe, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_graph_rotary_silu_cache(dtype):
    T, hq, hk, D, bs, nb = 13, 8, 2, 128, 16, 8
    table = ops.rope_cos_sin_cache(4096, D, 500000.0).to(DEV)
    pos = torch.randint(0, 4096, (T,), device=DEV)
    q, k = torch.randn(T, hq, D, device=DEV, dtype=dtype), torch.randn(T, hk, D, device=DEV, dtype=dtype)
    gate = torch.randn(T, 2 * 1000, device=DEV, dtype=dtype)
    kk, vv = torch.randn(T, hk, D, device=DEV, dtype=dtype), torch.randn(T, hk, D, device=DEV, dtype=dtype)
    kc, vc = torch.zeros(nb, hk, bs, D, device=DEV, dtype=dtype), torch.zeros(nb, hk, bs, D, device=DEV, dtype=dtype)
    slots = torch.randperm(nb * bs, device=DEV)[:T]
    g_rope, _ = capture(lambda: ops.rotary_embedding(pos, q, k, table, True))
    g_silu, y = capture(lambda: ops.silu_and_mul(gate))
    g_cache, _ = capture(lambda: ops.reshape_and_cache(kk, vv, kc, vc, slots))
    for _ in range(3):
        refill(q, k, gate, kk, vv)
        pos.copy_(torch.randint(0, 4096, (T,), device=DEV))
        slots.copy_(torch.randperm(nb * bs, device=DEV)[:T])
        q0, k0 = q.clone(), k.clone()
        g_rope.replay()
        ops.rotary_embedding(pos, q0, k0, table, True)
        torch.testing.assert_close(q, q0, atol=0, rtol=0)
        torch.testing.assert_close(k, k0, atol=0, rtol=0)
        g_silu.replay()
        torch.testing.assert_close(y, ops.silu_and_mul(gate), atol=0, rtol=0)
        g_cache.replay()
        blk, off = slots // bs, slots % bs
        torch.testing.assert_close(kc[blk, :, off], kk, atol=0, rtol=0)
        torch.testing.assert_close(vc[blk, :, off], vv, atol=0, rtol=0)


def test_graph_sample():
    B, V = 32, 128256
    logits = torch.randn(B, V, device=DEV) * 3
    T, K, P, S = params(B, V, DEV)
    g, out = capture(lambda: ops.sample(logits, T, K, P, S))
    for _ in range(3):
        logits.copy_(torch.randn(B, V, device=DEV) * 3)
        T2, K2, P2, S2 = params(B, V, DEV)
        for dst, src in ((T, T2), (K, K2), (P, P2), (S, S2)):
            dst.copy_(src)
        g.replay()
        torch.testing.assert_close(out, ops.sample(logits, T, K, P, S))


# ---- CUDA vs CPU ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
def test_cuda_matches_cpu_elementwise(dtype):
    T, H = 37, 8192 + 8  # odd tail for the vector path
    x, r, w = torch.randn(T, H, dtype=dtype), torch.randn(T, H, dtype=dtype), torch.randn(H, dtype=dtype)
    assert_close(ops.rms_norm(x.to(DEV), w.to(DEV), 1e-6).cpu(), ops.rms_norm(x, w, 1e-6), dtype)
    xc, rc, xd, rd = x.clone(), r.clone(), x.to(DEV), r.to(DEV)
    ops.fused_add_rms_norm(xc, rc, w, 1e-6)
    ops.fused_add_rms_norm(xd, rd, w.to(DEV), 1e-6)
    assert_close(rd.cpu(), rc, dtype)
    assert_close(xd.cpu(), xc, dtype)
    g = torch.randn(T, 2 * 3000, dtype=dtype)
    assert_close(ops.silu_and_mul(g.to(DEV)).cpu(), ops.silu_and_mul(g), dtype)
    for is_neox in (True, False):
        for rot in (128, 64):
            table = ops.rope_cos_sin_cache(512, rot, 10000.0)
            pos = torch.randint(0, 512, (T,))
            q, k = torch.randn(T, 8, 128, dtype=dtype), torch.randn(T, 2, 128, dtype=dtype)
            qd, kd = q.to(DEV), k.to(DEV)
            ops.rotary_embedding(pos, q, k, table, is_neox)
            ops.rotary_embedding(pos.to(DEV).int(), qd, kd, table.to(DEV), is_neox)
            assert_close(qd.cpu(), q, dtype)
            assert_close(kd.cpu(), k, dtype)


def test_cuda_matches_cpu_sampling():
    """Same seeds, same tokens, except where u * W lies within rounding of a CDF step."""
    B, V = 48, 128256
    for dtype in (torch.float32, torch.bfloat16):
        logits = (torch.randn(B, V) * 4).to(dtype)
        logits[5, 1000:] = float("-inf")
        T, K, P, S = params(B, V, "cpu")
        cpu = ops.sample(logits, T, K, P, S)
        gpu = ops.sample(logits.to(DEV), T.to(DEV), K.to(DEV), P.to(DEV), S.to(DEV)).cpu()
        for b in range(B):
            args = (logits[b], float(T[b]), int(K[b]), float(P[b]))
            assert ref_filter(*args, p_slack=P_SLACK)[0][gpu[b]], f"row {b} {args[1:]}: {int(gpu[b])} not allowed"
            if int(cpu[b]) != int(gpu[b]):
                _, margin = ref_draw(*args, int(S[b]))
                assert margin < 1e-5, f"row {b} {args[1:]}: cuda {int(gpu[b])} vs cpu {int(cpu[b])}"


def test_cuda_sampling_invalid_values_stay_in_range():
    """Values the CUDA path cannot check without a sync still give a token id in [0, V)."""
    B, V = 6, 1000
    logits = torch.randn(B, V, device=DEV)
    logits[0, 7] = float("nan")
    logits[1] = float("-inf")
    T = torch.tensor([1.0, 1.0, -1.0, float("nan"), 1.0, 1.0], device=DEV)
    K = torch.tensor([0, 0, 0, 5, -3, 2 * V], device=DEV)
    P = torch.tensor([0.9, 1.0, 1.0, 0.5, 0.0, 1.5], device=DEV)
    out = ops.sample(logits, T, K, P, torch.arange(B, device=DEV))
    assert ((out >= 0) & (out < V)).all(), out
    assert int(out[2]) == int(logits[2].argmax()) and int(out[3]) == int(logits[3].argmax())  # greedy
    assert int(out[4]) == int(logits[4].argmax())  # top_p <= 0 keeps only the most likely token


def test_out_of_range_positions_and_slots_never_write():
    T, hk, D, bs, nb = 6, 2, 64, 16, 4
    table = ops.rope_cos_sin_cache(32, D, 10000.0).to(DEV)
    q, k = torch.randn(T, 4, D, device=DEV), torch.randn(T, hk, D, device=DEV)
    q0, k0 = q.clone(), k.clone()
    pos = torch.tensor([0, 31, 32, -1, 1 << 40, 5], device=DEV)
    ops.rotary_embedding(pos, q, k, table, True)
    bad = torch.tensor([2, 3, 4])
    torch.testing.assert_close(q[bad], q0[bad], atol=0, rtol=0)
    torch.testing.assert_close(k[bad], k0[bad], atol=0, rtol=0)
    assert not torch.equal(q[1], q0[1])
    kc, vc = torch.zeros(nb, hk, bs, D, device=DEV), torch.zeros(nb, hk, bs, D, device=DEV)
    kk, vv = torch.randn(T, hk, D, device=DEV), torch.randn(T, hk, D, device=DEV)
    ops.reshape_and_cache(kk, vv, kc, vc, torch.tensor([0, nb * bs, -1, -5, 1 << 40, nb * bs - 1], device=DEV))
    torch.cuda.synchronize()
    assert int((kc != 0).any(-1).sum()) == 2 * hk and int((vc != 0).any(-1).sum()) == 2 * hk
    torch.testing.assert_close(kc[0, :, 0], kk[0], atol=0, rtol=0)
    torch.testing.assert_close(vc[nb - 1, :, bs - 1], vv[5], atol=0, rtol=0)
