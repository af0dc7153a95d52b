"""Elementwise ops (rms_norm, fused_add_rms_norm, rotary_embedding, silu_and_mul, reshape_and_cache) vs fp32 references."""
import math

import pytest
import torch

from infinilm_torch import ops
from conftest import DTYPES, assert_close

TOKENS = [1, 7, 83]
HIDDEN = [8, 769, 4096]


# ---- references (plain PyTorch, fp32) ---------------------------------------------------------------------
def ref_rms_norm(x, w, eps):
    x = x.float()
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w.float()


def ref_rope_table(max_pos, rot, base, rope_type="default", factor=1.0, low=1.0, high=4.0, orig=8192):
    inv = 1.0 / (base ** (torch.arange(0, rot, 2, dtype=torch.int64).float() / rot))
    if rope_type == "linear":
        inv = inv / factor
    elif rope_type == "llama3":
        wav = 2 * math.pi / inv
        low_wav, high_wav = orig / low, orig / high
        scaled = torch.where(wav > low_wav, inv / factor, inv)
        smooth = (orig / wav - low) / (high - low)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        medium = ~(wav < high_wav) & ~(wav > low_wav)
        inv = torch.where(medium, smoothed, scaled)
    ang = torch.arange(max_pos).float()[:, None] * inv[None, :]
    return torch.cat([ang.cos(), ang.sin()], dim=-1)


