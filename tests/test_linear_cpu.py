"""The engine's CPU dense layer (`_infinilm._linear`): the skinny kernel for decode-sized products (<= 16 rows)
and the at::linear fallback, against a float64 reference, on every CPU instruction-set build this CPU runs."""
import math
import os

import pytest
import torch

from infinilm_torch.lib import _infinilm


def reference(x, w, b):
    y = x.double() @ w.double().T
    return y if b is None else y + b.double()


def check(x, w, b=None):
    got = _infinilm._linear(x, w, b)
    assert got.shape == (x.shape[0], w.shape[0]) and got.dtype == x.dtype
    k = x.shape[1]
    if x.dtype == torch.float32:
        tol = dict(atol=2e-6 * math.sqrt(k), rtol=1e-5)
    else:  # fp32 accumulation, one rounding of the output to bf16
        tol = dict(atol=1e-3 * math.sqrt(k), rtol=8e-3)
    torch.testing.assert_close(got.double(), reference(x, w, b), **tol)


def _cpu_flags():
    try:
        with open("/proc/cpuinfo") as f:
            return set(next(l for l in f if l.startswith("flags")).split(":")[1].split())
    except (OSError, StopIteration):
        return set()


HAVE_AVX512 = {"avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512_bf16"} <= _cpu_flags()


def use_isa(isa, monkeypatch):
    if isa == "avx512" and not HAVE_AVX512:
        pytest.skip("this CPU has no AVX-512 with AVX512-BF16")
    if isa == "generic":
        monkeypatch.setenv("INFINILM_CPU_GENERIC", "1")
    if isa == "avx2":
        monkeypatch.setenv("INFINILM_CPU_ISA", "avx2")


@pytest.mark.parametrize("isa", ["avx512", "avx2", "generic"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("m", [1, 2, 3, 4, 5, 7, 8, 13, 16, 17, 40])
def test_linear_rows(m, dtype, isa, monkeypatch):
    use_isa(isa, monkeypatch)
    monkeypatch.setenv("INFINILM_CPU_LINEAR", "skinny")  # the kernel itself, whatever the timing would pick
    for n, k in ((1, 1), (63, 7), (64, 100), (130, 768), (257, 33)):
        x, w = torch.randn(m, k, dtype=dtype), torch.randn(n, k, dtype=dtype)
        check(x, w)
        check(x, w, torch.randn(n, dtype=dtype))


def test_linear_strided_rows_and_layouts():
    wide = torch.randn(4, 300)
    x = wide[:, 10:138]  # rows with stride 300
    w = torch.randn(96, 128)
    check(x, w, torch.randn(96))
    check(x, w.T.contiguous().T)  # a transposed weight goes to at::linear
    y = _infinilm._linear(torch.randn(2, 5, 128), w)  # other ranks follow at::linear
    assert y.shape == (2, 5, 96)


def test_linear_engine_layer_sizes_match_at_linear():
    """Decode shapes of a 1B Llama (qkv, o, gate_up, down, lm_head slice), fp32: agrees with at::linear."""
    for n, k in ((3072, 2048), (2048, 2048), (16384, 2048), (2048, 8192), (8000, 2048)):
        x, w = torch.randn(1, k), torch.randn(n, k) * k ** -0.5
        torch.testing.assert_close(_infinilm._linear(x, w), torch.nn.functional.linear(x, w), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("isa", ["avx512", "avx2", "generic"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_linear_measured_choice(dtype, isa, monkeypatch):
    """Without INFINILM_CPU_LINEAR the first call of a shape times both kernels; every call (the timing one
    and the cached choice after it) returns the product, with a bias and strided rows too."""
    use_isa(isa, monkeypatch)
    monkeypatch.delenv("INFINILM_CPU_LINEAR", raising=False)
    for m in (1, 3, 8, 16):
        for n, k in ((96, 64), (577, 129)):
            wide = torch.randn(m, k + 5, dtype=dtype)
            w, b = torch.randn(n, k, dtype=dtype), torch.randn(n, dtype=dtype)
            for _ in range(2):
                check(wide[:, 5:], w, b)
                check(torch.randn(m, k, dtype=dtype), w)
