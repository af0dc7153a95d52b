"""CUDA only: decode steps replayed from CUDA graphs equal the eager engine's bit for bit (static and paged
caches, joins and leaves, seeded sampling), and the switch, reset_cache and hooks send steps down the right path.

Bit-exact is the expected result here: the graph runs the same kernels on the same inputs, and the one launch
parameter it changes (attention's max_seq_len, the graph's length bucket instead of the step's longest
sequence) changes only how many split-K CTAs exit at once. With every sequence longer than 64 tokens both
plans use 64-token splits and the merge reads only the splits a row uses, so the reduction order is the same.
"""
import pytest
import torch

from engine_utils import PagedDriver, engine_config, make_hf, paged_config
from infinilm_torch.lib import _infinilm

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.fixture(autouse=True)
def _decode_graphs_only(monkeypatch):
    """These tests count and compare decode-graph replays: prefill and mixed steps stay eager here
    (tests/test_engine_cuda_graphs_mixed.py covers their graphs)."""
    monkeypatch.setenv("INFINILM_CUDA_GRAPHS_MIXED", "0")
Input = _infinilm.InferEngine.Input
CFG = dict(heads=4, kv_heads=2, hidden=256, head_dim=64, inter=256)
STEPS = 36


def _engine(model, dtype, cache_config, graphs):
    engine = _infinilm.InferEngine(engine_config(model.config, dtype), device_type="cuda", cache_config=cache_config)
    for name, t in model.state_dict().items():
        engine.load_param(name, t.cuda())
    engine.enable_cuda_graphs(graphs)
    assert engine.cuda_graphs == graphs
    return engine


def _pair(dtype=torch.bfloat16, cache="static", batch=4, num_blocks=64, block_size=16, max_pos=256):
    model = make_hf(dtype=dtype, max_pos=max_pos, **CFG)
    cc = (_infinilm.StaticKVCacheConfig(batch, max_pos) if cache == "static"
          else paged_config(model, num_blocks, block_size, dtype))
    return model, _engine(model, dtype, cc, True), _engine(model, dtype, cc, False)


def _same(graph_out, eager_out, what, rel=0.0):
    """rel == 0: bit-exact; else logits within rel x their scale (tokens may then differ at near-ties)."""
    if rel == 0:
        assert torch.equal(graph_out.output_ids, eager_out.output_ids), f"{what}: tokens differ"
    if eager_out.logits is None:
        assert graph_out.logits is None
        return
    diff = (graph_out.logits - eager_out.logits).abs().max().item()
    bound = rel * eager_out.logits.abs().max().item()
    assert diff <= bound and (rel > 0 or torch.equal(graph_out.logits, eager_out.logits)), \
        f"{what}: logits differ by up to {diff} (bound {bound})"


def _lockstep_static(graph, eager, prompts, steps, rel=0.0, **sampling):
    """Both engines get the same inputs each step (the eager engine's tokens); every output must agree."""
    B, S = len(prompts), max(len(p) for p in prompts)
    ids = torch.zeros(B, S, dtype=torch.long)
    for b, p in enumerate(prompts):
        ids[b, : len(p)] = torch.tensor(p)
    lens = torch.tensor([len(p) for p in prompts])
    args = dict(dict(temperature=0.0, return_logits=True), **sampling)
    first = dict(input_ids=ids, input_lengths=lens, cache_lengths=torch.zeros(B, dtype=torch.long), **args)
    out_e = eager.forward(Input(**first))
    _same(graph.forward(Input(**first)), out_e, "prefill")
    seqs = [list(p) + [int(out_e.output_ids[b, 0])] for b, p in enumerate(prompts)]
    for step in range(steps):
        kw = dict(input_ids=torch.tensor([[s[-1]] for s in seqs]),
                  cache_lengths=torch.tensor([len(s) - 1 for s in seqs]), **args)
        out_e = eager.forward(Input(**kw))
        _same(graph.forward(Input(**kw)), out_e, f"decode step {step}", rel)
        for b in range(B):
            seqs[b].append(int(out_e.output_ids[b, 0]))
    return seqs


