"""CUDA only: prefill and mixed steps (prompts, chunks, decodes beside them) replayed from CUDA graphs under
default (INFINILM_CUDA_GRAPHS_MIXED=0 turns them off), padded to their graph shape, against the eager engine on the same inputs.

Agreement is to rounding, not bitwise: a padded step runs its matrix products on more rows (16 -> 64, ...), and
cuBLAS may pick another kernel for another row count, with another reduction order. Attention, norms and rope
compute each real token exactly as the eager step does. Tokens must agree wherever the eager logits are not a
near-tie; a wrong slot, table or padding moves logits by about their whole scale.

``INFINILM_ENGINE_TEST_DEVICE=cpu`` runs the file on the CPU engine (tests/test_engine.py does, in CI): the
"graph" engine then runs the padded inputs eagerly (INFINILM_EAGER_STATIC_STEPS=1 around its calls), whose count
must equal the replays the GPU run expects, so the plans' shapes are checked before a GPU runs them.
"""
import contextlib
import os

import pytest
import torch

from engine_utils import EnvEngine, Input, PagedDriver, engine_config, make_hf, paged_config
from infinilm_torch.lib import _infinilm

DEV = os.environ.get("INFINILM_ENGINE_TEST_DEVICE", "cuda")
pytestmark = pytest.mark.skipif(DEV == "cuda" and not torch.cuda.is_available(), reason="needs a CUDA device")
CFG = dict(heads=4, kv_heads=2, hidden=256, head_dim=64, inter=256)
REL = {torch.float32: 1e-3, torch.bfloat16: 6e-2}


def _engine(model, dtype, cache_config):
    engine = _infinilm.InferEngine(engine_config(model.config, dtype), device_type=DEV, cache_config=cache_config)
    for name, t in model.state_dict().items():
        engine.load_param(name, t.to(DEV))
    return engine


@contextlib.contextmanager
def _as_graph(monkeypatch):
    """Around the graph engine's calls: on the CPU its steps run on the padded inputs a graph would replay."""
    with monkeypatch.context() as m:
        if DEV == "cpu" and os.environ.get("INFINILM_CUDA_GRAPHS_MIXED") != "0":
            m.setenv("INFINILM_EAGER_STATIC_STEPS", "1")
        yield


def _served(engine):
    """Steps a graph served (CUDA), or that ran on a graph's padded inputs (the CPU dry run)."""
    return engine._cuda_graph_replays if DEV != "cpu" else engine._eager_static_steps


def _pair(dtype, num_blocks=96, block_size=16, max_pos=1024):
    model = make_hf(dtype=dtype, max_pos=max_pos, **CFG)
    cc = paged_config(model, num_blocks, block_size, dtype)
    graph, eager = _engine(model, dtype, cc), _engine(model, dtype, cc)
    eager.enable_cuda_graphs(False)
    return graph, eager


def _agree(g, e, what, dtype):
    scale = e.logits.abs().max().item()
    bound = REL[dtype] * scale
    err = (g.logits - e.logits).abs().max().item()
    assert err <= bound, f"{what}: logits differ by {err} (bound {bound})"
    top2 = e.logits.topk(2, dim=-1).values
    clear = (top2[:, 0] - top2[:, 1]) > 2 * bound
    assert torch.equal(g.output_ids[clear], e.output_ids[clear]), f"{what}: tokens differ away from near-ties"


class _Pair(PagedDriver):
    def __init__(self, graph, eager, prompts, num_blocks, block_size, dtype, monkeypatch):
        super().__init__(eager, prompts, num_blocks, block_size)
        self.graph, self.dtype, self.mp = graph, dtype, monkeypatch

    def step(self, plan, **overrides):
        args = self.inputs(plan, **overrides)
        out = self.engine.forward(Input(**args))
        with _as_graph(self.mp):
            g = self.graph.forward(Input(**args))
        _agree(g, out, f"plan {plan}", self.dtype)
        self.advance(plan, out)
        return out


