"""CUDA only: the sampling ops on the GPU against the CPU kernels (the readable reference) at large shapes,
inside a captured CUDA graph, and the engine's per-request sampling under CUDA graphs (min-p and per-request
parameters replayed from the packed static input; penalties fall back to eager; logprobs after the replay).
The device-parametrized files (test_sampling.py, test_sampling_extras.py) also run every op case on CUDA."""
import pytest
import torch

from engine_utils import Input, PagedDriver, engine_config, make_hf, paged_config
from infinilm_torch import ops
from infinilm_torch.lib import _infinilm
from test_sampling import uniform
from test_sampling_extras import ref_filter, ref_penalties, token_lists

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.fixture(autouse=True)
def _decode_graphs_only(monkeypatch):
    """These tests count and compare decode-graph replays: prefill and mixed steps stay eager here
    (tests/test_engine_cuda_graphs_mixed.py covers their graphs)."""
    monkeypatch.setenv("INFINILM_CUDA_GRAPHS_MIXED", "0")
DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def rand_params(B, V, device="cuda"):
    T = torch.tensor([0.0, 0.6, 1.0, 1.7])[torch.randint(0, 4, (B,))]
    K = torch.tensor([0, 1, 20, 500, V])[torch.randint(0, 5, (B,))]
    P = torch.tensor([1.0, 0.95, 0.7, 0.3])[torch.randint(0, 4, (B,))]
    Q = torch.tensor([0.0, 0.01, 0.1, 0.5])[torch.randint(0, 4, (B,))]
    S = torch.randint(0, 2**62, (B,))
    return [t.to(device) for t in (T, K, P, Q, S)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("B,V", [(1, 128256), (19, 32000), (64, 5000), (256, 1000)])
def test_sample_min_p_cuda_matches_cpu(dtype, B, V):
    logits = (torch.randn(B, V) * 3).to(dtype)
    logits[: B // 2, :20] += 12  # peaked rows, like real logits
    T, K, P, Q, S = rand_params(B, V)
    got = ops.sample(logits.cuda(), T, K, P, S, Q).cpu()
    cpu = ops.sample(logits, T.cpu(), K.cpu(), P.cpu(), S.cpu(), Q.cpu())
    for b in range(B):
        args = (logits[b], float(T[b]), int(K[b]), float(P[b]), float(Q[b]))
        allowed, w = ref_filter(*args, p_slack=1e-5)
        assert allowed[got[b]], f"row {b} {args[1:]}: CUDA drew {int(got[b])} outside the allowed set"
        if got[b] != cpu[b]:  # only where u * W lies within rounding of a CDF step
            keep, w = ref_filter(*args)
            cum = w.cumsum(0)
            target = uniform(int(S[b])) * float(cum[-1])
            assert float((cum - target).abs().min() / cum[-1]) < 1e-6, f"row {b}: CUDA {int(got[b])} CPU {int(cpu[b])}"


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("B,V,Lp,Lo", [(1, 128256, 4000, 600), (37, 32000, 300, 200), (256, 1000, 20, 10)])
def test_apply_penalties_cuda_matches_cpu_and_reference(dtype, B, V, Lp, Lo):
    logits = (torch.randn(B, V) * 3).to(dtype)
    prompt, output = token_lists(B, Lp, V, "cpu"), token_lists(B, Lo, V, "cpu")
    rep, pres, freq = torch.rand(B) * 1.5 + 0.5, torch.randn(B), torch.randn(B)
    want = ref_penalties(logits, prompt, output, rep, pres, freq).to(dtype).float()
    x_cpu, x_gpu = logits.clone(), logits.clone().cuda()
    ops.apply_penalties(x_cpu, prompt, output, rep, pres, freq)
    ops.apply_penalties(x_gpu, prompt.cuda(), output.cuda(), rep.cuda(), pres.cuda(), freq.cuda())
    tol = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}[dtype]
    torch.testing.assert_close(x_gpu.cpu().float(), x_cpu.float(), atol=tol, rtol=tol)
    torch.testing.assert_close(x_gpu.cpu().float(), want, atol=tol, rtol=tol)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("B,V,k", [(1, 128256, 20), (64, 128256, 5), (300, 1000, 0), (7, 5001, 1024)])
def test_logprobs_cuda_matches_log_softmax(dtype, B, V, k):
    logits = (torch.randn(B, V) * 4).to(dtype)
    logits[0, :100] = float("-inf")
    ids = torch.randint(100, V, (B,))
    lp, top, top_ids = ops.logprobs(logits.cuda(), ids.cuda(), k)
    ref = torch.log_softmax(logits.float(), -1)
    torch.testing.assert_close(lp.cpu(), ref.gather(1, ids.view(-1, 1)).view(-1), atol=2e-5, rtol=2e-5)
    # Ranked by the logits themselves (ties: lower id): two logits that differ by less than an ulp of the
    # log-softmax would tie in `ref` and could be ordered either way there.
    order = torch.sort(-logits.float(), dim=1, stable=True).indices[:, :k]
    torch.testing.assert_close(top_ids.cpu(), order)
    torch.testing.assert_close(top.cpu(), ref.gather(1, order), atol=2e-5, rtol=2e-5)


def test_sampling_ops_in_a_cuda_graph():
    """Captured once, replayed on new values copied into the static inputs: equal to eager each time."""
    B, V = 8, 4096
    dev = "cuda"
    static = dict(x=torch.randn(B, V, device=dev), prompt=token_lists(B, 40, V, dev), output=token_lists(B, 20, V, dev),
                  rep=torch.ones(B, device=dev), pres=torch.zeros(B, device=dev), freq=torch.zeros(B, device=dev))
    T, K, P, Q, S = rand_params(B, V)

    def step(d):
        y = d["x"].clone()
        ops.apply_penalties(y, d["prompt"], d["output"], d["rep"], d["pres"], d["freq"])
        ids = ops.sample(y, T, K, P, S, Q)
        return (ids, *ops.logprobs(d["x"], ids, 5))

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        step(static)  # warm-up
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        outs = step(static)
    for _ in range(3):
        fresh = dict(x=torch.randn(B, V, device=dev) * 2, prompt=token_lists(B, 40, V, dev),
                     output=token_lists(B, 20, V, dev), rep=torch.rand(B, device=dev) + 0.5,
                     pres=torch.randn(B, device=dev), freq=torch.randn(B, device=dev))
        for name, t in fresh.items():
            static[name].copy_(t)
        T.copy_(rand_params(B, V)[0]), Q.copy_(rand_params(B, V)[3]), S.copy_(torch.randint(0, 2**62, (B,), device=dev))
        graph.replay()
        for a, b in zip(outs, step(fresh)):
            torch.testing.assert_close(a, b)


def _engine(model, cc, graphs=True):
    engine = _infinilm.InferEngine(engine_config(model.config, torch.float32), device_type="cuda", cache_config=cc)
    for name, t in model.state_dict().items():
        engine.load_param(name, t.cuda())
    engine.enable_cuda_graphs(graphs)
    return engine


def test_engine_per_request_sampling_under_cuda_graphs():
    model = make_hf(vocab=256, head_dim=64)  # CUDA kernels take head_dim 64 or 128
    engine = _engine(model, paged_config(model, 64, 8))
    n = 5
    drv = PagedDriver(engine, [torch.randint(0, 256, (6,)).tolist() for _ in range(n)], 64, 8)
    drv.step([(r, 6) for r in range(n)])  # prefill: eager
    before = engine._cuda_graph_replays
    for step in range(6):
        T, K, P, Q, S = [t.cpu() for t in rand_params(n, 256)]
        out = drv.step([(r, 1) for r in range(n)], temperatures=T, top_ks=K, top_ps=P, min_ps=Q, seeds=S,
                       return_logprobs=3 if step % 2 else -1)
        greedy = (T == 0) | (K == 1)
        t, k, p = torch.where(greedy, 0.0, T), torch.where(greedy | (K >= 256), 0, K), torch.where(greedy, 1.0, P)
        want = ops.sample(out.logits.cuda(), t.cuda(), k.cuda(), p.cuda(), S.cuda(), Q.cuda()).cpu()
        assert torch.equal(out.output_ids.view(-1), want), f"step {step}"
        if step % 2:
            ref = torch.log_softmax(out.logits, -1)
            torch.testing.assert_close(out.logprobs, ref.gather(1, want.view(-1, 1)).view(-1), atol=2e-5, rtol=2e-5)
    assert engine._cuda_graph_replays == before + 6, "per-request sampling steps must replay the graph"
    # Penalties run eagerly (comment in infer_engine.cpp): no replay, and the draw follows the reference.
    ids = torch.full((n, 4), -1)
    ids[:, 0] = torch.tensor([r[-1] for r in (q["tokens"] for q in drv.reqs)])
    T, K, P, Q, S = [t.cpu() for t in rand_params(n, 256)]
    T = torch.full((n,), 1.0)
    rep = torch.full((n,), 1.5)
    replays = engine._cuda_graph_replays
    out = drv.step([(r, 1) for r in range(n)], temperatures=T, top_ps=P, min_ps=Q, seeds=S, top_ks=torch.zeros(n, dtype=torch.long),
                   repetition_penalties=rep, prompt_token_ids=ids, output_token_ids=ids)
    assert engine._cuda_graph_replays == replays
    pen = ref_penalties(out.logits, ids, ids, rep, torch.zeros(n), torch.zeros(n))
    want = ops.sample(pen.cuda(), T.cuda(), torch.zeros(n, dtype=torch.long, device="cuda"), P.cuda(), S.cuda(),
                      Q.cuda()).cpu()
    assert torch.equal(out.output_ids.view(-1), want)
