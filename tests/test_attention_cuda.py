"""Paged attention, the CUDA kernels' cases: vs a plain fp32 PyTorch reference, awkward shapes, CUDA graph replay.

The accuracy cases run on every device (the CPU kernels too: the same shapes, block sizes 8/256, 16:1 GQA,
lengths 0 and 1029, a 20000-token context); graphs, in-kernel masking of bad ids and the CUDA limits need a GPU.
"""
import math

import pytest
import torch

from infinilm_torch import ops

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
# (atol, rtol) vs the fp32 reference on the same (rounded) inputs: the output's own rounding plus, for
# prefill, probabilities rounded to 16 bits before P @ V (as FlashAttention does).
ATTN_TOL = {torch.float32: (5e-5, 5e-5), torch.float16: (3e-3, 3e-3), torch.bfloat16: (2.5e-2, 2e-2)}


def _check(out, ref, dtype):
    atol, rtol = ATTN_TOL[dtype]
    assert torch.isfinite(out).all(), "non-finite output"
    torch.testing.assert_close(out.float(), ref, atol=atol, rtol=rtol)


def _gather(cache, table_row, length):
    """[Hk, length, D] fp32 view of one request's cached tokens."""
    bs = cache.shape[2]
    nb = (length + bs - 1) // bs
    blocks = cache[table_row[:nb].long()].float()  # [nb, Hk, bs, D]
    return blocks.permute(1, 0, 2, 3).reshape(cache.shape[1], nb * bs, cache.shape[3])[:, :length]


def ref_decode(q, kc, vc, bt, sl, scale):
    B, hq, d = q.shape
    g = hq // kc.shape[1]
    out = torch.zeros(B, hq, d, dtype=torch.float32, device=q.device)
    for b in range(B):
        n = int(sl[b])
        if n == 0:
            continue
        k = _gather(kc, bt[b], n).repeat_interleave(g, 0)
        v = _gather(vc, bt[b], n).repeat_interleave(g, 0)
        p = (torch.einsum("hd,hld->hl", q[b].float(), k) * scale).softmax(-1)
        out[b] = torch.einsum("hl,hld->hd", p, v)
    return out


def ref_prefill(q, kc, vc, bt, qsl, sl, scale):
    T, hq, d = q.shape
    g = hq // kc.shape[1]
    out = torch.zeros(T, hq, d, dtype=torch.float32, device=q.device)
    for r in range(sl.shape[0]):
        s, e, n = int(qsl[r]), int(qsl[r + 1]), int(sl[r])
        if e == s:
            continue
        k = _gather(kc, bt[r], n).repeat_interleave(g, 0)
        v = _gather(vc, bt[r], n).repeat_interleave(g, 0)
        pos = torch.arange(n - (e - s), n, device=q.device)
        mask = torch.arange(n, device=q.device)[None, :] <= pos[:, None]  # [q_len, n]
        sc = torch.einsum("qhd,hld->hql", q[s:e].float(), k) * scale
        p = sc.masked_fill(~mask, float("-inf")).softmax(-1)
        out[s:e] = torch.einsum("hql,hld->qhd", p, v)
    return out


