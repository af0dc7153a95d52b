"""Paged attention (decode and chunked causal prefill) against a plain-PyTorch fp32 reference over the same cache."""
import math

import pytest
import torch

from infinilm_torch import ops

OPS = torch.ops.infinilm
# Added to 2x the error of plain PyTorch at the same precision (the FlashAttention rule).
ATOL = {torch.float32: 2e-5, torch.float16: 2e-4, torch.bfloat16: 2e-3}


def make_case(device, dtype, reqs, kv_heads, group, head_dim, block_size, index_dtype=torch.int64, strided=False):
    """reqs: [(q_len, seq_len)]. Blocks are a random permutation of the cache; everything the kernel must
    not read (slots past seq_len, unused blocks, block-table padding) is poisoned with NaN / -1."""
    hq = kv_heads * group
    need = [math.ceil(s / block_size) for _, s in reqs]
    num_blocks = sum(need) + 3
    max_blocks = max(need) + 1
    perm = torch.randperm(num_blocks).tolist()
    block_tables = torch.full((len(reqs), max_blocks), -1, dtype=torch.int64)
    kc = torch.full((num_blocks, kv_heads, block_size, head_dim), float("nan"))
    vc = torch.full_like(kc, float("nan"))
    for r, ((_, s), n) in enumerate(zip(reqs, need)):
        ids = torch.tensor(perm[:n])
        perm = perm[n:]
        block_tables[r, :n] = ids
        k = torch.randn(n * block_size, kv_heads, head_dim)
        v = torch.randn(n * block_size, kv_heads, head_dim)
        k[s:] = float("nan")
        v[s:] = float("nan")
        kc[ids] = k.view(n, block_size, kv_heads, head_dim).transpose(1, 2)
        vc[ids] = v.view(n, block_size, kv_heads, head_dim).transpose(1, 2)
    T = sum(q for q, _ in reqs)
    if strided:  # query as a view into a fused qkv projection: row stride > Hq * D
        qkv = torch.randn(T, (hq + 2 * kv_heads) * head_dim)
        query = qkv.to(device=device, dtype=dtype)[:, : hq * head_dim].view(T, hq, head_dim)
        assert not query.is_contiguous()
    else:
        query = torch.randn(T, hq, head_dim).to(device=device, dtype=dtype)
    qsl = torch.tensor([0] + [q for q, _ in reqs]).cumsum(0)
    to = lambda t: t.to(device=device, dtype=index_dtype)  # noqa: E731
    return dict(query=query, key_cache=kc.to(device=device, dtype=dtype), value_cache=vc.to(device=device, dtype=dtype),
                block_tables=to(block_tables), query_start_loc=to(qsl),
                seq_lens=to(torch.tensor([s for _, s in reqs])), scale=head_dim**-0.5)


def reference(query, key_cache, value_cache, block_tables, query_start_loc, seq_lens, scale, dtype=torch.float32):
    """Gathers each request's K/V from its block table and runs masked softmax attention in `dtype`."""
    hq, bs = query.shape[1], key_cache.shape[2]
    group = hq // key_cache.shape[1]
    out = torch.zeros(query.shape, dtype=dtype, device=query.device)
    qsl, sl = query_start_loc.tolist(), seq_lens.tolist()
    for r in range(len(sl)):
        q0, q1, s = qsl[r], qsl[r + 1], sl[r]
        if q1 == q0:
            continue
        ids = block_tables[r, : math.ceil(s / bs)].long()
        k = key_cache[ids].to(dtype).transpose(0, 1).reshape(key_cache.shape[1], -1, key_cache.shape[3])[:, :s]
        v = value_cache[ids].to(dtype).transpose(0, 1).reshape(key_cache.shape[1], -1, key_cache.shape[3])[:, :s]
        k, v = k.repeat_interleave(group, 0), v.repeat_interleave(group, 0)
        q = query[q0:q1].to(dtype).transpose(0, 1)  # [Hq, q_len, D]
        scores = (q @ k.transpose(1, 2)) * scale
        q_len = q1 - q0
        visible = torch.arange(s, device=query.device)[None, :] <= (s - q_len + torch.arange(q_len, device=query.device))[:, None]
        scores = scores.masked_fill(~visible, float("-inf"))
        out[q0:q1] = (torch.softmax(scores, dim=-1) @ v).transpose(0, 1)
    return out


