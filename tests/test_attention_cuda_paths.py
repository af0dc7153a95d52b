"""CUDA paged decode's launch paths: no split, split-K with the merge fused into the launch, split-K with the
separate merge kernel (forced through INFINILM_DECODE_SPLITS), CUDA-graph replay of each (the fused merge's
counters must be left at zero by every launch), and block ids whose element offsets overflow 32 bits."""
import pytest
import torch

from infinilm_torch import ops
from test_attention_matrix import check, make_cache, reference

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _decode_case(lens, d=128, hk=2, hq=8, bs=16, dtype=torch.bfloat16):
    kc, vc, bt = make_cache(lens, hk, d, bs, dtype, "cuda")
    q = torch.randn(len(lens), hq, d, device="cuda").to(dtype)
    sl = torch.tensor(lens, device="cuda", dtype=torch.int32)
    return q, kc, vc, bt, sl


@pytest.mark.parametrize("splits", ["1", "3", "16", "-5", "300"])
@pytest.mark.parametrize("d", [64, 80, 256])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_forced_split_paths(monkeypatch, splits, d, dtype):
    monkeypatch.setenv("INFINILM_DECODE_SPLITS", splits)
    lens = [1, 700, 4099, 33, 0]
    q, kc, vc, bt, sl = _decode_case(lens, d=d, dtype=dtype)
    for kw in (dict(), dict(window_left=500, softcap=25.0)):
        out = ops.paged_attention_decode(q, kc, vc, bt, sl, d**-0.5, **kw)
        qsl = torch.arange(len(lens) + 1, device="cuda")
        check(out, (q, kc, vc, bt, qsl, sl, d**-0.5), kw, dtype)
        assert (out[4] == 0).all(), "an empty row must give zeros"


def test_fused_merge_repeats(monkeypatch):
    """Many launches in a row on one stream: a counter left non-zero would stop a later merge."""
    monkeypatch.setenv("INFINILM_DECODE_SPLITS", "7")
    q, kc, vc, bt, sl = _decode_case([3000, 1200, 77])
    first = ops.paged_attention_decode(q, kc, vc, bt, sl, 0.088)
    for _ in range(20):
        torch.testing.assert_close(ops.paged_attention_decode(q, kc, vc, bt, sl, 0.088), first, atol=0, rtol=0)


@pytest.mark.parametrize("splits", [None, "6", "-6"], ids=["plan", "fused", "merge-kernel"])
@pytest.mark.parametrize("kw", [dict(), dict(window_left=255, softcap=30.0)], ids=["plain", "window-softcap"])
def test_cuda_graph_replay(monkeypatch, splits, kw):
    """Captured once (the split plan's path, or a forced fused / separate-kernel merge), replayed with new
    queries and lengths; the output is poisoned before each replay, so a merge that did not run shows."""
    if splits is not None:
        monkeypatch.setenv("INFINILM_DECODE_SPLITS", splits)
    q, kc, vc, bt, sl = _decode_case([4096, 4096])  # both rows own blocks for every replay's length
    sl.copy_(torch.tensor([4096, 300], device="cuda", dtype=torch.int32))
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        ops.paged_attention_decode(q, kc, vc, bt, sl, 0.088, **kw)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = ops.paged_attention_decode(q, kc, vc, bt, sl, 0.088, **kw)
    for new_lens in ([4096, 300], [1000, 2], [4000, 4096], [1, 0]):
        q.copy_(torch.randn_like(q))
        sl.copy_(torch.tensor(new_lens, device="cuda", dtype=torch.int32))
        out.fill_(float("nan"))
        graph.replay()
        torch.cuda.synchronize()
        check(out, (q, kc, vc, bt, torch.arange(3, device="cuda"), sl, 0.088), kw, torch.bfloat16)


def test_engine_style_graph_with_window_matches_eager():
    """The decode op captured once with a window, replayed as the context grows past the window."""
    lens = [5, 9]
    q, kc, vc, bt, sl = _decode_case([600, 600])
    sl.copy_(torch.tensor(lens, device="cuda", dtype=torch.int32))
    kw = dict(window_left=31)
    ops.paged_attention_decode(q, kc, vc, bt, sl, 0.088, **kw)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = ops.paged_attention_decode(q, kc, vc, bt, sl, 0.088, **kw)
    for n in (10, 31, 32, 33, 100, 599):
        sl.fill_(n)
        graph.replay()
        torch.testing.assert_close(out, ops.paged_attention_decode(q, kc, vc, bt, sl, 0.088, **kw), atol=0, rtol=0)


def _free_gib():
    free, _ = torch.cuda.mem_get_info()
    return free / 2**30


def test_block_offsets_past_32_bits():
    """fp16 caches of 2^31 + 2^20 elements each: the request's blocks sit at the top, where block id *
    block stride no longer fits in 32 bits."""
    hk, bs, d = 1, 16, 128
    per_block = hk * bs * d
    nb = (2**31 + 2**20) // per_block
    if _free_gib() < 2 * nb * per_block * 2 / 2**30 + 2:
        pytest.skip("not enough free GPU memory for two 4.3 GB caches")
    kc = torch.empty(nb, hk, bs, d, device="cuda", dtype=torch.float16)
    vc = torch.empty_like(kc)
    lens = [200, 37]
    ids = torch.arange(nb - 16, nb, device="cuda")[torch.randperm(16, device="cuda")]
    bt = torch.zeros(2, 13, dtype=torch.int64, device="cuda")
    bt[0, :13] = ids[:13]
    bt[1, :3] = ids[13:16]
    kc[ids] = torch.randn(16, hk, bs, d, device="cuda").half()
    vc[ids] = torch.randn(16, hk, bs, d, device="cuda").half()
    assert int(ids.min()) * per_block > 2**31
    sl = torch.tensor(lens, device="cuda")
    q = torch.randn(2, 4, d, device="cuda").half()
    out = ops.paged_attention_decode(q, kc, vc, bt, sl, d**-0.5)
    small_k, small_v = kc[ids].clone(), vc[ids].clone()  # the same tokens in a small cache
    remap = torch.full((nb,), -1, dtype=torch.int64, device="cuda")
    remap[ids] = torch.arange(16, device="cuda")
    bt_small = torch.zeros_like(bt)
    bt_small[0] = remap[bt[0]]
    bt_small[1, :3] = remap[bt[1, :3]]
    qsl = torch.arange(3, device="cuda")
    ref = reference(q, small_k, small_v, bt_small, qsl, sl, d**-0.5)
    torch.testing.assert_close(out.float(), ref, atol=3e-3, rtol=3e-3)
    qp = torch.randn(237, 4, d, device="cuda").half()
    qsl = torch.tensor([0, 200, 237], device="cuda")
    out = ops.paged_attention_prefill(qp, kc, vc, bt, qsl, sl, d**-0.5, window_left=50)
    ref = reference(qp, small_k, small_v, bt_small, qsl, sl, d**-0.5, window_left=50)
    torch.testing.assert_close(out.float(), ref, atol=3e-3, rtol=3e-3)
    del kc, vc
    torch.cuda.empty_cache()
