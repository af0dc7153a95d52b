"""Mistral's sliding window through the engine: logits vs transformers' MistralForCausalLM (eager, the same
window) on prompts and decodes longer than the window, with the static and the paged cache; configs parse."""
import pytest
import torch
import transformers

from engine_utils import PagedDriver, check_sequence, engine_config, paged_config, run_static, spread_weights
from infinilm_torch.auto_config import parse_config
from infinilm_torch.lib import _infinilm

WINDOW = 8
STEPS = 14


def make_mistral(window=WINDOW, **shape):
    """A tiny Mistral (head_dim 16 unless `shape` overrides hidden_size / heads)."""
    dims = dict(hidden_size=64, num_attention_heads=4, num_key_value_heads=2) | shape
    cfg = transformers.MistralConfig(vocab_size=256, intermediate_size=128, num_hidden_layers=2,
                                     max_position_embeddings=256, rms_norm_eps=1e-5, rope_theta=10000.0,
                                     sliding_window=window, **dims)
    cfg._attn_implementation = "eager"
    cfg.attention_bias = False  # engine_utils.engine_config reads it (Mistral has no attention biases)
    return spread_weights(transformers.MistralForCausalLM(cfg).eval())


def make_engine(model, cache_config=None):
    c = engine_config(model.config, torch.float32)
    c.sliding_window = model.config.sliding_window or 0
    engine = _infinilm.InferEngine(c, device_type="cpu", cache_config=cache_config)
    for name, t in model.state_dict().items():
        engine.load_param(name, t)
    return engine


def test_window_changes_the_model():
    """The reference itself: past the window the windowed model's logits differ from full attention's."""
    model = make_mistral()
    full = make_mistral(window=None)
    full.load_state_dict(model.state_dict())
    tokens = torch.randint(0, 256, (1, 3 * WINDOW))
    with torch.no_grad():
        a, b = model(tokens).logits[0], full(tokens).logits[0]
    torch.testing.assert_close(a[:WINDOW], b[:WINDOW], atol=1e-5, rtol=1e-5)
    assert (a[WINDOW + 1 :] - b[WINDOW + 1 :]).abs().max() > 1e-2


def test_static_cache_matches_hf():
    model = make_mistral()
    engine = make_engine(model, _infinilm.StaticKVCacheConfig(2, 64))
    prompts = [torch.randint(0, 256, (21,)).tolist(), torch.randint(0, 256, (5,)).tolist()]
    seqs, logits = run_static(engine, prompts, STEPS)
    for p, s, lg in zip(prompts, seqs, logits):
        check_sequence(model, len(p), s, lg)


def test_paged_cache_matches_hf():
    """Chunked prefill across the window's edge, then decodes well past it, blocks of 4 (window = 2 blocks)."""
    model = make_mistral()
    engine = make_engine(model, paged_config(model, 40, 4))
    prompts = [torch.randint(0, 256, (19,)).tolist(), torch.randint(0, 256, (6,)).tolist()]
    d = PagedDriver(engine, prompts, 40, 4)
    d.step([(0, 11), (1, 6)])
    d.step([(0, 8), (1, 1)])  # the second chunk has a cached prefix longer than the window
    for _ in range(STEPS):
        d.step([(0, 1), (1, 1)])
    for q in d.reqs:
        check_sequence(model, q["prompt"], q["tokens"], q["logits"])


def test_config_carries_the_window():
    d = dict(model_type="mistral", vocab_size=32, hidden_size=64, intermediate_size=128, num_hidden_layers=1,
             num_attention_heads=4, max_position_embeddings=4096, sliding_window=1024)
    assert parse_config(d)["sliding_window"] == 1024
    assert parse_config({**d, "sliding_window": 4096})["sliding_window"] == 0  # covers the whole context
    assert parse_config({**d, "sliding_window": None})["sliding_window"] == 0
    cfg = _infinilm.LlamaConfig()
    cfg.sliding_window = -3
    with pytest.raises(ValueError, match="sliding_window"):
        cfg.validate()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("cache", ["static", "paged"])
def test_cuda_graph_decode_with_window(cache):
    """The engine on CUDA with CUDA graphs on: decode steps replayed from graphs past the window match HF."""
    model = make_mistral(hidden_size=128, num_attention_heads=2, num_key_value_heads=1)  # head_dim 64: a CUDA size
    c = engine_config(model.config, torch.float32)
    c.sliding_window = WINDOW
    cc = _infinilm.StaticKVCacheConfig(2, 64) if cache == "static" else paged_config(model, 40, 4)
    engine = _infinilm.InferEngine(c, device_type="cuda", cache_config=cc)
    for name, t in model.state_dict().items():
        engine.load_param(name, t.cuda())
    engine.enable_cuda_graphs(True)
    prompts = [torch.randint(0, 256, (13,)).tolist(), torch.randint(0, 256, (4,)).tolist()]
    if cache == "static":
        seqs, logits = run_static(engine, prompts, STEPS)
    else:
        d = PagedDriver(engine, prompts, 40, 4)
        d.step([(0, 13), (1, 4)])
        for _ in range(STEPS):
            d.step([(0, 1), (1, 1)])
        seqs, logits = [q["tokens"] for q in d.reqs], [q["logits"] for q in d.reqs]
    for p, s, lg in zip(prompts, seqs, logits):
        with torch.no_grad():
            scale = model(torch.tensor([s[:-1]])).logits.abs().max().item()
        # fp32 on the GPU (other summation orders) vs HF on the CPU
        check_sequence(model, len(p), s, [x.float().cpu() for x in lg], bound=1e-3 * scale + 1e-3)