def ref_rope(x, pos, table, is_neox):
    x = x.float().clone()
    rot = table.shape[1]
    cos, sin = table[pos, : rot // 2][:, None, :], table[pos, rot // 2 :][:, None, :]
    if is_neox:
        a, b = x[..., : rot // 2].clone(), x[..., rot // 2 : rot].clone()
        x[..., : rot // 2], x[..., rot // 2 : rot] = a * cos - b * sin, b * cos + a * sin
    else:
        a, b = x[..., 0:rot:2].clone(), x[..., 1:rot:2].clone()
        x[..., 0:rot:2], x[..., 1:rot:2] = a * cos - b * sin, b * cos + a * sin
    return x


# ---- rms_norm ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("tokens", TOKENS)
@pytest.mark.parametrize("hidden", HIDDEN)
def test_rms_norm(device, dtype, tokens, hidden):
    x = torch.randn(tokens, hidden, device=device, dtype=dtype) * 3
    w = torch.randn(hidden, device=device, dtype=dtype)
    out = ops.rms_norm(x, w, 1e-5)
    assert out.shape == x.shape and out.dtype == dtype
    assert_close(out, ref_rms_norm(x, w, 1e-5), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_rms_norm_strided_and_3d(device, dtype):
    base = torch.randn(5, 3, 2 * 769, device=device, dtype=dtype)
    x = base[..., :769]  # row stride 1538: read in place
    w = torch.randn(769, device=device, dtype=dtype)
    assert_close(ops.rms_norm(x, w, 1e-6), ref_rms_norm(x, w, 1e-6), dtype)
    xt = torch.randn(64, 6, device=device, dtype=dtype).t()  # last dim not dense: copied first
    wt = torch.randn(64, device=device, dtype=dtype)
    assert_close(ops.rms_norm(xt, wt, 1e-6), ref_rms_norm(xt, wt, 1e-6), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("tokens", TOKENS)
@pytest.mark.parametrize("hidden", HIDDEN)
def test_fused_add_rms_norm(device, dtype, tokens, hidden):
    x = torch.randn(tokens, hidden, device=device, dtype=dtype)
    r = torch.randn(tokens, hidden, device=device, dtype=dtype)
    w = torch.randn(hidden, device=device, dtype=dtype)
    ref_res = (r.float() + x.float()).to(dtype)  # the sum is stored in the input dtype, then normalised
    ref_out = ref_rms_norm(ref_res, w, 1e-6)
    ops.fused_add_rms_norm(x, r, w, 1e-6)
    assert_close(r, ref_res, dtype)
    assert_close(x, ref_out, dtype)


@pytest.mark.parametrize("isa", ["avx2", "generic"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fused_add_rms_norm_cpu_isas(isa, dtype, monkeypatch):
    """Both CPU builds; hidden sizes around the 256-element scratch blocks (255, 256, 257, 1000)."""
    if isa == "generic":
        monkeypatch.setenv("INFINILM_CPU_GENERIC", "1")
    for hidden in (255, 256, 257, 1000):
        x, r, w = torch.randn(5, hidden, dtype=dtype), torch.randn(5, hidden, dtype=dtype), torch.randn(hidden, dtype=dtype)
        ref_res = (r.float() + x.float()).to(dtype)
        ref_out = ref_rms_norm(ref_res, w, 1e-6)
        ops.fused_add_rms_norm(x, r, w, 1e-6)
        assert torch.equal(r, ref_res)  # one rounding of an exact float sum: bit-exact
        assert_close(x, ref_out, dtype)


# Inputs whose mean square is comparable to eps (or far below it): eps must sit inside the square root.
EPS_CASES = [(1e-2, 0.05), (1e-2, 0.3), (1e-5, 2e-3), (1e-6, 1.0)]  # (eps, input scale)


@pytest.mark.parametrize("generic", [False, True], ids=["native", "generic"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("eps,scale", EPS_CASES)
def test_rms_norm_eps(device, dtype, eps, scale, generic, monkeypatch):
    if generic:
        if device != "cpu":
            pytest.skip("the generic build is a CPU one")
        monkeypatch.setenv("INFINILM_CPU_GENERIC", "1")
    x = (torch.randn(7, 769, device=device) * scale).to(dtype)
    w = torch.randn(769, device=device, dtype=dtype)
    assert_close(ops.rms_norm(x, w, eps), ref_rms_norm(x, w, eps), dtype)


@pytest.mark.parametrize("generic", [False, True], ids=["native", "generic"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("eps,scale", EPS_CASES)
def test_fused_add_rms_norm_eps(device, dtype, eps, scale, generic, monkeypatch):
    if generic:
        if device != "cpu":
            pytest.skip("the generic build is a CPU one")
        monkeypatch.setenv("INFINILM_CPU_GENERIC", "1")
    x = (torch.randn(7, 1000, device=device) * scale).to(dtype)
    r = (torch.randn(7, 1000, device=device) * scale).to(dtype)
    w = torch.randn(1000, device=device, dtype=dtype)
    ref_res = (r.float() + x.float()).to(dtype)
    ref_out = ref_rms_norm(ref_res, w, eps)
    ops.fused_add_rms_norm(x, r, w, eps)
    assert_close(r, ref_res, dtype, scale=max(scale, 1e-2))
    assert_close(x, ref_out, dtype)


def test_fused_add_rms_norm_strided_rows(device):
    xb = torch.randn(9, 300, device=device)
    rb = torch.randn(9, 200, device=device)
    x, r = xb[:, :128], rb[:, 50:178]
    w = torch.randn(128, device=device)
    xs, rs = xb.clone(), rb.clone()
    ops.fused_add_rms_norm(x, r, w, 1e-6)
    ref_res = xs[:, :128] + rs[:, 50:178]
    torch.testing.assert_close(r, ref_res)
    torch.testing.assert_close(x, ref_rms_norm(ref_res, w, 1e-6), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(xb[:, 128:], xs[:, 128:])  # untouched outside the view
    torch.testing.assert_close(rb[:, :50], rs[:, :50])


# ---- rotary -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("rope_type,factor", [("default", 1.0), ("linear", 4.0), ("llama3", 8.0)])
@pytest.mark.parametrize("rot", [64, 128])
def test_rope_cos_sin_cache(rope_type, factor, rot):
    base = 500000.0 if rope_type == "llama3" else 10000.0
    kw = dict(factor=factor, low=1.0, high=4.0, orig=8192)
    out = ops.rope_cos_sin_cache(1000, rot, base, rope_type, factor, 1.0, 4.0, 8192)
    ref = ref_rope_table(1000, rot, base, rope_type, **kw)
    torch.testing.assert_close(out, ref, atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("tokens", TOKENS)
@pytest.mark.parametrize("head_dim,rot", [(64, 64), (128, 128), (128, 64)])
@pytest.mark.parametrize("is_neox", [True, False])
@pytest.mark.parametrize("gqa", [1, 4])
def test_rotary_embedding(device, dtype, tokens, head_dim, rot, is_neox, gqa):
    hk = 2
    table = ops.rope_cos_sin_cache(4096, rot, 10000.0).to(device)
    pos = torch.randint(0, 4096, (tokens,), device=device)
    q = torch.randn(tokens, hk * gqa, head_dim, device=device, dtype=dtype)
    k = torch.randn(tokens, hk, head_dim, device=device, dtype=dtype)
    rq, rk = ref_rope(q, pos, table, is_neox), ref_rope(k, pos, table, is_neox)
    ops.rotary_embedding(pos, q, k, table, is_neox)
    assert_close(q, rq, dtype)
    assert_close(k, rk, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_rotary_embedding_fused_qkv_views(device, dtype):
    """q and k as strided views into one fused QKV projection output, positions int32."""
    T, hq, hk, d = 83, 8, 2, 64
    qkv = torch.randn(T, (hq + 2 * hk) * d, device=device, dtype=dtype)
    before = qkv.clone()
    q = qkv[:, : hq * d].view(T, hq, d)
    k = qkv[:, hq * d : (hq + hk) * d].view(T, hk, d)
    pos = torch.randint(0, 512, (T,), device=device, dtype=torch.int32)
    table = ops.rope_cos_sin_cache(512, d, 10000.0).to(device)
    rq, rk = ref_rope(q, pos.long(), table, True), ref_rope(k, pos.long(), table, True)
    ops.rotary_embedding(pos, q, k, table, True)
    assert_close(q, rq, dtype)
    assert_close(k, rk, dtype)
    torch.testing.assert_close(qkv[:, (hq + hk) * d :], before[:, (hq + hk) * d :])  # v untouched


# ---- silu_and_mul -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("tokens", TOKENS)
@pytest.mark.parametrize("d", [8, 769, 4096])
def test_silu_and_mul(device, dtype, tokens, d):
    x = torch.randn(tokens, 2 * d, device=device, dtype=dtype) * 4
    ref = torch.nn.functional.silu(x[:, :d].float()) * x[:, d:].float()
    out = ops.silu_and_mul(x)
    assert out.shape == (tokens, d)
    assert_close(out, ref, dtype)


@pytest.mark.parametrize("isa", ["avx2", "generic"])
@pytest.mark.parametrize("tokens,d", [(1, 8192), (1, 8203), (3, 2050), (5, 7), (40, 264)])
def test_silu_and_mul_cpu_isas(isa, tokens, d, monkeypatch):
    """Both CPU builds (AVX2 with the reciprocal-estimate division, and the baseline), row chunking for few
    rows, block and vector tails, against fp32 PyTorch over a wide input range (exp under- and overflow)."""
    if isa == "generic":
        monkeypatch.setenv("INFINILM_CPU_GENERIC", "1")
    x = torch.randn(tokens, 2 * d) * 30
    ref = torch.nn.functional.silu(x[:, :d]) * x[:, d:]
    torch.testing.assert_close(ops.silu_and_mul(x), ref, atol=1e-5, rtol=1e-5)


def test_silu_and_mul_3d_and_strided(device):
    x = torch.randn(3, 5, 2 * 100, device=device)
    ref = torch.nn.functional.silu(x[..., :100]) * x[..., 100:]
    torch.testing.assert_close(ops.silu_and_mul(x), ref, atol=1e-5, rtol=1e-5)
    xs = torch.randn(7, 300, device=device)[:, :200]
    ref = torch.nn.functional.silu(xs[:, :100]) * xs[:, 100:]
    torch.testing.assert_close(ops.silu_and_mul(xs), ref, atol=1e-5, rtol=1e-5)


# ---- reshape_and_cache ------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("block_size", [16, 32])
@pytest.mark.parametrize("head_dim", [64, 128])
@pytest.mark.parametrize("tokens", TOKENS)
def test_reshape_and_cache(device, dtype, block_size, head_dim, tokens):
    nb, hk = 11, 4
    kc = torch.randn(nb, hk, block_size, head_dim, device=device, dtype=dtype)
    vc = torch.randn_like(kc)
    slots = torch.randperm(nb * block_size, device=device)[:tokens]
    slots[0] = -1  # skipped
    kv = torch.randn(tokens, 2, hk, head_dim, device=device, dtype=dtype)
    k, v = kv[:, 0], kv[:, 1]  # strided views
    ref_k, ref_v = kc.clone(), vc.clone()
    for t, s in enumerate(slots.tolist()):
        if s >= 0:
            ref_k[s // block_size, :, s % block_size] = k[t]
            ref_v[s // block_size, :, s % block_size] = v[t]
    ops.reshape_and_cache(k, v, kc, vc, slots.to(torch.int32))
    torch.testing.assert_close(kc, ref_k, atol=0, rtol=0)
    torch.testing.assert_close(vc, ref_v, atol=0, rtol=0)
