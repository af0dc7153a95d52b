"""Paged attention over the issue's matrix: head sizes 64/80/96/128/256, GQA 1/4/8/6:1, block sizes 8..128,
partly filled last blocks, fp16/bf16, sliding window and logit soft-cap on/off, vs an fp32 reference
(the FlashAttention rule: error at most about twice plain PyTorch's at the same precision, plus a floor).

Every case runs on the CPU kernels (CI) and, with a GPU, on the CUDA kernels (`device` fixture)."""
import math

import pytest
import torch

from infinilm_torch import ops

HEAD_DIMS = [64, 80, 96, 128, 256]
GQA = [(4, 4), (2, 8), (1, 8), (2, 12)]  # (kv_heads, q_heads): ratios 1, 4, 8 and 6:1
BLOCKS = [8, 16, 32, 64, 128]
OPTS = [(-1, 0.0), (7, 0.0), (-1, 30.0), (20, 5.0)]  # (window_left, softcap)
FLOOR = {torch.float32: 2e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}


def _cases():
    out, i = [], 0
    for d in HEAD_DIMS:
        for hk, hq in GQA:
            for dtype in (torch.float16, torch.bfloat16):
                w, cap = OPTS[i % len(OPTS)]
                out.append(pytest.param(d, hk, hq, BLOCKS[i % len(BLOCKS)], dtype, w, cap,
                                        id=f"d{d}-{hq}x{hk}-bs{BLOCKS[i % len(BLOCKS)]}-{str(dtype)[6:]}-w{w}-cap{cap:g}"))
                i += 1
    return out


CASES = _cases()


def make_cache(lens, hk, d, bs, dtype, device, index_dtype=torch.int32):
    """Shuffled blocks; slots past each length and the unused blocks hold NaN (a kernel that reads them fails)."""
    need = [max(1, math.ceil(n / bs)) for n in lens]
    nb = sum(need) + 2
    kc = torch.full((nb, hk, bs, d), float("nan"), dtype=dtype)
    vc = torch.full_like(kc, float("nan"))
    perm = torch.randperm(nb).tolist()
    bt = torch.full((len(lens), max(need) + 1), 10**6, dtype=torch.int64)
    for r, (n, k) in enumerate(zip(lens, need)):
        ids, perm = perm[:k], perm[k:]
        bt[r, :k] = torch.tensor(ids)
        kv = torch.randn(2, k * bs, hk, d).to(dtype)
        kv[:, n:] = float("nan")
        kc[ids] = kv[0].view(k, bs, hk, d).transpose(1, 2)
        vc[ids] = kv[1].view(k, bs, hk, d).transpose(1, 2)
    return kc.to(device), vc.to(device), bt.to(device=device, dtype=index_dtype)


