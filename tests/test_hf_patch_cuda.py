"""HF transformers patching on CUDA: patched vs unpatched tiny Llama/Qwen2/Mistral/Qwen3 with head size 64 (the
CUDA attention kernels' sizes), fp32 and bf16, both caches, sampling, the batch x cache x compile-mode matrix
(eager, generate's compile, "reduce-overhead" CUDA graphs; one model reused across batch sizes, left padding
included), and an engine built from the HF model on the GPU.

``INFINILM_HF_TEST_DEVICE=cpu`` runs the same file on the CPU kernels with the CUDA head-size limits and a
smaller matrix (aot_eager for the compiled modes): a dry run of the test logic on a machine without a GPU, part
of the default test run through tests/test_hf_patch_matrix.py.
"""
import copy
import os

import pytest
import torch

transformers = pytest.importorskip("transformers")

import infinilm_torch  # noqa: E402
from infinilm_torch.hf import attention  # noqa: E402
from test_hf_patch import (  # noqa: E402,F401
    COMMON, FAMILIES, GREEDY, assert_bf16_rule, assert_no_breaks_from_us, calls, make_model)
from test_hf_patch_matrix import family_model, padded_prompt  # noqa: E402

DEV = os.environ.get("INFINILM_HF_TEST_DEVICE", "cuda")
pytestmark = pytest.mark.skipif(DEV == "cuda" and not torch.cuda.is_available(), reason="needs a CUDA GPU")
SHAPE = dict(hidden_size=256, intermediate_size=384)  # 4 heads of 64, 2 kv heads
LAYERS = COMMON["num_hidden_layers"]


@pytest.fixture(autouse=True)
def cuda_policy(monkeypatch):
    """On a CPU dry run, hold the kernels to the head sizes CUDA has."""
    if DEV == "cpu":
        monkeypatch.setitem(attention.LAYOUT, "cpu", attention.LAYOUT["cuda"])
        monkeypatch.setitem(attention.HEAD_DIMS, "cpu", attention.HEAD_DIMS["cuda"])


def gpu_model(family, dtype=torch.float32, **overrides):
    if family == "qwen3":
        overrides = {"head_dim": 64, **overrides}
    return family_model(family, torch.float32, **{**SHAPE, **overrides}).to(device=DEV, dtype=dtype)


def gpu_pair(family, dtype=torch.float32, **overrides):
    ref = gpu_model(family, dtype, **overrides)
    return ref, infinilm_torch.patch(copy.deepcopy(ref))


def gpu_prompt(batch=2, length=8):
    ids = torch.randint(3, COMMON["vocab_size"], (batch, length), device=DEV)
    return ids, torch.ones_like(ids)


def rel_tol(ref, scale):
    return dict(atol=scale * ref.abs().max().item(), rtol=scale)


@pytest.mark.parametrize("family", FAMILIES)
def test_cuda_logits_fp32(family, calls):
    ref, model = gpu_pair(family)
    ids, _ = gpu_prompt(3, 24)
    with torch.no_grad():
        want, got = ref(ids).logits, model(ids).logits
    torch.testing.assert_close(got, want, **rel_tol(want, 2e-4))
    assert calls["prefill"] == LAYERS and calls["sdpa"] == 0


@pytest.mark.parametrize("family", FAMILIES)
def test_cuda_logits_bf16(family):
    assert_bf16_rule(gpu_model(family), gpu_prompt(4, 32)[0])


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("cache", ["dynamic", "static"])
def test_cuda_greedy_32_steps(family, cache, calls):
    ref, model = gpu_pair(family)
    ids, mask = gpu_prompt(2, 8)
    extra = {} if cache == "dynamic" else {"cache_implementation": "static"}
    want = ref.generate(ids, attention_mask=mask, **GREEDY)
    got = model.generate(ids, attention_mask=mask, **GREEDY, **extra)
    assert torch.equal(got, want)
    # every step on our kernels: dynamic cache lengths 9..39, any static cache length (one block per row)
    assert calls == {"prefill": LAYERS, "decode": 31 * LAYERS, "sdpa": 0}


@pytest.mark.parametrize("cache", ["dynamic", "static"])
def test_cuda_bf16_generate(cache, calls):
    """bf16 generate on our kernels with both caches: each decode step's logits equal the patched model's own
    full forward over the generated sequence (teacher forcing) to bf16 rounding. Relative RMS gap: about
    0.1-0.5% for transformers' own and for our CPU kernels; a wrong cache read or decode row is O(100%).
    Accuracy against the fp32 model is test_cuda_logits_bf16's (per-position RMS over many positions: the last
    position of four rows alone is too small a sample for a random net's chaotic error)."""
    model = infinilm_torch.patch(gpu_model("llama", torch.bfloat16))
    ids, mask = gpu_prompt(4, 16)
    extra = {} if cache == "dynamic" else {"cache_implementation": "static", "max_cache_len": 64}
    kw = dict(GREEDY, max_new_tokens=16, min_new_tokens=16, return_dict_in_generate=True, output_logits=True)
    got = model.generate(ids, attention_mask=mask, **kw, **extra)
    assert got.sequences.shape == (4, 32) and calls["decode"] > 0
    with torch.no_grad():
        full = model(got.sequences[:, :-1]).logits[:, ids.shape[1] - 1:].float()
    steps = torch.stack(got.logits, 1).float()
    gap = ((steps - full).pow(2).mean().sqrt() / full.pow(2).mean().sqrt()).item()
    assert gap <= 0.02, gap


