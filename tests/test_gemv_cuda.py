"""The linear op on CUDA: both skinny GEMM (decode) kernels (tensor cores <= 8 rows, CUDA cores <= 4 rows) vs an fp32
matmul, and their cuBLAS fallbacks."""
import pytest
import torch

from infinilm_torch import ops

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")

HALF = [torch.bfloat16, torch.float16]
# (N, K): odd N (partial 16-row tiles), K not a multiple of the 128-element span, and the Llama-3.2-1B shapes.
SHAPES = [(1, 8), (7, 136), (17, 2048), (1001, 264), (3072, 2048), (2048, 8192)]
ROWS = [1, 2, 3, 4, 5, 6, 7, 8]
EPS = {torch.bfloat16: 2 ** -8, torch.float16: 2 ** -11}


@pytest.fixture(autouse=True, params=["gemv", "rows"])
def kernel(request, monkeypatch):
    """Every product a kernel's contract admits runs on it (the default picks per shape by timing): "gemv" the
    tensor-core kernel, "rows" the CUDA-core one (rows > 4 fall to "gemv")."""
    monkeypatch.setenv("INFINILM_CUDA_LINEAR", request.param)
    return request.param


def ref_linear(x, w, b=None):
    y = x.float() @ w.float().T
    return y if b is None else y + b.float()


def assert_gemv_close(y, x, w, b=None):
    """The kernel's error vs fp32 is at most about twice cuBLAS's at the same precision, plus one output rounding
    (fp32 accumulation in a different order; the FlashAttention rule)."""
    ref = ref_linear(x, w, b)
    base = torch.nn.functional.linear(x, w, b).float()
    err, base_err = (y.float() - ref).abs().max().item(), (base - ref).abs().max().item()
    bound = 2 * base_err + 2 * EPS[x.dtype] * ref.abs().max().item() + 1e-6
    assert y.shape == ref.shape and y.dtype == x.dtype
    assert torch.isfinite(y).all()
    assert err <= bound, f"max error {err:.3g} > {bound:.3g} (cuBLAS: {base_err:.3g})"


@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("m", ROWS)
def test_gemv(dtype, shape, m, kernel):
    if kernel == "rows" and m > 4:
        pytest.skip("rows > 4 run the tensor-core kernel, tested under 'gemv'")
    n, k = shape
    x = torch.randn(m, k, device="cuda", dtype=dtype)
    w = torch.randn(n, k, device="cuda", dtype=dtype) / k ** 0.5
    assert_gemv_close(ops.linear(x, w), x, w)


@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize("m", [1, 3, 8])
def test_gemv_bias_and_strided_rows(dtype, m):
    n, k = 333, 1024
    buf = torch.randn(m, k + 64, device="cuda", dtype=dtype)
    x = buf[:, 32 : 32 + k]  # row stride k + 64, offset 64 bytes: still 16-byte aligned
    w = torch.randn(n, k, device="cuda", dtype=dtype) / k ** 0.5
    b = torch.randn(n, device="cuda", dtype=dtype)
    assert_gemv_close(ops.linear(x, w, b), x, w, b)


@pytest.mark.parametrize("m", [1, 8])
@pytest.mark.parametrize("shape", [(16384, 2048), (128256, 2048), (6144, 4096), (4096, 14336)])
def test_gemv_model_shapes(m, shape):
    """Llama-3.2-1B gate_up and lm_head, Llama-3-8B qkv and down."""
    n, k = shape
    x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
    w = torch.randn(n, k, device="cuda", dtype=torch.bfloat16) / k ** 0.5
    assert_gemv_close(ops.linear(x, w), x, w)


