"""CUDA only: the L2 prefetch of decode steps' weights (INFINILM_L2_PREFETCH, csrc/ops/ops.h) changes no result.

The prefetch kernels (opt-in) run on a side stream forked after each layer's QKV product (mode 1) and after
its down projection (mode 2), joined at the end of the forward; inside a CUDA-graph capture they are a branch
of the graph. Each mode, eager and replayed, must give the engine without prefetch's tokens and logits bit for
bit (the same kernels run on the same inputs), and graphs must still be captured and replayed with the forks.
"""
import pytest
import torch

from engine_utils import EnvEngine, Input, make_hf, paged_config
from infinilm_torch.lib import _infinilm
from test_engine_cuda_graphs import CFG, _engine, _PairDriver, _prompts

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.mark.parametrize("graphs", [True, False])
@pytest.mark.parametrize("mode,budget_mb", [("1", "24"), ("2", "24"), ("1", "0"), ("2", "1")])
def test_prefetch_changes_no_result_paged(monkeypatch, graphs, mode, budget_mb):
    dtype = torch.bfloat16
    model = make_hf(dtype=dtype, max_pos=512, **CFG)
    cc = paged_config(model, 96, 16, dtype)
    base = EnvEngine(_engine(model, dtype, cc, graphs), monkeypatch, INFINILM_L2_PREFETCH="0")
    pre = EnvEngine(_engine(model, dtype, cc, graphs), monkeypatch, INFINILM_L2_PREFETCH=mode,
                    INFINILM_L2_PREFETCH_MB=budget_mb)
    d = _PairDriver(pre, base, _prompts([70, 90, 65]), 96, 16)  # every output compared bit for bit
    d.step([(0, 70)])
    d.step([(0, 1), (1, 90)])      # a mixed step of 91 tokens: more than 64, no prefetch
    for _ in range(5):
        d.step([(0, 1), (1, 1)])   # decode steps: prefetched
    d.step([(0, 1), (1, 1), (2, 40)])  # a mixed step of 42 tokens: prefetched
    for _ in range(5):
        d.step([(2, 1), (1, 1), (0, 1)])
    if graphs:
        assert pre._cuda_graph_replays == base._cuda_graph_replays > 0


def test_prefetch_changes_no_result_static_batch(monkeypatch):
    """A static cache of 4 rows, float32, graphs on: prefill then 12 decode steps, bit for bit."""
    dtype = torch.float32
    model = make_hf(dtype=dtype, max_pos=256, **CFG)
    cc = _infinilm.StaticKVCacheConfig(4, 256)
    base = EnvEngine(_engine(model, dtype, cc, True), monkeypatch, INFINILM_L2_PREFETCH="0")
    pre = EnvEngine(_engine(model, dtype, cc, True), monkeypatch, INFINILM_L2_PREFETCH="2")
    prompts = _prompts([66, 80, 71, 90])
    S = max(map(len, prompts))
    ids = torch.zeros(4, S, dtype=torch.long)
    for b, p in enumerate(prompts):
        ids[b, : len(p)] = torch.tensor(p)
    lens = torch.tensor([len(p) for p in prompts])
    kw = dict(input_ids=ids, input_lengths=lens, cache_lengths=torch.zeros(4, dtype=torch.long), temperature=0.0,
              return_logits=True)
    for step in range(13):
        a, b = base.forward(Input(**kw)), pre.forward(Input(**kw))
        assert torch.equal(a.output_ids, b.output_ids) and torch.equal(a.logits, b.logits), f"step {step}"
        kw = dict(input_ids=a.output_ids.view(4, 1), cache_lengths=lens + step, temperature=0.0, return_logits=True)
    assert pre._cuda_graph_replays == base._cuda_graph_replays >= 11