class _PairDriver(PagedDriver):
    """PagedDriver over two engines fed identical inputs; the eager engine's tokens drive both."""

    def __init__(self, graph, eager, prompts, num_blocks, block_size):
        super().__init__(eager, prompts, num_blocks, block_size)
        self.graph = graph

    def step(self, plan, **overrides):
        args = self.inputs(plan, **overrides)
        out = self.engine.forward(Input(**args))
        _same(self.graph.forward(Input(**args)), out, f"plan {plan}")
        self.advance(plan, out)
        return out


def _prompts(lengths):
    # Longer than 64 tokens: see the module docstring.
    return [torch.randint(0, 256, (n,)).tolist() for n in lengths]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32, torch.float16])
def test_engine_cuda_graphs_static_equals_eager(dtype):
    _, graph, eager = _pair(dtype, "static", batch=3)
    seqs = _lockstep_static(graph, eager, _prompts([70, 83, 99]), STEPS)
    assert graph._cuda_graph_replays == STEPS and eager._cuda_graph_replays == 0
    assert graph._num_cuda_graphs == 1  # one request count, one length bucket
    assert len({t for s in seqs for t in s[-STEPS:]}) >= 4, "degenerate greedy path: the test would prove little"


def test_engine_cuda_graphs_static_batch_sizes():
    _, graph, eager = _pair(torch.bfloat16, "static", batch=4)
    for B in (1, 4, 2, 1):  # a graph per request count; the second batch-1 run replays the first's graph
        graph.reset_cache()
        eager.reset_cache()
        _lockstep_static(graph, eager, _prompts([67 + 5 * b for b in range(B)]), 8)
    assert graph._num_cuda_graphs == 3 and graph._cuda_graph_replays == 32


def test_engine_cuda_graphs_paged_join_leave():
    _, graph, eager = _pair(torch.bfloat16, "paged", num_blocks=64, block_size=16)
    d = _PairDriver(graph, eager, _prompts([70, 90, 75, 101, 66]), 64, 16)
    d.step([(0, 70), (1, 90)])
    for _ in range(8):
        d.step([(0, 1), (1, 1)])
    d.step([(0, 1), (2, 75), (1, 1)])  # a prefill joins: mixed step, eager on both
    for _ in range(8):
        d.step([(2, 1), (0, 1), (1, 1)])  # n = 3, rows in a new order
    d.step([(3, 101)])
    for _ in range(8):
        d.step([(1, 1), (3, 1)])  # request 0 and 2 left
    d.step([(4, 66)])
    for _ in range(10):
        d.step([(4, 1), (3, 1), (2, 1), (1, 1)])  # n = 4, request 2 back
    assert graph._cuda_graph_replays == 34 and eager._cuda_graph_replays == 0
    assert graph._num_cuda_graphs == 3  # n = 2, 3, 4 in one length bucket


def test_engine_cuda_graphs_length_buckets():
    _, graph, eager = _pair(torch.bfloat16, "paged", num_blocks=64, block_size=16, max_pos=1024)
    d = _PairDriver(graph, eager, _prompts([500]), 64, 16)
    d.step([(0, 500)])
    for _ in range(20):  # lengths 501..520 cross from the 512 bucket into the 1024 one
        d.step([(0, 1)])
    assert graph._num_cuda_graphs == 2 and graph._cuda_graph_replays == 20


def test_engine_cuda_graphs_other_split_plan_within_rounding():
    # 48 rows of 700..747 tokens: on a 132-SM GPU the eager steps (max_seq_len ~750) split attention into
    # 128-token parts, the graph (bucket 1024) into 192-token parts, so the fp32 reduction order differs and
    # agreement is to rounding only: one bf16 ulp (0.4%) in an attention output, carried through the layers of
    # a random net, measured up to 2.4% of the logit scale on an H100; a wrong split or block moves logits by
    # about the whole scale.
    _, graph, eager = _pair(torch.bfloat16, "static", batch=48, max_pos=1024)
    _lockstep_static(graph, eager, _prompts([700 + b for b in range(48)]), 8, rel=6e-2)
    assert graph._cuda_graph_replays == 8


def test_engine_cuda_graphs_seeded_sampling():
    _, graph, eager = _pair(torch.bfloat16, "static", batch=2)
    prompts = _prompts([70, 77])
    sampling = dict(temperature=1.0, top_k=50, top_p=0.9, seed=7)
    seqs = _lockstep_static(graph, eager, prompts, STEPS, **sampling)
    assert graph._cuda_graph_replays == STEPS
    graph.reset_cache()  # the same seed draws the same tokens again from the replayed graph
    eager.reset_cache()
    assert _lockstep_static(graph, eager, prompts, STEPS, **sampling) == seqs
    assert graph._cuda_graph_replays == 2 * STEPS


