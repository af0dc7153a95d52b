"""CUDA only: Qwen3 (q/k RMSNorm before RoPE, free head_dim) on the CUDA engine vs transformers' Qwen3ForCausalLM,
static and paged caches, with decode steps replayed from CUDA graphs (replays counted, logits at every step
within the bound of HF's fp32 forward) — the CUDA-graph leg of the Qwen3 model family."""
import pytest
import torch

from engine_utils import PagedDriver, check_sequence, engine_config, paged_config, run_static
from infinilm_torch.lib import _infinilm
from test_qwen3 import make_qwen3

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
STEPS = 24
# head_dim != hidden / heads; CUDA attention kernels serve head_dim 64 and 128.
SHAPES = {
    "gqa_untied_d64": dict(hidden=96, heads=4, kv_heads=2, head_dim=64, inter=160, vocab=211),
    "gqa_tied_d128": dict(hidden=80, heads=4, kv_heads=1, head_dim=128, inter=144, vocab=173, tied=True),
}


def _engine(model, cache_config, graphs):
    engine = _infinilm.InferEngine(engine_config(model.config, torch.float32), device_type="cuda",
                                   cache_config=cache_config)
    for name, t in model.state_dict().items():
        engine.load_param(name, t.cuda())
    engine.enable_cuda_graphs(graphs)
    return engine


@pytest.mark.parametrize("shape", list(SHAPES))
def test_qwen3_cuda_static_graphs_match_hf(shape):
    torch.manual_seed(0)
    model = make_qwen3(**SHAPES[shape])
    prompts = [torch.randint(0, model.config.vocab_size, (n,)).tolist() for n in (13, 7, 10)]
    cc = _infinilm.StaticKVCacheConfig(len(prompts), 96)
    graphed = _engine(model, cc, True)
    seqs_g, logits_g = run_static(graphed, prompts, STEPS)
    assert graphed._cuda_graph_replays >= STEPS - 1, "decode steps did not replay CUDA graphs"
    for p, s, lg in zip(prompts, seqs_g, logits_g):
        # TF32-free fp32 on the GPU: a looser bound than the CPU's 1e-4 of the logit scale.
        scale = max(x.abs().max().item() for x in lg)
        check_sequence(model, len(p), s, [x.cpu() for x in lg], bound=2e-3 * scale + 1e-3, min_distinct=2)


@pytest.mark.parametrize("shape", list(SHAPES))
def test_qwen3_cuda_paged_graphs_match_hf(shape):
    torch.manual_seed(1)
    model = make_qwen3(**SHAPES[shape])
    prompts = [torch.randint(0, model.config.vocab_size, (n,)).tolist() for n in (19, 6)]
    engine = _engine(model, paged_config(model, 48, 8), True)
    d = PagedDriver(engine, prompts, 48, 8)
    d.step([(0, 12), (1, len(prompts[1]))])  # chunked prefill mixed with a decode
    d.step([(1, 1), (0, len(prompts[0]) - 12)])
    for _ in range(STEPS):
        d.step([(i, 1) for i in range(len(prompts))])
    assert engine._cuda_graph_replays >= STEPS - 1, "paged decode steps did not replay CUDA graphs"
    for q in d.reqs:
        scale = max(x.abs().max().item() for x in q["logits"])
        check_sequence(model, q["prompt"], q["tokens"], [x.cpu() for x in q["logits"]],
                       bound=2e-3 * scale + 1e-3, min_distinct=1)