@pytest.mark.parametrize("case", ["m9", "fp32", "k_odd", "x_unaligned", "3d", "empty"])
def test_linear_other_paths(case):
    """Inputs outside the kernel's contract go to cuBLAS and are still right."""
    dt = torch.float32 if case == "fp32" else torch.bfloat16
    m, n, k = {"m9": (9, 100, 256), "k_odd": (2, 50, 130), "empty": (0, 64, 64)}.get(case, (4, 96, 512))
    w = torch.randn(n, k, device="cuda", dtype=dt) / k ** 0.5
    if case == "x_unaligned":
        x = torch.randn(m, k + 1, device="cuda", dtype=dt)[:, 1:]
    elif case == "3d":
        x = torch.randn(2, 3, k, device="cuda", dtype=dt)
    else:
        x = torch.randn(m, k, device="cuda", dtype=dt)
    y = ops.linear(x, w)
    assert y.shape == (*x.shape[:-1], n)
    if y.numel():
        ref, base = ref_linear(x, w), torch.nn.functional.linear(x, w).float()
        assert (y.float() - ref).abs().max() <= 2 * (base - ref).abs().max() + 2 * EPS[torch.bfloat16] * ref.abs().max()


def test_gemv_cuda_graph():
    """Captured once, replayed on new inputs written into the same buffer."""
    x = torch.randn(2, 2048, device="cuda", dtype=torch.bfloat16)
    w = torch.randn(3072, 2048, device="cuda", dtype=torch.bfloat16) / 2048 ** 0.5
    ops.linear(x, w)  # warm up outside the capture
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        y = ops.linear(x, w)
    x.copy_(torch.randn_like(x))
    g.replay()
    torch.cuda.synchronize()
    assert_gemv_close(y, x, w)


def test_linear_bad_args():
    x = torch.randn(2, 64, device="cuda", dtype=torch.bfloat16)
    with pytest.raises(ValueError, match="features"):
        ops.linear(x, torch.randn(8, 32, device="cuda", dtype=torch.bfloat16))
    with pytest.raises(TypeError, match="dtype"):
        ops.linear(x, torch.randn(8, 64, device="cuda", dtype=torch.float16))
    with pytest.raises(ValueError, match="bias"):
        ops.linear(x, torch.randn(8, 64, device="cuda", dtype=torch.bfloat16),
                   torch.randn(7, device="cuda", dtype=torch.bfloat16))
    with pytest.raises((ValueError, RuntimeError), match="is on|device"):
        ops.linear(x, torch.randn(8, 64, dtype=torch.bfloat16))


def test_linear_opcheck():
    x = torch.randn(3, 256, device="cuda", dtype=torch.bfloat16)
    w = torch.randn(40, 256, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(40, device="cuda", dtype=torch.bfloat16)
    torch.library.opcheck(torch.ops.infinilm.linear, (x, w, b))
    torch.library.opcheck(torch.ops.infinilm.linear, (x, w))


@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize("shape", [(2048, 8192), (4096, 14336), (77, 200)])
@pytest.mark.parametrize("m", [1, 2, 5, 8])
def test_gemv_silu_and_mul(dtype, shape, m):
    """The down projection with SiLU-and-mul in its input loads equals linear(silu_and_mul(x)) within the rule."""
    n, k = shape
    x = torch.randn(m, 2 * k, device="cuda", dtype=dtype) * 2
    w = torch.randn(n, k, device="cuda", dtype=dtype) / k ** 0.5
    act = ops.silu_and_mul(x)
    assert_gemv_close(ops.silu_and_mul_linear(x, w), act, w)


@pytest.mark.parametrize("silu", [False, True])
def test_linear_timed_choice(monkeypatch, silu):
    """The default mode times both candidates at first use (outside capture) and caches the winner: either way
    the result is right, the second call agrees with the first, and a graph captures whichever was chosen."""
    monkeypatch.delenv("INFINILM_CUDA_LINEAR")
    n, k = 2048, 2048
    x = torch.randn(1, 2 * k if silu else k, device="cuda", dtype=torch.bfloat16)
    w = torch.randn(n, k, device="cuda", dtype=torch.bfloat16) / k ** 0.5
    fn = (lambda: ops.silu_and_mul_linear(x, w)) if silu else (lambda: ops.linear(x, w))
    act = ops.silu_and_mul(x) if silu else x
    y1 = fn()
    assert_gemv_close(y1, act, w)
    torch.testing.assert_close(fn(), y1, atol=0, rtol=0)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        y = fn()
    g.replay()
    torch.cuda.synchronize()
    torch.testing.assert_close(y, y1, atol=0, rtol=0)
