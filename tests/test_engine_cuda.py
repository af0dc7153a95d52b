"""InferEngine on CUDA vs HF transformers on the same bf16 weights: logits within the FlashAttention-rule bound."""
import pytest
import torch

from engine_utils import PagedDriver, check_sequence, engine_config, hf_logits, make_hf, paged_config, run_static
from infinilm_torch.lib import _infinilm

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
STEPS = 32


def _engine(model, dtype, cache_config):
    engine = _infinilm.InferEngine(engine_config(model.config, dtype), device_type="cuda", cache_config=cache_config)
    for name, t in model.state_dict().items():
        engine.load_param(name, t.cuda())
    return engine


@torch.no_grad()
def _hf_cuda_logits(model, tokens):
    return model(torch.tensor([tokens], device="cuda")).logits[0].float().cpu()


@pytest.mark.parametrize("cache", ["static", "paged"])
@pytest.mark.parametrize("cfg", [dict(heads=4, kv_heads=2, hidden=256, head_dim=64, bias=True),
                                 dict(heads=8, kv_heads=2, hidden=256, head_dim=128)])
def test_engine_cuda_bf16_matches_hf(cache, cfg):
    model = make_hf(dtype=torch.bfloat16, **cfg)
    ref32 = make_hf(**cfg)
    ref32.load_state_dict({k: v.float() for k, v in model.state_dict().items()})
    hf_gpu = model.cuda()
    prompts = [torch.randint(0, 256, (n,)).tolist() for n in (19, 6)]
    if cache == "static":
        engine = _engine(model, torch.bfloat16, _infinilm.StaticKVCacheConfig(2, 128))
        seqs, logits = run_static(engine, prompts, STEPS)
    else:
        engine = _engine(model, torch.bfloat16, paged_config(model, 24, 16, torch.bfloat16))
        d = PagedDriver(engine, prompts, 24, 16)
        d.step([(0, 19), (1, 6)])
        for _ in range(STEPS):
            d.step([(0, 1), (1, 1)])
        seqs, logits = [q["tokens"] for q in d.reqs], [q["logits"] for q in d.reqs]
    for p, s, lg in zip(prompts, seqs, logits):
        ref = hf_logits(ref32, s[:-1])[len(p) - 1 :]
        hf_err = (_hf_cuda_logits(hf_gpu, s[:-1])[len(p) - 1 :] - ref).abs().max().item()
        bound = 2 * hf_err + 1e-2 * ref.abs().max().item()
        check_sequence(ref32, len(p), s, [x.float().cpu() for x in lg], bound=bound)


def test_engine_cuda_fp32_greedy_equals_hf():
    model = make_hf(heads=4, kv_heads=2, hidden=128, head_dim=64)
    engine = _engine(model, torch.float32, _infinilm.StaticKVCacheConfig(1, 128))
    prompt = torch.randint(0, 256, (9,)).tolist()
    seqs, logits = run_static(engine, [prompt], STEPS)
    check_sequence(model, len(prompt), seqs[0], [x.cpu() for x in logits[0]], bound=1e-3 * 50)
