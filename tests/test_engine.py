"""InferEngine vs HF transformers on tiny random Llama/Qwen2 models: logits at every step and greedy tokens."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from engine_utils import PagedDriver, check_sequence, hf_logits, make_engine, make_hf, paged_config, run_static

LLAMA3 = dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
              original_max_position_embeddings=64)

CONFIGS = {
    "mha_d64_untied": dict(),
    "gqa_d128_tied_llama3": dict(heads=4, kv_heads=2, head_dim=128, tied=True, rope_scaling=LLAMA3),
    "gqa_d64_llama_bias": dict(heads=8, kv_heads=2, hidden=128, head_dim=64, bias=True),
    "qwen2_gqa_bias": dict(model_type="qwen2", heads=4, kv_heads=1, hidden=128, head_dim=64, tied=True),
    "gqa_eps1e-2_mlp_bias": dict(heads=4, kv_heads=2, eps=1e-2, bias=True, mlp_bias=True),  # eps matters here
}
STEPS = 32


@pytest.mark.parametrize("name", list(CONFIGS))
def test_static_batch_matches_hf(name):
    model = make_hf(**CONFIGS[name])
    engine = make_engine(model, cache_config=_static(3, 128))
    prompts = [torch.randint(0, 256, (n,)).tolist() for n in (5, 11, 2)]
    seqs, logits = run_static(engine, prompts, STEPS)
    for p, s, lg in zip(prompts, seqs, logits):
        check_sequence(model, len(p), s, lg)


def test_static_greedy_equals_hf_generate():
    model = make_hf(heads=4, kv_heads=2)
    engine = make_engine(model)
    prompt = torch.randint(0, 256, (7,)).tolist()
    seqs, logits = run_static(engine, [prompt], STEPS)
    check_sequence(model, len(prompt), seqs[0], logits[0])
    with torch.no_grad():
        ids = torch.tensor([prompt])  # an explicit mask: else generate masks prompt tokens equal to pad_token_id
        hf = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=STEPS + 1, do_sample=False,
                            eos_token_id=None, pad_token_id=0)[0].tolist()
    # Equal to HF's own greedy path up to its first near-tie (fp32 summation order may flip a tie; the engine's
    # path is checked against HF's logits above either way).
    ref = hf_logits(model, hf[:-1])[len(prompt) - 1 :]
    bound = 1e-4 * ref.abs().max().item() + 1e-4
    for i, (a, b) in enumerate(zip(seqs[0][len(prompt) :], hf[len(prompt) :])):
        if a != b:
            gap = (ref[i, a] - ref[i, b]).abs().item()
            assert gap <= 2 * bound, f"token {i}: {a} != HF's {b}, logits {gap} apart (> {2 * bound})"
            break
    assert seqs[0][: len(prompt)] == hf[: len(prompt)] and len(seqs[0]) == len(hf)


@pytest.mark.parametrize("block_size", [16, 32])
@pytest.mark.parametrize("name", ["mha_d64_untied", "gqa_d128_tied_llama3", "qwen2_gqa_bias"])
def test_paged_mixed_steps_match_hf(name, block_size):
    model = make_hf(**CONFIGS[name])
    num_blocks = 40
    engine = make_engine(model, cache_config=paged_config(model, num_blocks, block_size))
    assert engine.is_paged and engine.num_blocks == num_blocks and engine.block_size == block_size
    prompts = [torch.randint(0, 256, (n,)).tolist() for n in (20, 7, 37)]
    d = PagedDriver(engine, prompts, num_blocks, block_size)
    d.step([(0, 20), (1, 7)])              # two prefills
    d.step([(0, 1), (2, 25)])              # a decode beside a first prefill chunk (request 1 idles)
    d.step([(1, 1), (2, 12), (0, 1)])      # the chunk with a cached prefix, between two decodes
    for _ in range(STEPS):
        d.step([(0, 1), (1, 1), (2, 1)])   # pure decode
    for q in d.reqs:
        check_sequence(model, q["prompt"], q["tokens"], q["logits"])


@pytest.mark.parametrize("cache", ["static", "paged"])
def test_bf16_within_twice_hf_bf16_error(cache):
    """bf16 engine vs an fp32 reference on the same bf16-rounded weights: its error is at most about twice
    that of HF transformers running in bf16 (the FlashAttention rule)."""
    model = make_hf(heads=4, kv_heads=2, hidden=128, head_dim=64, bias=True, dtype=torch.bfloat16)
    ref32 = make_hf(heads=4, kv_heads=2, hidden=128, head_dim=64, bias=True)
    ref32.load_state_dict({k: v.float() for k, v in model.state_dict().items()})
    prompts = [torch.randint(0, 256, (n,)).tolist() for n in (9, 4)]
    if cache == "static":
        engine = make_engine(model, torch.bfloat16, _static(2, 96))
        seqs, logits = run_static(engine, prompts, STEPS)
    else:
        engine = make_engine(model, torch.bfloat16, paged_config(model, 16, 16, torch.bfloat16))
        d = PagedDriver(engine, prompts, 16, 16)
        d.step([(0, 9), (1, 4)])
        for _ in range(STEPS):
            d.step([(0, 1), (1, 1)])
        seqs, logits = [q["tokens"] for q in d.reqs], [q["logits"] for q in d.reqs]
    for p, s, lg in zip(prompts, seqs, logits):
        ref = hf_logits(ref32, s[:-1])[len(p) - 1 :]
        hf_err = (hf_logits(model, s[:-1])[len(p) - 1 :] - ref).abs().max().item()
        bound = 2 * hf_err + 1e-2 * ref.abs().max().item()
        err = check_sequence(model, len(p), s, lg, ref_model=ref32, bound=bound)
        assert err <= bound, f"bf16 engine error {err} vs HF bf16 error {hf_err}"


def _static(batch, length):
    from infinilm_torch.lib import _infinilm

    return _infinilm.StaticKVCacheConfig(max_batch_size=batch, max_cache_len=length)


@pytest.mark.parametrize("cache", ["static", "paged"])
def test_long_context_split_decode_matches_hf(cache):
    """Contexts of 600+ tokens with more threads than (request, kv head) items: the CPU decode splits each
    context into ranges and merges them; every step's logits must still be HF's."""
    from infinilm_torch.lib import _infinilm

    model = make_hf(heads=4, kv_heads=2, max_pos=1024)
    prompts = [torch.randint(0, 256, (n,)).tolist() for n in (700, 555)]
    threads = torch.get_num_threads()
    torch.set_num_threads(16)  # the engine's rank thread takes its thread count at construction
    try:
        if cache == "static":
            engine = make_engine(model, cache_config=_infinilm.StaticKVCacheConfig(2, 1024))
            seqs, logits = run_static(engine, prompts, 12)
        else:
            engine = make_engine(model, cache_config=paged_config(model, 96, 16))
            d = PagedDriver(engine, prompts, 96, 16)
            d.step([(0, 700), (1, 555)])
            for _ in range(12):
                d.step([(0, 1), (1, 1)])
            seqs, logits = [q["tokens"] for q in d.reqs], [q["logits"] for q in d.reqs]
    finally:
        torch.set_num_threads(threads)
    for p, s, lg in zip(prompts, seqs, logits):
        check_sequence(model, len(p), s, lg, min_distinct=2)


@pytest.mark.skipif(torch.cuda.is_available(), reason="with a GPU these files run for real")
def test_cuda_engine_files_dry_run_on_cpu():
    """The CUDA engine test files' logic on the CPU engine (INFINILM_ENGINE_TEST_DEVICE=cpu): what the GPU
    run will execute is at least known to run and pass on the CPU kernels."""
    here = Path(__file__).resolve().parent
    env = dict(os.environ, INFINILM_ENGINE_TEST_DEVICE="cpu")
    files = [str(here / f) for f in ("test_engine_cuda.py", "test_engine_cuda_graph_fallbacks.py",
                                     "test_engine_cuda_graphs_mixed.py")]
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-o", "addopts=", "-p", "no:cacheprovider", *files], env=env,
                          cwd=here.parent, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert " passed" in proc.stdout and "skipped" not in proc.stdout, proc.stdout[-2000:]