def make_cache(lens, hk, d, bs, dtype, idx_dtype=torch.int32, extra_blocks=3, slack=2, device="cuda"):
    """Random caches with shuffled block ids; unused table entries hold garbage ids (never read)."""
    need = [(n + bs - 1) // bs for n in lens]
    num_blocks = sum(need) + extra_blocks
    max_blocks = max(need + [1]) + slack
    kc = torch.randn(num_blocks, hk, bs, d, device=device, dtype=dtype)
    vc = torch.randn(num_blocks, hk, bs, d, device=device, dtype=dtype)
    perm = torch.randperm(num_blocks, device=device)
    bt = torch.full((len(lens), max_blocks), 10**6, dtype=torch.int64, device=device)
    at = 0
    for r, nb in enumerate(need):
        bt[r, :nb] = perm[at:at + nb]
        at += nb
    return kc, vc, bt.to(idx_dtype)


def _poison_next(shape, dtype, device="cuda"):
    """Free a NaN block of the output's size so the op's at::empty likely reuses it: unwritten rows show."""
    x = torch.full(shape, float("nan"), device=device, dtype=dtype)
    del x


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("d", [64, 128])
@pytest.mark.parametrize("bs", [8, 16, 256])
@pytest.mark.parametrize("heads", [(32, 8), (8, 8), (12, 4), (16, 1)])
def test_decode_cuda(device, dtype, d, bs, heads):
    hq, hk = heads
    lens = [1, 7, 300, 0, 1029, 16]
    kc, vc, bt = make_cache(lens, hk, d, bs, dtype, idx_dtype=torch.int32 if bs != 16 else torch.int64, device=device)
    q = torch.randn(len(lens), hq, d, device=device, dtype=dtype)
    sl = torch.tensor(lens, dtype=torch.int32, device=device)
    scale = 1 / math.sqrt(d)
    ref = ref_decode(q, kc, vc, bt, sl, scale)
    threads = torch.get_num_threads()
    # On CPU the second pass has more threads than (request, kv head) items, so the 1029- and 300-key rows split.
    for hint, n_threads in ((None, threads), (max(lens), 64 if device == "cpu" else threads)):
        _poison_next((len(lens), hq, d), dtype, device)
        torch.set_num_threads(n_threads)
        try:
            out = ops.paged_attention_decode(q, kc, vc, bt, sl, scale, hint)
        finally:
            torch.set_num_threads(threads)
        _check(out, ref, dtype)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_decode_cuda_long_split(device, dtype):
    """Long contexts take the split-K path (many splits per row, then the merge kernel)."""
    lens = [20000, 3, 9000]
    kc, vc, bt = make_cache(lens, 8, 128, 16, dtype, device=device)
    q = torch.randn(3, 32, 128, device=device, dtype=dtype)[:, :, :]
    sl = torch.tensor(lens, dtype=torch.int64, device=device)
    threads = torch.get_num_threads()
    torch.set_num_threads(64)  # on CPU: fewer (request, kv head) items (24) than threads, so contexts split too
    try:
        out = ops.paged_attention_decode(q, kc, vc, bt, sl, 0.088, None)
    finally:
        torch.set_num_threads(threads)
    _check(out, ref_decode(q, kc, vc, bt, sl, 0.088), dtype)


def test_decode_cuda_strided_query(device):
    lens = [50, 500]
    kc, vc, bt = make_cache(lens, 2, 128, 32, torch.bfloat16, device=device)
    big = torch.randn(2, 3, 8, 128, device=device, dtype=torch.bfloat16)
    q = big[:, 1]  # row stride 3*8*128, head stride 128
    sl = torch.tensor(lens, device=device)
    _check(ops.paged_attention_decode(q, kc, vc, bt, sl, 0.1), ref_decode(q, kc, vc, bt, sl, 0.1), torch.bfloat16)
    qh = torch.randn(2, 8, 2 * 128, device=device, dtype=torch.bfloat16)[:, :, 4:132]  # rows not 16-byte aligned
    _check(ops.paged_attention_decode(qh, kc, vc, bt, sl, 0.1), ref_decode(qh, kc, vc, bt, sl, 0.1), torch.bfloat16)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("d", [64, 128])
@pytest.mark.parametrize("bs", [8, 16, 256])
@pytest.mark.parametrize("heads", [(32, 8), (6, 6), (12, 4)])
def test_prefill_cuda(device, dtype, d, bs, heads):
    hq, hk = heads
    # (new tokens, cached prefix) per request: fresh prompts, chunked prefill, empty and 1-token chunks.
    reqs = [(5, 0), (130, 0), (0, 40), (1, 77), (200, 333), (64, 64)]
    q_lens = [a for a, _ in reqs]
    lens = [a + b for a, b in reqs]
    kc, vc, bt = make_cache(lens, hk, d, bs, dtype, idx_dtype=torch.int64 if bs == 8 else torch.int32, device=device)
    T = sum(q_lens)
    q = torch.randn(T, hq, d, device=device, dtype=dtype)
    qsl = torch.tensor([0] + list(torch.tensor(q_lens).cumsum(0)), dtype=torch.int32, device=device)
    sl = torch.tensor(lens, dtype=torch.int64, device=device)
    scale = 1 / math.sqrt(d)
    ref = ref_prefill(q, kc, vc, bt, qsl, sl, scale)
    for hints in ((None, None), (max(q_lens), max(lens))):
        _poison_next((T, hq, d), dtype, device)
        out = ops.paged_attention_prefill(q, kc, vc, bt, qsl, sl, scale, *hints)
        _check(out, ref, dtype)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_prefill_cuda_long(device, dtype):
    """Several 128-row tiles and many 64-key tiles: 1500 new tokens after a 700-token prefix, strided query."""
    reqs = [(1500, 700), (300, 0)]
    lens = [a + b for a, b in reqs]
    kc, vc, bt = make_cache(lens, 8, 128, 16, dtype, device=device)
    T = 1800
    q = torch.randn(T, 32, 2, 128, device=device, dtype=dtype)[:, :, 1]
    qsl = torch.tensor([0, 1500, 1800], device=device)
    sl = torch.tensor(lens, device=device)
    out = ops.paged_attention_prefill(q, kc, vc, bt, qsl, sl, 0.088)
    _check(out, ref_prefill(q, kc, vc, bt, qsl, sl, 0.088), dtype)


@needs_cuda
def test_bad_block_ids_do_not_fault():
    """Out-of-range block ids are masked in-kernel: no fault, finite output."""
    kc, vc, bt = make_cache([40, 40], 2, 64, 16, torch.float16)
    bt[0, 1] = 10**6
    bt[1, 0] = -5
    q = torch.randn(2, 4, 64, device="cuda", dtype=torch.float16)
    sl = torch.tensor([40, 40], device="cuda")
    out = ops.paged_attention_decode(q, kc, vc, bt, sl, 0.125)
    qp = torch.randn(10, 4, 64, device="cuda", dtype=torch.float16)
    outp = ops.paged_attention_prefill(qp, kc, vc, bt, torch.tensor([0, 5, 10], device="cuda"), sl, 0.125)
    torch.cuda.synchronize()
    assert torch.isfinite(out).all() and torch.isfinite(outp).all()


def _graph(fn):
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        fn()  # warm-up outside the capture
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        out = fn()
    return g, out


@needs_cuda
@pytest.mark.parametrize("hint", [True, False])
def test_decode_cuda_graph(hint):
    dtype, B, max_len = torch.bfloat16, 4, 3000
    kc, vc, bt = make_cache([max_len] * B, 8, 128, 16, dtype)
    q = torch.randn(B, 32, 128, device="cuda", dtype=dtype)
    sl = torch.full((B,), 10, dtype=torch.int32, device="cuda")
    g, out = _graph(lambda: ops.paged_attention_decode(q, kc, vc, bt, sl, 0.088, max_len if hint else None))
    for lens in ([2999, 1, 1500, 64], [3000, 3000, 17, 0]):
        q.copy_(torch.randn_like(q))
        kc.copy_(torch.randn_like(kc))
        vc.copy_(torch.randn_like(vc))
        bt.copy_(bt[torch.randperm(B, device="cuda")])
        sl.copy_(torch.tensor(lens, device="cuda"))
        g.replay()
        _check(out, ref_decode(q, kc, vc, bt, sl, 0.088), dtype)


@needs_cuda
def test_prefill_cuda_graph():
    dtype = torch.bfloat16
    lens = [700, 300]
    kc, vc, bt = make_cache(lens, 8, 128, 16, dtype)
    q = torch.randn(400, 32, 128, device="cuda", dtype=dtype)
    qsl = torch.tensor([0, 200, 400], dtype=torch.int32, device="cuda")
    sl = torch.tensor(lens, dtype=torch.int32, device="cuda")
    g, out = _graph(lambda: ops.paged_attention_prefill(q, kc, vc, bt, qsl, sl, 0.088, 400, 700))
    for starts, new_lens in (([0, 399, 400], [650, 1]), ([0, 100, 400], [100, 300])):
        q.copy_(torch.randn_like(q))
        kc.copy_(torch.randn_like(kc))
        qsl.copy_(torch.tensor(starts, device="cuda"))
        sl.copy_(torch.tensor(new_lens, device="cuda"))
        g.replay()
        _check(out, ref_prefill(q, kc, vc, bt, qsl, sl, 0.088), dtype)


@needs_cuda
def test_cuda_errors():
    kc, vc, bt = make_cache([10], 2, 72, 16, torch.float16)  # not one of the CUDA head sizes
    q = torch.randn(1, 4, 72, device="cuda", dtype=torch.float16)
    sl = torch.tensor([10], device="cuda")
    with pytest.raises(ValueError, match="head_dim"):
        ops.paged_attention_decode(q, kc, vc, bt, sl, 0.1)
    kc, vc, bt = make_cache([10], 2, 64, 12, torch.float16)
    with pytest.raises(ValueError, match="block_size"):
        ops.paged_attention_decode(q[..., :64].contiguous(), kc, vc, bt, sl, 0.1)
