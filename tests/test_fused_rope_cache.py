"""rotary_embedding_and_cache (optional per-head q/k RMSNorm + RoPE + KV-cache write) vs fp32 references."""
import pytest
import torch

from infinilm_torch import ops
from conftest import DTYPES, TOL
from test_ops import ref_rms_norm, ref_rope, ref_rope_table

# (q_heads, kv_heads, head_dim, rot_dim): Llama-1B-like GQA, an odd head count, a wide head (no in-warp norm
# on CUDA), partial rotary (composed path on CUDA).
SHAPES = [(4, 2, 64, 64), (5, 1, 128, 128), (2, 2, 256, 256), (3, 1, 64, 32)]
TOKENS = [1, 19]


def make_case(device, dtype, tokens, hq, hk, d, rot, block_size=16, num_blocks=13, index=torch.int64):
    qkv = torch.randn(tokens, (hq + 2 * hk) * d, device=device, dtype=dtype) * 2
    q = qkv[:, : hq * d].view(tokens, hq, d)  # strided views of one fused buffer, as the engine has them
    k = qkv[:, hq * d : (hq + hk) * d].view(tokens, hk, d)
    v = qkv[:, (hq + hk) * d :].view(tokens, hk, d)
    kc = torch.randn(num_blocks, hk, block_size, d, device=device, dtype=dtype)
    vc = torch.randn_like(kc)
    slots = torch.randperm(num_blocks * block_size, device=device)[:tokens]
    if tokens > 1:
        slots[tokens // 2] = -1  # padding: rotated, not cached
    pos = torch.randint(0, 4096, (tokens,), device=device)
    table = ref_rope_table(4096, rot, 500000.0).to(device)
    return qkv, q, k, v, kc, vc, slots.to(index), pos.to(index), table


def reference(q, k, v, kc, vc, slots, pos, table, is_neox, qw=None, kw=None, eps=1e-6):
    """fp32 q, k after the norm (rounded to the dtype, as rms_norm returns it) and rope; caches as they must end."""
    dt = q.dtype
    qf, kf = q.float(), k.float()
    if qw is not None:
        qf, kf = ref_rms_norm(q, qw, eps).to(dt).float(), ref_rms_norm(k, kw, eps).to(dt).float()
    pos_l = pos.long().cpu()
    qr = ref_rope(qf.cpu(), pos_l, table.cpu(), is_neox)
    kr = ref_rope(kf.cpu(), pos_l, table.cpu(), is_neox)
    rk, rv = kc.float().cpu().clone(), vc.float().cpu().clone()
    bs = kc.shape[2]
    for t, s in enumerate(slots.tolist()):
        if s >= 0:
            rk[s // bs, :, s % bs] = kr[t]
            rv[s // bs, :, s % bs] = v[t].float().cpu()
    return qr, kr, rk, rv


def check(out, ref, dtype, scale=1.0):
    atol, rtol = TOL[dtype]
    torch.testing.assert_close(out.float().cpu(), ref, atol=atol * scale, rtol=rtol * scale)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("tokens", TOKENS)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("is_neox", [True, False])
@pytest.mark.parametrize("norm", [False, True])
def test_rotary_embedding_and_cache(device, dtype, tokens, shape, is_neox, norm):
    hq, hk, d, rot = shape
    qkv, q, k, v, kc, vc, slots, pos, table = make_case(device, dtype, tokens, hq, hk, d, rot)
    qw = torch.randn(d, device=device, dtype=dtype) if norm else None
    kw = torch.randn(d, device=device, dtype=dtype) if norm else None
    qr, kr, rk, rv = reference(q, k, v, kc, vc, slots, pos, table, is_neox, qw, kw, 1e-6)
    v_before = v.clone()
    ops.rotary_embedding_and_cache(pos, q, k, v, kc, vc, slots, table, is_neox, qw, kw, 1e-6)
    # The norm's output is rounded before the rotation on both sides, but a 1-ulp difference in that rounding
    # moves the rotated value by up to 1 ulp of the larger input: twice the elementwise tolerance.
    scale = 2.0 if norm else 1.0
    check(q, qr, dtype, scale)
    check(k, kr, dtype, scale)
    check(kc, rk, dtype, scale)
    torch.testing.assert_close(vc.float().cpu(), rv, atol=0, rtol=0)  # values are copied bit for bit
    torch.testing.assert_close(v, v_before, atol=0, rtol=0)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_rotary_embedding_and_cache_matches_composed_ops(device, dtype):
    """The fused op equals rotary_embedding + reshape_and_cache on the same inputs (int32 indices, static-cache
    style slots: row b's tokens in its own consecutive blocks)."""
    hq, hk, d, T, bs = 4, 2, 64, 9, 16
    qkv, q, k, v, kc, vc, _, _, table = make_case(device, dtype, T, hq, hk, d, d, block_size=bs, num_blocks=8)
    rows, per_row = 3, 2  # blocks per row
    lengths = [5, 0, 11]  # tokens already cached per row; the 3 new tokens of each row follow
    slots = torch.tensor([b * per_row * bs + lengths[b] + j for b in range(rows) for j in range(3)], device=device)
    pos = torch.tensor([lengths[b] + j for b in range(rows) for j in range(3)], device=device)
    slots, pos = slots.to(torch.int32), pos.to(torch.int32)
    qkv2, kc2, vc2 = qkv.clone(), kc.clone(), vc.clone()
    q2 = qkv2[:, : hq * d].view(T, hq, d)
    k2 = qkv2[:, hq * d : (hq + hk) * d].view(T, hk, d)
    v2 = qkv2[:, (hq + hk) * d :].view(T, hk, d)
    ops.rotary_embedding(pos, q2, k2, table, True)
    ops.reshape_and_cache(k2, v2, kc2, vc2, slots)
    ops.rotary_embedding_and_cache(pos, q, k, v, kc, vc, slots, table, True)
    torch.testing.assert_close(qkv, qkv2, atol=0, rtol=0)
    torch.testing.assert_close(kc, kc2, atol=0, rtol=0)
    torch.testing.assert_close(vc, vc2, atol=0, rtol=0)


def test_rotary_embedding_and_cache_opcheck(device):
    qkv, q, k, v, kc, vc, slots, pos, table = make_case(device, torch.bfloat16, 5, 4, 2, 64, 64)
    qw, kw = torch.randn(64, device=device, dtype=torch.bfloat16), torch.randn(64, device=device, dtype=torch.bfloat16)
    q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
    torch.library.opcheck(torch.ops.infinilm.rotary_embedding_and_cache,
                          (pos, q, k, v, kc, vc, slots, table, True, qw, kw, 1e-6))
    torch.library.opcheck(torch.ops.infinilm.rotary_embedding_and_cache, (pos, q, k, v, kc, vc, slots, table, False))


def _bad_calls(device):
    qkv, q, k, v, kc, vc, slots, pos, table = make_case(device, torch.float32, 4, 4, 2, 64, 64)
    w = torch.randn(64, device=device)
    base = dict(positions=pos, query=q, key=k, value=v, key_cache=kc, value_cache=vc, slot_mapping=slots,
                cos_sin_cache=table, is_neox=True)
    yield "q_norm_weight", dict(base, q_norm_weight=w), ValueError
    yield "q_norm_weight", dict(base, q_norm_weight=torch.randn(32, device=device),
                                k_norm_weight=torch.randn(32, device=device)), ValueError
    yield "norm_eps", dict(base, q_norm_weight=w, k_norm_weight=w, norm_eps=-1.0), ValueError
    yield "slot_mapping", dict(base, slot_mapping=slots[:3]), ValueError
    yield "value", dict(base, value=v[:, :1]), ValueError
    yield "key_cache", dict(base, key_cache=kc.to(torch.float16)), TypeError
    yield "positions", dict(base, positions=pos.float()), TypeError
    if device == "cpu":  # host index values are range-checked
        yield "slot_mapping", dict(base, slot_mapping=torch.full_like(slots, 10**6)), IndexError
        yield "positions", dict(base, positions=torch.full_like(pos, 10**6)), IndexError


@pytest.mark.parametrize("case", range(9))
def test_rotary_embedding_and_cache_bad_args(device, case):
    calls = list(_bad_calls(device))
    if case >= len(calls):
        pytest.skip("host-only value check")
    name, kwargs, exc = calls[case]
    q, kc, vc = kwargs["query"], kwargs["key_cache"], kwargs["value_cache"]
    before = [t.clone() for t in (q, kwargs["key"], kc, vc)]
    with pytest.raises(exc, match=name):
        ops.rotary_embedding_and_cache(**kwargs)
    for t, b in zip((q, kwargs["key"], kc, vc), before):  # rejected before any write
        torch.testing.assert_close(t, b, atol=0, rtol=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_rotary_embedding_and_cache_unaligned_cuda(dtype):
    """Head strides that are not a multiple of 16 bytes take the scalar path (and, with norms at head_dim 128,
    the unfused norm fallback): same results as the reference."""
    T, hq, hk, d = 6, 3, 1, 128
    buf = torch.randn(T, (hq + 2 * hk) * d + 1, device="cuda", dtype=dtype)
    qkv = buf[:, 1:]  # shifted by one element: every head starts 2 bytes past a 16-byte boundary
    q = qkv[:, : hq * d].view(T, hq, d)
    k = qkv[:, hq * d : (hq + hk) * d].view(T, hk, d)
    v = qkv[:, (hq + hk) * d :].view(T, hk, d)
    kc = torch.randn(4, hk, 16, d, device="cuda", dtype=dtype)
    vc = torch.randn_like(kc)
    slots = torch.randperm(64, device="cuda")[:T]
    pos = torch.randint(0, 512, (T,), device="cuda")
    table = ref_rope_table(512, d, 10000.0).cuda()
    qw, kw = torch.randn(d, device="cuda", dtype=dtype), torch.randn(d, device="cuda", dtype=dtype)
    qr, kr, rk, rv = reference(q, k, v, kc, vc, slots, pos, table, True, qw, kw)
    ops.rotary_embedding_and_cache(pos, q, k, v, kc, vc, slots, table, True, qw, kw)
    check(q, qr, dtype, 2.0)
    check(kc, rk, dtype, 2.0)
    torch.testing.assert_close(vc.float().cpu(), rv, atol=0, rtol=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_rotary_embedding_and_cache_cuda_graph():
    """Captured once, replayed with new positions and slots written into the same buffers."""
    T, hq, hk, d = 3, 4, 2, 64
    qkv, q, k, v, kc, vc, slots, pos, table = make_case("cuda", torch.bfloat16, T, hq, hk, d, d)
    src = qkv.clone()
    g = torch.cuda.CUDAGraph()
    torch.cuda.synchronize()
    with torch.cuda.graph(g):
        ops.rotary_embedding_and_cache(pos, q, k, v, kc, vc, slots, table, True)
    qkv.copy_(src)
    pos.copy_(torch.randint(0, 4096, (T,), device="cuda"))
    slots.copy_(torch.randperm(kc.shape[0] * kc.shape[2], device="cuda")[:T])
    kc0, vc0 = kc.clone(), vc.clone()
    qr, kr, rk, rv = reference(q, k, v, kc0, vc0, slots, pos, table, True)
    g.replay()
    torch.cuda.synchronize()
    check(q, qr, torch.bfloat16)
    check(kc, rk, torch.bfloat16)
    torch.testing.assert_close(vc.float().cpu(), rv, atol=0, rtol=0)