def reference(q, kc, vc, bt, qsl, sl, scale, window_left=-1, softcap=0.0, dtype=torch.float32):
    """Per request: gather K/V, mask causal (+ window: keys [p - window_left, p]), soft-cap, softmax, in `dtype`."""
    T, hq, d = q.shape
    hk, bs = kc.shape[1], kc.shape[2]
    out = torch.zeros(T, hq, d, dtype=dtype, device=q.device)
    qsl, sl = qsl.tolist(), sl.tolist()
    for r in range(len(sl)):
        s, e, n = qsl[r], qsl[r + 1], sl[r]
        if e == s or n == 0:
            continue
        ids = bt[r, : math.ceil(n / bs)].long()
        k = kc[ids].to(dtype).transpose(0, 1).reshape(hk, -1, d)[:, :n].repeat_interleave(hq // hk, 0)
        v = vc[ids].to(dtype).transpose(0, 1).reshape(hk, -1, d)[:, :n].repeat_interleave(hq // hk, 0)
        sc = (q[s:e].to(dtype).transpose(0, 1) @ k.transpose(1, 2)) * scale  # [hq, q_len, n]
        if softcap > 0:
            sc = softcap * torch.tanh(sc / softcap)
        pos = torch.arange(n - (e - s), n, device=q.device)[:, None]
        key = torch.arange(n, device=q.device)[None, :]
        vis = key <= pos
        if window_left >= 0:
            vis &= key >= pos - window_left
        out[s:e] = (sc.masked_fill(~vis, float("-inf")).softmax(-1) @ v).transpose(0, 1)
    return out


def check(out, args, kw, dtype):
    ref = reference(*args, **kw)
    lp = reference(*args, **kw, dtype=dtype).float()
    assert torch.isfinite(out).all(), "non-finite output (a NaN slot was read?)"
    err = (out.float() - ref).abs().max().item()
    lp_err = (lp - ref).abs().max().item()
    assert err <= 2 * lp_err + FLOOR[dtype], f"max error {err:.3g} vs plain PyTorch {dtype} error {lp_err:.3g}"


def _lens(bs, device):
    """Lengths 1, partly filled last blocks, whole blocks; one long context on CUDA."""
    lens = [1, bs - 1, bs + 1, 3 * bs, 2 * bs + 5, 37]
    return lens + ([5000] if device == "cuda" else [])


@pytest.mark.parametrize("d,hk,hq,bs,dtype,window,cap", CASES)
def test_decode_matrix(device, d, hk, hq, bs, dtype, window, cap):
    lens = _lens(bs, device)
    kc, vc, bt = make_cache(lens, hk, d, bs, dtype, device)
    q = torch.randn(len(lens), hq, d, device=device).to(dtype)
    sl = torch.tensor(lens, device=device, dtype=torch.int32)
    out = ops.paged_attention_decode(q, kc, vc, bt, sl, d**-0.5, window_left=window, softcap=cap)
    qsl = torch.arange(len(lens) + 1, device=device)
    check(out, (q, kc, vc, bt, qsl, sl, d**-0.5), dict(window_left=window, softcap=cap), dtype)


@pytest.mark.parametrize("d,hk,hq,bs,dtype,window,cap", CASES)
def test_prefill_matrix(device, d, hk, hq, bs, dtype, window, cap):
    reqs = [(1, 1), (bs + 3, bs + 3), (5, 2 * bs + 1), (1, 3 * bs - 1), (40, 70)]  # (q_len, seq_len): prefixes too
    if device == "cuda":
        reqs.append((300, 1200))
    kc, vc, bt = make_cache([s for _, s in reqs], hk, d, bs, dtype, device)
    T = sum(n for n, _ in reqs)
    q = torch.randn(T, hq, d, device=device).to(dtype)
    qsl = torch.tensor([0] + [n for n, _ in reqs], device=device).cumsum(0).to(torch.int32)
    sl = torch.tensor([s for _, s in reqs], device=device, dtype=torch.int32)
    out = ops.paged_attention_prefill(q, kc, vc, bt, qsl, sl, d**-0.5, window_left=window, softcap=cap)
    check(out, (q, kc, vc, bt, qsl, sl, d**-0.5), dict(window_left=window, softcap=cap), dtype)


@pytest.mark.parametrize("window,cap", [(-1, 0.0), (1000, 0.0), (-1, 20.0)])
def test_decode_long_context(device, window, cap):
    """33k tokens (a partly filled last block): the split path on CUDA, the CPU's split-K too."""
    d, hk, hq, bs = 128, 2, 8, 16
    lens = [33_001] if device == "cpu" else [33_001, 17, 20_000]
    kc, vc, bt = make_cache(lens, hk, d, bs, torch.bfloat16, device)
    q = torch.randn(len(lens), hq, d, device=device).to(torch.bfloat16)
    sl = torch.tensor(lens, device=device)
    out = ops.paged_attention_decode(q, kc, vc, bt, sl, d**-0.5, window_left=window, softcap=cap)
    qsl = torch.arange(len(lens) + 1, device=device)
    check(out, (q, kc, vc, bt, qsl, sl, d**-0.5), dict(window_left=window, softcap=cap), torch.bfloat16)


def test_float32_window_softcap(device):
    d, hk, hq, bs = 80, 2, 12, 16
    reqs = [(3, 50), (17, 17), (1, 90)]
    kc, vc, bt = make_cache([s for _, s in reqs], hk, d, bs, torch.float32, device)
    qsl = torch.tensor([0, 3, 20, 21], device=device)
    sl = torch.tensor([s for _, s in reqs], device=device)
    q = torch.randn(21, hq, d, device=device)
    kw = dict(window_left=9, softcap=10.0)
    out = ops.paged_attention_prefill(q, kc, vc, bt, qsl, sl, d**-0.5, **kw)
    torch.testing.assert_close(out, reference(q, kc, vc, bt, qsl, sl, d**-0.5, **kw), atol=5e-5, rtol=5e-5)
    qd = q[qsl[1:] - 1].contiguous()
    out = ops.paged_attention_decode(qd, kc, vc, bt, sl, d**-0.5, **kw)
    ref = reference(qd, kc, vc, bt, torch.arange(4, device=device), sl, d**-0.5, **kw)
    torch.testing.assert_close(out, ref, atol=5e-5, rtol=5e-5)


@pytest.mark.parametrize("kw,match", [
    (dict(window_left=-2), "window_left"), (dict(softcap=-1.0), "softcap"), (dict(softcap=float("nan")), "softcap"),
    (dict(softcap=float("inf")), "softcap"),
])
def test_bad_options_are_refused(device, kw, match):
    kc, vc, bt = make_cache([5], 1, 64, 16, torch.float32, device)
    q = torch.randn(1, 1, 64, device=device)
    sl = torch.tensor([5], device=device)
    with pytest.raises(ValueError, match=match):
        ops.paged_attention_decode(q, kc, vc, bt, sl, 0.125, **kw)
    with pytest.raises(ValueError, match=match):
        ops.paged_attention_prefill(q, kc, vc, bt, torch.tensor([0, 1], device=device), sl, 0.125, **kw)


def test_window_wider_than_context_is_no_window(device):
    kc, vc, bt = make_cache([40, 3], 2, 64, 8, torch.float32, device)
    q = torch.randn(2, 4, 64, device=device)
    sl = torch.tensor([40, 3], device=device)
    a = ops.paged_attention_decode(q, kc, vc, bt, sl, 0.125)
    for w in (39, 40, 2**40):
        torch.testing.assert_close(ops.paged_attention_decode(q, kc, vc, bt, sl, 0.125, window_left=w), a)
    b = ops.paged_attention_decode(q, kc, vc, bt, sl, 0.125, window_left=0)  # only the token itself
    last = torch.stack([vc[int(bt[0, 4]), :, 7], vc[int(bt[1, 0]), :, 2]])  # [2, Hk, D]: the value at position len - 1
    torch.testing.assert_close(b, last.repeat_interleave(2, 1), atol=1e-6, rtol=1e-6)


def _decode_fn(q, kc, vc, bt, sl):
    return ops.paged_attention_decode(q, kc, vc, bt, sl, 0.125, window_left=11, softcap=15.0) * 2


def test_compile_fullgraph(device):
    torch._dynamo.reset()
    kc, vc, bt = make_cache([30, 9], 2, 64, 16, torch.float32, device)
    args = (torch.randn(2, 8, 64, device=device), kc, vc, bt, torch.tensor([30, 9], device=device))
    out = torch.compile(_decode_fn, fullgraph=True, backend="aot_eager")(*args)
    torch.testing.assert_close(out, _decode_fn(*args))


def test_opcheck_options(device):
    kc, vc, bt = make_cache([30, 9], 2, 64, 16, torch.float32, device)
    kc, vc = kc.nan_to_num(), vc.nan_to_num()
    q = torch.randn(2, 8, 64, device=device)
    sl = torch.tensor([30, 9], device=device)
    torch.library.opcheck(torch.ops.infinilm.paged_attention_decode, (q, kc, vc, bt, sl, 0.125, None, 5, 12.0))
    qp = torch.randn(6, 8, 64, device=device)
    qsl = torch.tensor([0, 4, 6], device=device)
    torch.library.opcheck(torch.ops.infinilm.paged_attention_prefill,
                          (qp, kc, vc, bt, qsl, sl, 0.125, None, None, 3, 7.5))