def check(out, case, dtype):
    assert out.dtype == dtype and out.shape == case["query"].shape and out.is_contiguous()
    args = {k: v for k, v in case.items()}
    ref = reference(**args)
    err = (out.float() - ref).abs().max().item()
    lp_err = 0.0 if dtype == torch.float32 else (reference(**args, dtype=dtype).float() - ref).abs().max().item()
    assert err <= 2 * lp_err + ATOL[dtype], f"max error {err:.3g} vs plain PyTorch {dtype} error {lp_err:.3g}"


def run_decode(case):
    return ops.paged_attention_decode(case["query"], case["key_cache"], case["value_cache"], case["block_tables"],
                                      case["seq_lens"], case["scale"])


def run_prefill(case, **kw):
    return ops.paged_attention_prefill(case["query"], case["key_cache"], case["value_cache"], case["block_tables"],
                                       case["query_start_loc"], case["seq_lens"], case["scale"], **kw)


DTYPES = [torch.float32, torch.float16, torch.bfloat16]
# (seq_lens, kv_heads, group, head_dim, block_size, index dtype, strided query): GQA 1/4/8 and a 6-wide group,
# head_dim 64/128, block 16/32, several blocks with a partly filled last one, batch 1 and 7.
DECODE_CONFIGS = [
    ([77], 8, 4, 64, 16, torch.int64, False),
    ([1, 16, 33, 100, 5, 64, 47], 2, 1, 128, 32, torch.int32, True),
    ([200, 3, 31, 90, 17, 1, 129], 1, 8, 64, 16, torch.int64, True),
    ([45, 96, 70], 2, 6, 128, 16, torch.int32, False),
    ([1500], 1, 4, 64, 32, torch.int64, False),  # few items, long context: the split-sequence path
    ([600, 1029, 5, 512], 2, 4, 64, 16, torch.int32, True),  # split lengths that do not divide the context
    ([2049, 300], 1, 8, 128, 32, torch.int64, False),  # 8 splits of 257 keys; the short row ends mid-split
    ([513, 1, 777], 2, 6, 128, 16, torch.int64, True),  # two 6-row tiles per kv head, a 1-key row
    ([1100], 4, 1, 64, 16, torch.int32, False),  # MHA, 4 splits
]
# The CPU decode splits a context into ranges of >= 256 keys when there are fewer (request, kv head, row tile)
# items than threads: SPLIT_THREADS makes every config with a context of >= 512 keys take that path.
SPLIT_THREADS = 32


