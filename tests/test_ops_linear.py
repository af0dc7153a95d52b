"""The linear and silu_and_mul_linear ops on every device vs fp32 references, opcheck, and argument errors."""
import pytest
import torch
import torch.nn.functional as F

from infinilm_torch import ops
from conftest import DTYPES

# (rows, N, K): decode rows (CUDA: the skinny GEMM), a prefill-sized product (cuBLAS / MKL), odd sizes.
CASES = [(1, 7, 136), (3, 100, 64), (8, 33, 256), (19, 50, 128)]


def ref_silu_mul(x):
    g, u = x.float().chunk(2, dim=-1)
    return F.silu(g) * u


def bound(y, ref, base, dtype):
    """Error at most twice the same-precision torch product's, plus an output rounding (FlashAttention rule)."""
    eps = {torch.float32: 1e-6, torch.float16: 2 ** -11, torch.bfloat16: 2 ** -8}[dtype]
    err, base_err = (y.float() - ref).abs().max().item(), (base.float() - ref).abs().max().item()
    assert err <= 2 * base_err + 2 * eps * ref.abs().max().item() + 1e-6, (err, base_err)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("with_bias", [False, True])
def test_linear(device, dtype, case, with_bias):
    m, n, k = case
    x = torch.randn(m, k, device=device, dtype=dtype)
    w = torch.randn(n, k, device=device, dtype=dtype) / k ** 0.5
    b = torch.randn(n, device=device, dtype=dtype) if with_bias else None
    y = ops.linear(x, w, b)
    assert y.shape == (m, n) and y.dtype == dtype
    ref = x.float() @ w.float().T + (b.float() if with_bias else 0)
    bound(y, ref, F.linear(x, w, b), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("with_bias", [False, True])
def test_silu_and_mul_linear(device, dtype, case, with_bias):
    m, n, k = case
    x = torch.randn(m, 2 * k, device=device, dtype=dtype) * 2
    w = torch.randn(n, k, device=device, dtype=dtype) / k ** 0.5
    b = torch.randn(n, device=device, dtype=dtype) if with_bias else None
    y = ops.silu_and_mul_linear(x, w, b)
    assert y.shape == (m, n) and y.dtype == dtype
    act = ops.silu_and_mul(x)  # the activation rounded to the dtype, as the composed layers see it
    ref = act.float() @ w.float().T + (b.float() if with_bias else 0)
    bound(y, ref, F.linear(act, w, b), dtype)
    # and against the unrounded activation, with room for that rounding
    bound(y, ref_silu_mul(x) @ w.float().T + (b.float() if with_bias else 0), F.linear(act, w, b), dtype)


def test_linear_3d_input(device):
    x = torch.randn(2, 3, 64, device=device)
    w = torch.randn(24, 64, device=device)
    torch.testing.assert_close(ops.linear(x, w), F.linear(x, w), atol=1e-4, rtol=1e-4)
    xs = torch.randn(2, 3, 128, device=device)
    torch.testing.assert_close(ops.silu_and_mul_linear(xs, w), F.linear(ref_silu_mul(xs), w), atol=1e-4, rtol=1e-4)


def test_linear_opcheck(device):
    x = torch.randn(3, 64, device=device, dtype=torch.bfloat16)
    w = torch.randn(24, 64, device=device, dtype=torch.bfloat16)
    b = torch.randn(24, device=device, dtype=torch.bfloat16)
    torch.library.opcheck(torch.ops.infinilm.linear, (x, w, b))
    torch.library.opcheck(torch.ops.infinilm.silu_and_mul_linear, (torch.cat([x, x], -1), w, b))
    torch.library.opcheck(torch.ops.infinilm.silu_and_mul_linear, (torch.cat([x, x], -1), w))


def test_linear_bad_args(device):
    x = torch.randn(2, 64, device=device)
    with pytest.raises(ValueError, match="features"):
        ops.linear(x, torch.randn(8, 32, device=device))
    with pytest.raises(TypeError, match="dtype"):
        ops.linear(x, torch.randn(8, 64, device=device, dtype=torch.float16))
    with pytest.raises(ValueError, match="bias"):
        ops.linear(x, torch.randn(8, 64, device=device), torch.randn(7, device=device))
    with pytest.raises(ValueError, match="2K"):
        ops.silu_and_mul_linear(x, torch.randn(8, 64, device=device))
    with pytest.raises(ValueError, match="weight"):
        ops.linear(x, torch.randn(64, device=device))


def _fused_slice(x, w_qkv, w_down, gate_up, pos, table, kc, vc, slots, qw, kw, hq, hk, d):
    qkv = ops.linear(x, w_qkv)
    T = qkv.shape[0]
    q = qkv[:, : hq * d].view(T, hq, d)
    k = qkv[:, hq * d : (hq + hk) * d].view(T, hk, d)
    v = qkv[:, (hq + hk) * d :].view(T, hk, d)
    ops.rotary_embedding_and_cache(pos, q, k, v, kc, vc, slots, table, True, qw, kw, 1e-6)
    return q * 2, ops.silu_and_mul_linear(gate_up, w_down)


@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
def test_fused_ops_compile_fullgraph(device, backend):
    torch._dynamo.reset()
    T, H, hq, hk, d, bs, nb = 3, 64, 4, 2, 32, 16, 4
    table = ops.rope_cos_sin_cache(64, d, 10000.0).to(device)
    args = [torch.randn(T, H, device=device), torch.randn((hq + 2 * hk) * d, H, device=device),
            torch.randn(H, 48, device=device), torch.randn(T, 96, device=device),
            torch.randint(0, 64, (T,), device=device), table,
            torch.zeros(nb, hk, bs, d, device=device), torch.zeros(nb, hk, bs, d, device=device),
            torch.randperm(nb * bs, device=device)[:T], torch.randn(d, device=device), torch.randn(d, device=device)]
    eager_args = [a.clone() for a in args]
    out_c = torch.compile(_fused_slice, fullgraph=True, backend=backend)(*args, hq, hk, d)
    out_e = _fused_slice(*eager_args, hq, hk, d)
    for a, b in zip(out_c, out_e):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
    for a, b in zip(args, eager_args):  # the caches were written identically
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