def test_cuda_sampling_matches(calls):
    ref, model = gpu_pair("llama")
    ids, mask = gpu_prompt()
    kw = dict(do_sample=True, temperature=0.8, top_k=20, top_p=0.9, max_new_tokens=16, pad_token_id=0,
              cache_implementation="static", max_cache_len=32)
    torch.manual_seed(1234)
    want = ref.generate(ids, attention_mask=mask, **kw)
    torch.manual_seed(1234)
    got = model.generate(ids, attention_mask=mask, **kw)
    assert torch.equal(got, want) and calls["decode"] == 15 * LAYERS and calls["sdpa"] == 0


def test_cuda_left_padding_falls_back_exactly(calls):
    ref, model = gpu_pair("qwen2")
    ids, mask = gpu_prompt(3, 8)
    mask[0, :3] = 0
    ids[mask == 0] = 0
    kw = {**GREEDY, "max_new_tokens": 8, "min_new_tokens": 8}
    assert torch.equal(model.generate(ids, attention_mask=mask, **kw), ref.generate(ids, attention_mask=mask, **kw))
    assert calls["sdpa"] > 0


def test_cuda_compile_no_graph_breaks():
    ref, model = gpu_pair("llama")
    assert_no_breaks_from_us(ref, model, gpu_prompt()[0])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_reduce_overhead_generate_matches_eager(dtype, calls, monkeypatch):
    """generate's own compile hook with mode="reduce-overhead" (inductor + CUDA graphs, fullgraph) on a patched
    model: same tokens as the eager patched model, logits within the dtype's accuracy, no sdpa traced."""
    model = infinilm_torch.patch(gpu_model("mistral", dtype))
    ids, mask = gpu_prompt()
    kw = dict(GREEDY, max_new_tokens=12, min_new_tokens=12, cache_implementation="static", max_cache_len=32,
              return_dict_in_generate=True, output_logits=True)
    eager = model.generate(ids, attention_mask=mask, **kw)
    assert calls == {"prefill": LAYERS, "decode": 11 * LAYERS, "sdpa": 0}
    for name in ("paged_attention_decode", "paged_attention_prefill"):  # dynamo would guard on the counts
        monkeypatch.setattr(attention.ops, name, getattr(attention.ops, name).__wrapped__)

    def no_sdpa(*args, **kwargs):
        raise AssertionError("the compiled patched model traced the sdpa fallback")

    monkeypatch.setattr(attention, "_sdpa", no_sdpa)
    mode = "reduce-overhead" if DEV == "cuda" else "default"
    model.generation_config.compile_config = transformers.CompileConfig(fullgraph=True, mode=mode)
    model.generation_config.compile_config._compile_all_devices = True
    torch._dynamo.reset()
    with torch.no_grad():
        first = model.generate(ids, attention_mask=mask, **kw)  # compiles (and records the graphs)
        compiled = model.generate(ids, attention_mask=mask, **kw)  # replays
    scale = 1e-4 if dtype == torch.float32 else 0.05
    for run in (first, compiled):
        if dtype == torch.float32:
            assert torch.equal(run.sequences, eager.sequences)
        torch.testing.assert_close(run.logits[0].float(), eager.logits[0].float(), **rel_tol(eager.logits[0].float(), scale))
    if dtype == torch.float32:
        for c, e in zip(compiled.logits, eager.logits):
            torch.testing.assert_close(c, e, **rel_tol(e, scale))


@pytest.mark.parametrize("cache", ["static", "paged"])
def test_cuda_engine_from_hf_model(cache):
    """An InferEngine built from the loaded HF model on the GPU generates HF's greedy tokens."""
    ref = gpu_model("qwen2")
    ids, mask = gpu_prompt(2, 8)
    want = ref.generate(ids, attention_mask=mask, **GREEDY)[:, ids.shape[1]:]
    llm = infinilm_torch.from_hf_model(ref, cache=cache, block_size=16, max_batch_size=2, max_cache_len=64)
    assert llm.device.type == DEV
    outs = llm.generate(ids.tolist(), infinilm_torch.SamplingParams(max_tokens=32, temperature=0, ignore_eos=True))
    got = [o.outputs[0].token_ids for o in outs]
    assert got == want.tolist()


# ---- the matrix: batch x cache x compile mode x family, one patched model reused across batch sizes -----------