def decode_with_threads(case, threads):
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return run_decode(case)
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("split", [False, True], ids=["default-threads", "split"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cfg", DECODE_CONFIGS, ids=lambda c: f"B{len(c[0])}-hk{c[1]}-g{c[2]}-d{c[3]}-bs{c[4]}")
def test_paged_attention_decode(device, dtype, cfg, split):
    lens, hk, group, d, bs, idx, strided = cfg
    if split and (device != "cpu" or max(lens) < 512):
        pytest.skip("the thread count steers only the CPU kernel's splits, for contexts of >= 512 keys")
    case = make_case(device, dtype, [(1, s) for s in lens], hk, group, d, bs, idx, strided)
    # Without `split`, a 1-request MQA case still splits on a 1-core runner (4 threads).
    threads = SPLIT_THREADS if split else (4 if len(lens) * hk < 4 else torch.get_num_threads())
    check(decode_with_threads(case, threads), case, dtype)
    check(run_prefill(case), case, dtype)  # the same requests as prefill with q_len 1


@pytest.mark.parametrize("threads", [4, 7, 64])
def test_paged_attention_decode_split_counts(threads):
    """Split counts that leave a short last range (and, at 64 threads, ranges past the shorter contexts' ends)."""
    case = make_case("cpu", torch.float32, [(1, s) for s in (1800, 257, 999)], 1, 4, 64, 16, torch.int64, True)
    check(decode_with_threads(case, threads), case, torch.float32)


# (q_len, seq_len) per request: fresh prompts (seq_len == q_len), chunked prefill over a cached prefix, q_len 1.
PREFILL_CONFIGS = [
    ([(37, 37)], 2, 4, 64, 16, torch.int64, False),
    ([(1, 1), (19, 19), (5, 45), (33, 100), (1, 64), (16, 48)], 2, 4, 64, 16, torch.int32, True),
    ([(23, 23), (40, 77), (1, 9)], 1, 8, 128, 32, torch.int64, True),
    ([(70, 70), (9, 41)], 4, 1, 64, 32, torch.int64, False),
    ([(3, 3), (2, 50)], 2, 2, 128, 16, torch.int32, False),  # narrow tiles (<= 4 rows)
    ([(9, 30), (12, 12)], 1, 3, 80, 16, torch.int64, True),  # odd group and head_dim
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cfg", PREFILL_CONFIGS, ids=lambda c: f"n{len(c[0])}-hk{c[1]}-g{c[2]}-d{c[3]}-bs{c[4]}")
def test_paged_attention_prefill(device, dtype, cfg):
    reqs, hk, group, d, bs, idx, strided = cfg
    case = make_case(device, dtype, reqs, hk, group, d, bs, idx, strided)
    max_q, max_s = max(q for q, _ in reqs), max(s for _, s in reqs)
    if device == "cuda" and d not in (64, 80, 96, 128, 256):  # the head sizes the CUDA kernels are built for
        with pytest.raises(ValueError, match=f"supports head_dim .*, got {d}"):
            run_prefill(case, max_query_len=max_q, max_seq_len=max_s)
        return
    check(run_prefill(case, max_query_len=max_q, max_seq_len=max_s), case, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_paged_attention_generic_isa(dtype, monkeypatch):
    """The baseline-ISA build of the kernels (used on CPUs without AVX2) on one decode and one prefill case."""
    monkeypatch.setenv("INFINILM_CPU_GENERIC", "1")
    dec = make_case("cpu", dtype, [(1, s) for s in (50, 3, 129)], 2, 4, 64, 16)
    check(run_decode(dec), dec, dtype)
    pre = make_case("cpu", dtype, [(20, 20), (7, 60), (1, 33)], 2, 8, 128, 32, strided=True)
    check(run_prefill(pre), pre, dtype)


def test_paged_attention_zero_length_decode(device):
    """A request with seq_len 0 (padding in a batch) yields zeros and leaves the others untouched."""
    case = make_case(device, torch.float32, [(1, 40), (1, 1), (1, 20)], 2, 4, 64, 16)
    case["seq_lens"][1] = 0
    out = run_decode(case)
    assert (out[1] == 0).all()
    check(out, case, torch.float32)


def _small(device, dtype=torch.float32):
    """Three requests over one cache (nan-free, so outputs compare exactly); a strided query of 8 tokens."""
    c = make_case(device, dtype, [(3, 20), (1, 5), (4, 4)], 2, 2, 64, 16, strided=True)
    c["key_cache"], c["value_cache"] = c["key_cache"].nan_to_num(), c["value_cache"].nan_to_num()
    c["decode_query"] = torch.randn(3, 4, 64, device=device, dtype=dtype)
    return c


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_opcheck(device, dtype):
    c = _small(device, dtype)
    torch.library.opcheck(OPS.paged_attention_decode, (c["decode_query"], c["key_cache"], c["value_cache"],
                                                       c["block_tables"], c["seq_lens"], c["scale"], 32))
    torch.library.opcheck(OPS.paged_attention_prefill, (c["query"], c["key_cache"], c["value_cache"],
                                                        c["block_tables"], c["query_start_loc"], c["seq_lens"],
                                                        c["scale"], 4, 20))


def _both(qd, qp, kc, vc, bt, qsl, sl, scale):
    a = ops.paged_attention_decode(qd, kc, vc, bt, sl, scale)
    b = ops.paged_attention_prefill(qp, kc, vc, bt, qsl, sl, scale)
    return a * 2, b + 1


def test_compile_fullgraph_matches_eager(device):
    torch._dynamo.reset()
    c = _small(device)
    args = (c["decode_query"], c["query"], c["key_cache"], c["value_cache"], c["block_tables"], c["query_start_loc"],
            c["seq_lens"], c["scale"])
    compiled = torch.compile(_both, fullgraph=True, backend="aot_eager")
    for a, b in zip(compiled(*args), _both(*args)):
        torch.testing.assert_close(a, b, atol=0, rtol=0)


def test_bad_input(device):
    c = _small(device)
    q, qd, kc, vc, bt, qsl, sl, sc = (c[k] for k in ("query", "decode_query", "key_cache", "value_cache",
                                                     "block_tables", "query_start_loc", "seq_lens", "scale"))
    with pytest.raises(ValueError, match=r"head_dim mismatch: 'query' \[3, 4, 32\]"):
        ops.paged_attention_decode(qd[..., :32], kc, vc, bt, sl, sc)
    with pytest.raises(ValueError, match=r"query heads \(3\) must be a multiple of kv heads \(2\)"):
        ops.paged_attention_prefill(q[:, :3], kc, vc, bt, qsl, sl, sc)
    with pytest.raises(TypeError, match=r"'query' \(Half\) and 'key_cache' \(Float\)"):
        ops.paged_attention_decode(qd.half(), kc, vc, bt, sl, sc)
    with pytest.raises(TypeError, match="'seq_lens' must be int32 or int64"):
        ops.paged_attention_decode(qd, kc, vc, bt, sl.float(), sc)
    with pytest.raises(TypeError, match="'query_start_loc' must be int32 or int64"):
        ops.paged_attention_prefill(q, kc, vc, bt, qsl.float(), sl, sc)
    with pytest.raises(ValueError, match=r"'query_start_loc' must have 4 entries.*\[3\]"):
        ops.paged_attention_prefill(q, kc, vc, bt, qsl[:3], sl, sc)
    with pytest.raises(ValueError, match="'query' has 8 tokens but 'seq_lens' has 3"):
        ops.paged_attention_decode(q, kc, vc, bt, sl, sc)
    if device != "cpu":  # the value checks below read host data
        return
    cap = bt.shape[1] * 16
    with pytest.raises(ValueError, match=rf"'seq_lens'\[1\] = {cap + 1} exceeds what 'block_tables' rows hold"):
        ops.paged_attention_decode(qd, kc, vc, bt, torch.tensor([20, cap + 1, 4]), sc)
    with pytest.raises(ValueError, match=r"'seq_lens'\[0\] = 20 exceeds 'max_seq_len' = 10"):
        ops.paged_attention_decode(qd, kc, vc, bt, sl, sc, 10)
    bad = bt.clone()
    bad[1, 0] = kc.shape[0]
    with pytest.raises(IndexError, match=rf"'block_tables'\[1, 0\] = {kc.shape[0]} is out of range"):
        ops.paged_attention_prefill(q, kc, vc, bad, qsl, sl, sc)
    for loc, msg in [([1, 3, 4, 8], r"'query_start_loc'\[0\] must be 0, got 1"),
                     ([0, 3, 4, 7], r"'query_start_loc'\[3\] = 7 must equal the number of query tokens 8"),
                     ([0, 4, 3, 8], r"'query_start_loc' must not decrease, got \[1\] = 4 > \[2\] = 3"),
                     ([0, 1, 2, 8], r"request 2 has 6 query tokens .* 'seq_lens'\[2\] = 4")]:
        with pytest.raises(ValueError, match=msg):
            ops.paged_attention_prefill(q, kc, vc, bt, torch.tensor(loc, dtype=qsl.dtype), sl, sc)
    with pytest.raises(ValueError, match="request 2 has 4 query tokens, more than 'max_query_len' = 3"):
        ops.paged_attention_prefill(q, kc, vc, bt, qsl, sl, sc, 3)