def _prompts(lengths):
    return [torch.randint(0, 256, (n,)).tolist() for n in lengths]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_mixed_graphs_join_leave(monkeypatch, dtype):
    monkeypatch.setenv("INFINILM_CUDA_GRAPHS_MIXED", "1")
    graph, eager = _pair(dtype)
    d = _Pair(graph, eager, _prompts([70, 90, 37, 101, 12, 600]), 96, 16, dtype, monkeypatch)
    d.step([(0, 70)])                          # prefill: 70 -> 128 tokens, 1 -> 2 requests: graph 1
    d.step([(0, 1), (1, 90)])                  # mixed: 91 -> 128, 2 -> 4: graph 2
    for _ in range(4):
        d.step([(0, 1), (1, 1)])               # decode n = 2: graph 3
    d.step([(0, 1), (1, 1), (2, 37)])          # 39 -> 64, 3 -> 4: graph 4
    d.step([(0, 1), (1, 1), (2, 1), (3, 61)])  # 64 tokens, no padding request: graph 4 again
    d.step([(0, 1), (1, 1), (2, 1), (3, 40), (4, 12)])  # 55 -> 64, 5 + 1 -> 8: graph 5
    for _ in range(4):
        d.step([(4, 1), (3, 1), (2, 1), (1, 1), (0, 1)])  # decode n = 5: graph 6
    d.step([(1, 1), (5, 511)])                 # 512 tokens, the largest graphed step: graph 7
    d.step([(1, 1), (5, 89)])                  # 90 -> 128, 2 + 1 -> 4, sequences past 512: graph 8
    for _ in range(4):
        d.step([(5, 1), (1, 1)])               # decode n = 2 in the 1024 bucket: graph 9
    assert _served(graph) == 19 and _served(eager) == 0
    if DEV != "cpu":
        assert graph._num_cuda_graphs == 9


def test_mixed_graphs_off_with_0_and_large_steps_eager(monkeypatch):
    monkeypatch.setenv("INFINILM_CUDA_GRAPHS_MIXED", "0")
    graph, eager = _pair(torch.bfloat16)
    d = _Pair(graph, eager, _prompts([70, 600, 20]), 96, 16, torch.bfloat16, monkeypatch)
    d.step([(0, 70)])
    assert graph._cuda_graph_replays == 0 and graph._eager_static_steps == 0
    d.step([(0, 1)])
    assert graph._cuda_graph_replays == (0 if DEV == "cpu" else 1)
    monkeypatch.delenv("INFINILM_CUDA_GRAPHS_MIXED")  # the default: mixed steps replay graphs
    before = _served(graph)
    d.step([(0, 1), (1, 600)])  # 601 tokens: more than any graph takes
    assert _served(graph) == before
    d.step([(0, 1), (1, 1)])
    assert _served(graph) == before + 1
    d.step([(0, 1), (1, 1), (2, 20)])  # a mixed step of 22 tokens: padded to 32, replayed
    assert _served(graph) == before + 2


def test_mixed_graphs_sampling_and_prev_output(monkeypatch):
    """Per-row seeds and filters beside padded rows; ids fed on the device from prev_output into a padded
    mixed step (their input_ids wrong on purpose), non-blocking as the front end runs it."""
    monkeypatch.setenv("INFINILM_CUDA_GRAPHS_MIXED", "1")
    graph, eager = _pair(torch.float32)
    d = _Pair(graph, eager, _prompts([20, 9, 14, 7]), 96, 16, torch.float32, monkeypatch)
    sampling = dict(temperatures=torch.tensor([0.9, 0.0, 1.3]), top_ks=torch.tensor([20, 0, 0]),
                    top_ps=torch.tensor([1.0, 1.0, 0.8]), seeds=torch.tensor([11, 12, 13]))
    plan = [(0, 20), (1, 9), (2, 14)]
    args = dict(d.build(plan), return_logits=True, **sampling)
    e = eager.forward(Input(**args))
    with _as_graph(monkeypatch):
        g = graph.forward(Input(**args))
    assert torch.equal(g.output_ids, e.output_ids), "seeded draws differ"
    d.advance(plan, e)
    args = d.inputs([(0, 1), (1, 1), (2, 1), (3, 7)])
    wrong = args["input_ids"].clone()
    wrong[0, :3] = (wrong[0, :3] + 1) % 256
    index = torch.tensor([[0, 1, 2] + [-1] * 7])
    with _as_graph(monkeypatch):
        g2 = graph.forward(Input(**dict(args, input_ids=wrong, prev_output=g, prev_token_index=index,
                                        non_blocking=True)))
    e2 = eager.forward(Input(**args))
    g2.wait()
    _agree(g2, e2, "mixed step from prev_output", torch.float32)
    assert _served(graph) == 2


def test_static_inputs_run_eagerly_on_the_device(monkeypatch):
    """The padded static inputs themselves, eagerly on the engine's device (INFINILM_EAGER_STATIC_STEPS=1, no
    graph), against the unpadded eager engine (the variable is read per call: set for one engine only)."""
    padded, eager = _pair(torch.bfloat16)
    padded.enable_cuda_graphs(False)
    d = _Pair(EnvEngine(padded, monkeypatch, INFINILM_EAGER_STATIC_STEPS="1"), eager, _prompts([70, 33, 5]), 96, 16,
              torch.bfloat16, monkeypatch)
    d.step([(0, 70), (1, 33)])
    d.step([(0, 1), (1, 1), (2, 5)])
    for _ in range(3):
        d.step([(0, 1), (1, 1), (2, 1)])
    assert padded._eager_static_steps == 5 and padded._cuda_graph_replays == 0
    assert eager._eager_static_steps == 0