MATRIX_BATCHES = [1, 3, 8, 32] if DEV == "cuda" else [1, 3]
MATRIX_FAMILIES = FAMILIES if DEV == "cuda" else ["llama"]
MODES = ["eager", "auto-compile", "reduce-overhead"]
RECOMPILE_LIMIT = 8  # one model over 4 batch sizes takes 4 graphs per cache kind; a per-step recompile exceeds it


@pytest.fixture
def recompile_guard():
    """Hitting the recompile limit raises (torch would otherwise fall back to eager silently)."""
    torch._dynamo.utils.counters.clear()
    with torch._dynamo.config.patch(recompile_limit=RECOMPILE_LIMIT, fail_on_recompile_limit_hit=True):
        yield torch._dynamo.utils.counters


def _compiled(model, mode, cache):
    """generate() kwargs for a mode; compiled forwards are installed on the model (undone by the caller).
    auto-compile: generate's own compile hook for a static cache (fullgraph), torch.compile(model.forward,
    fullgraph=True) for a dynamic one (which generate does not compile); reduce-overhead:
    torch.compile(model.forward, fullgraph=True, mode="reduce-overhead") (CUDA graphs) for both caches."""
    kw = {} if cache == "dynamic" else {"cache_implementation": "static", "max_cache_len": 48}
    if mode == "eager":
        return {**kw, "disable_compile": True}
    backend = {} if DEV == "cuda" else {"backend": "aot_eager"}
    if mode == "auto-compile" and cache == "static":
        cfg = transformers.CompileConfig(fullgraph=True, mode="default", **backend)
        cfg._compile_all_devices = True
        return {**kw, "compile_config": cfg}
    torch_mode = {"mode": "reduce-overhead"} if mode == "reduce-overhead" and DEV == "cuda" else {}
    model.forward = torch.compile(model.forward, fullgraph=True, **torch_mode, **backend)
    return {**kw, "disable_compile": True}


def _rms(a, b):
    return (a.float() - b.float()).pow(2).mean().sqrt().item()


@pytest.mark.parametrize("family", MATRIX_FAMILIES)
@pytest.mark.parametrize("cache", ["dynamic", "static"])
@pytest.mark.parametrize("mode", MODES)
def test_cuda_matrix(family, cache, mode, recompile_guard):
    """fp32: greedy tokens equal the unpatched model's at every batch size, left padding included (rows 1, 3,
    .. padded), no exception across the recompiles and never the recompile limit (a recompile per decode step
    fails). bf16 (batch 3): the first step's logits within twice transformers' own bf16 error against fp32."""
    torch._dynamo.reset()
    ref = gpu_model(family)
    model = infinilm_torch.patch(copy.deepcopy(ref))
    kw = _compiled(model, mode, cache)
    gen = dict(GREEDY, max_new_tokens=8, min_new_tokens=8)
    with torch.no_grad():
        for batch in MATRIX_BATCHES:
            ids, mask = (t.to(DEV) for t in padded_prompt(batch, 8))
            want = ref.generate(ids, attention_mask=mask, **gen, disable_compile=True)
            got = model.generate(ids, attention_mask=mask, **gen, **kw)
            assert torch.equal(got, want), (family, cache, mode, batch)
    graphs = recompile_guard["stats"].get("unique_graphs", 0)
    assert graphs <= (0 if mode == "eager" else RECOMPILE_LIMIT), graphs
    model.__dict__.pop("forward", None)
    # bf16: the RMS error over every valid position of the padded prompt (the last position of a few rows alone is
    # too small a sample of a random net's chaotic error) is within twice transformers' own bf16 error against
    # fp32. In the compiled modes (llama only: compiling dominates the file's time) the first generated step's
    # logits also equal the eager patched model's to bf16 rounding.
    torch._dynamo.reset()
    ours16 = infinilm_torch.patch(copy.deepcopy(ref).to(torch.bfloat16))
    ids, mask = (t.to(DEV) for t in padded_prompt(3, 16))
    if mode != "eager" and family == "llama":
        one = dict(GREEDY, max_new_tokens=2, min_new_tokens=2, return_dict_in_generate=True, output_logits=True)
        extra = {} if cache == "dynamic" else {"cache_implementation": "static", "max_cache_len": 48}
        with torch.no_grad():
            eager16 = ours16.generate(ids, attention_mask=mask, **one, **extra, disable_compile=True).logits[0].float()
            kw = _compiled(ours16, mode, cache)
            out = ours16.generate(ids, attention_mask=mask, **one, **kw)
        ours16.__dict__.pop("forward", None)
        assert all(torch.isfinite(x).all() for x in out.logits)
        torch.testing.assert_close(out.logits[0].float(), eager16, **rel_tol(eager16, 0.05))
    ref16 = copy.deepcopy(ref).to(torch.bfloat16)
    valid = mask.bool()
    with torch.no_grad():
        exact = ref(ids, attention_mask=mask).logits[valid]
        hf = ref16(ids, attention_mask=mask).logits[valid]
        ours = ours16(ids, attention_mask=mask).logits[valid]
    assert _rms(ours, exact) <= 2 * _rms(hf, exact), (_rms(ours, exact), _rms(hf, exact))