def test_engine_cuda_graphs_without_return_logits():
    _, graph, eager = _pair(torch.bfloat16, "static", batch=2)
    _lockstep_static(graph, eager, _prompts([70, 71]), 8, return_logits=False)
    assert graph._cuda_graph_replays == 8


def test_engine_cuda_graphs_switch_and_env(monkeypatch):
    model, graph, eager = _pair(torch.bfloat16, "static", batch=1)
    prompts = _prompts([72])
    _lockstep_static(graph, eager, prompts, 4)
    assert graph._num_cuda_graphs == 1
    graph.enable_cuda_graphs(False)  # frees the graphs; steps run eagerly
    assert not graph.cuda_graphs and graph._num_cuda_graphs == 0
    graph.reset_cache()
    eager.reset_cache()
    _lockstep_static(graph, eager, prompts, 4)
    assert graph._cuda_graph_replays == 4 and graph._num_cuda_graphs == 0
    monkeypatch.setenv("INFINILM_CUDA_GRAPHS", "0")
    off = _infinilm.InferEngine(engine_config(model.config, torch.bfloat16), device_type="cuda",
                                cache_config=_infinilm.StaticKVCacheConfig(1, 256))
    assert not off.cuda_graphs
    monkeypatch.setenv("INFINILM_CUDA_GRAPHS", "1")
    on = _infinilm.InferEngine(engine_config(model.config, torch.bfloat16), device_type="cuda",
                               cache_config=_infinilm.StaticKVCacheConfig(1, 256))
    assert on.cuda_graphs  # the default on CUDA


def test_engine_cuda_graphs_reset_cache_then_reuse():
    _, graph, eager = _pair(torch.bfloat16, "static", batch=2)
    prompts = _prompts([70, 80])
    first = _lockstep_static(graph, eager, prompts, 12)
    for cc in (None, _infinilm.StaticKVCacheConfig(2, 192), _infinilm.PagedKVCacheConfig(1 << 22, 16)):
        graph.reset_cache(cc)
        eager.reset_cache(cc)
        # None zeroes the cache in place (graphs kept); a new configuration reallocates it (graphs dropped).
        assert graph._num_cuda_graphs == (1 if cc is None else 0)
        if isinstance(cc, _infinilm.PagedKVCacheConfig):
            d = _PairDriver(graph, eager, prompts, graph.num_blocks, 16)
            d.step([(0, 70), (1, 80)])
            for _ in range(12):
                d.step([(0, 1), (1, 1)])
        else:
            seqs = _lockstep_static(graph, eager, prompts, 12)
            assert cc is not None or seqs == first  # the zeroed cache replays the same graph to the same tokens
    assert graph._cuda_graph_replays == 4 * 12


def test_engine_cuda_graphs_hooks_run_eagerly():
    _, graph, eager = _pair(torch.bfloat16, "static", batch=1)
    seen = []
    reg = _infinilm.HookRegistry()
    reg.register_hook("logits", lambda n, t, i: seen.append(t.clone()))
    graph.set_hook_registry(reg)
    prompts = _prompts([70])
    _lockstep_static(graph, eager, prompts, 6)
    assert len(seen) == 7 and graph._cuda_graph_replays == 0  # prefill + 6 decode steps, all eager
    reg.clear()  # an attached registry without hooks does not keep steps eager
    graph.reset_cache()
    eager.reset_cache()
    _lockstep_static(graph, eager, prompts, 6)
    assert len(seen) == 7 and graph._cuda_graph_replays == 6


def test_engine_cuda_graphs_weights_reloaded():
    model, graph, eager = _pair(torch.bfloat16, "static", batch=1)
    prompts = _prompts([70])
    _lockstep_static(graph, eager, prompts, 4)
    other = make_hf(dtype=torch.bfloat16, **CFG)
    for name, t in other.state_dict().items():
        graph.load_param(name, t.cuda())
        eager.load_param(name, t.cuda())
    assert graph._num_cuda_graphs == 0
    graph.reset_cache()
    eager.reset_cache()
    _lockstep_static(graph, eager, prompts, 4)
    assert graph._cuda_graph_replays == 8
