"""CUDA-graph fallbacks: steps no graph may serve (more requests than graphed, past the graph cap, after a failed
capture) run eagerly and still equal the eager engine's outputs bit for bit; graphed steps resume where allowed.

``INFINILM_ENGINE_TEST_DEVICE=cpu`` runs the same steps on the CPU engine (which never captures: every count
of graphs and replays is then 0), a dry run of the test logic on a machine without a GPU.
"""
import os

import pytest
import torch

from engine_utils import engine_config, make_hf
from infinilm_torch.lib import _infinilm
from test_engine_cuda_graphs import CFG, _lockstep_static, _prompts

DEV = os.environ.get("INFINILM_ENGINE_TEST_DEVICE", "cuda")
pytestmark = pytest.mark.skipif(DEV == "cuda" and not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.fixture(autouse=True)
def _decode_graphs_only(monkeypatch):
    """These tests count and compare decode-graph replays: prefill and mixed steps stay eager here
    (tests/test_engine_cuda_graphs_mixed.py covers their graphs)."""
    monkeypatch.setenv("INFINILM_CUDA_GRAPHS_MIXED", "0")
GPU = DEV == "cuda"
MAX_BATCH, MAX_GRAPHS = 64, 32  # DecodeGraphs::kMaxBatch, kMaxGraphs (csrc/engine/cuda_graphs.h)


def _engine(model, batch, graphs, max_pos=256):
    engine = _infinilm.InferEngine(engine_config(model.config, torch.bfloat16), device_type=DEV,
                                   cache_config=_infinilm.StaticKVCacheConfig(batch, max_pos))
    for name, t in model.state_dict().items():
        engine.load_param(name, t.to(DEV))
    engine.enable_cuda_graphs(graphs)
    assert engine.cuda_graphs == (graphs and GPU)
    return engine


def _pair(batch):
    model = make_hf(dtype=torch.bfloat16, **CFG)
    return _engine(model, batch, True), _engine(model, batch, False)


def _n(count):
    """What a graph counter reads: `count` on the GPU, 0 on the CPU dry run."""
    return count if GPU else 0


def _reset(*engines):
    for e in engines:
        e.reset_cache()


def test_more_requests_than_graphed_run_eagerly():
    graph, eager = _pair(MAX_BATCH + 1)
    _lockstep_static(graph, eager, _prompts([65 + b % 7 for b in range(MAX_BATCH + 1)]), 4)
    assert graph._cuda_graph_replays == 0 and graph._num_cuda_graphs == 0
    _reset(graph, eager)
    _lockstep_static(graph, eager, _prompts([65 + b % 7 for b in range(MAX_BATCH)]), 4)  # the largest graphed n
    assert graph._cuda_graph_replays == _n(4) and graph._num_cuda_graphs == _n(1)


def test_graph_cap_then_eager_then_existing_graphs_replay():
    graph, eager = _pair(MAX_GRAPHS + 2)
    for n in range(1, MAX_GRAPHS + 1):  # one graph per request count, all in the 512 length bucket
        _reset(graph, eager)
        _lockstep_static(graph, eager, _prompts([66 + b for b in range(n)]), 2)
    assert graph._num_cuda_graphs == _n(MAX_GRAPHS) and graph._cuda_graph_replays == _n(2 * MAX_GRAPHS)
    for n in (MAX_GRAPHS + 1, MAX_GRAPHS + 2):  # new shapes past the cap: eager, nothing captured
        _reset(graph, eager)
        _lockstep_static(graph, eager, _prompts([66 + b for b in range(n)]), 3)
    assert graph._num_cuda_graphs == _n(MAX_GRAPHS) and graph._cuda_graph_replays == _n(2 * MAX_GRAPHS)
    _reset(graph, eager)
    _lockstep_static(graph, eager, _prompts([70, 71, 72, 73, 74]), 3)  # n = 5 was captured: replays
    assert graph._cuda_graph_replays == _n(2 * MAX_GRAPHS + 3)


def test_failed_capture_falls_back_to_eager(monkeypatch):
    monkeypatch.setenv("INFINILM_TEST_FAIL_GRAPH_CAPTURE", "1")
    graph, eager = _pair(3)
    prompts = _prompts([70, 90, 66])
    first = _lockstep_static(graph, eager, prompts, 6)  # the failing step reruns eagerly: same outputs
    assert graph._num_cuda_graphs == 0 and graph._cuda_graph_replays == 0
    monkeypatch.delenv("INFINILM_TEST_FAIL_GRAPH_CAPTURE")
    _reset(graph, eager)
    assert _lockstep_static(graph, eager, prompts, 6) == first  # a failed engine stays eager
    assert graph._num_cuda_graphs == 0 and graph._cuda_graph_replays == 0
    fresh, other = _pair(3)  # the switch is per engine: a new one captures again
    _lockstep_static(fresh, other, prompts, 6)
    assert fresh._num_cuda_graphs == _n(1) and fresh._cuda_graph_replays == _n(6)


def test_sampled_steps_after_eager_fallback_match():
    """Seeded sampling across the switch between graphed (n <= 64) and eager (n = 65) steps."""
    graph, eager = _pair(MAX_BATCH + 1)
    sampling = dict(temperature=0.8, top_k=20, top_p=0.9, seed=11)
    for n in (MAX_BATCH + 1, 3, MAX_BATCH + 1):
        _reset(graph, eager)
        _lockstep_static(graph, eager, _prompts([66 + b % 5 for b in range(n)]), 3, **sampling)
    assert graph._cuda_graph_replays == _n(3) and graph._num_cuda_graphs == _n(1)
