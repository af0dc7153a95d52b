"""HF transformers patching on CUDA: patched vs unpatched tiny Llama/Qwen2/Mistral/Qwen3 with head size 64 (the
CUDA attention kernels' sizes), fp32 and bf16, both caches, sampling, the batch x cache x compile-mode matrix
(eager, generate's compile, "reduce-overhead" CUDA graphs; one model reused across batch sizes, left padding
included; compiled cells in child processes, see tests/test_hf_patch_cells.py), and an engine built from the HF
model on the GPU.

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
import test_hf_patch_cells as cells  # noqa: E402
from engine_utils import spread_weights  # noqa: E402

DEV = os.environ.get("INFINILM_HF_TEST_DEVICE", "cuda")
pytestmark = pytest.mark.skipif(DEV == "cuda" and not torch.cuda.is_available(), reason="needs a CUDA GPU")
LAYERS = COMMON["num_hidden_layers"]


@pytest.fixture(autouse=True)
def cuda_policy(monkeypatch):
    """On a CPU dry run, hold the kernels to the head sizes CUDA has."""
    if DEV == "cpu":
        monkeypatch.setitem(attention.LAYOUT, "cpu", attention.LAYOUT["cuda"])
        monkeypatch.setitem(attention.HEAD_DIMS, "cpu", attention.HEAD_DIMS["cuda"])


def gpu_model(family, dtype=torch.float32, **overrides):
    return cells.cell_model(family, DEV, dtype, **overrides)


def gpu_pair(family, dtype=torch.float32, **overrides):
    ref = gpu_model(family, dtype, **overrides)
    return ref, infinilm_torch.patch(copy.deepcopy(ref))


def gpu_prompt(batch=2, length=8):
    ids = torch.randint(3, COMMON["vocab_size"], (batch, length), device=DEV)
    return ids, torch.ones_like(ids)


def rel_tol(ref, scale):
    return dict(atol=scale * ref.abs().max().item(), rtol=scale)


# ---- the matrix: batch x cache x compile mode x family, one patched model reused across batch sizes -----------
# Compiled cells run in child processes (tests/test_hf_patch_cells.py), one child per group of cells (a fresh
# child after a crash), so that a crash in inductor or CUDA graphs fails its own cell with its signal and
# stderr. Compiling dominates: the default run compiles a few cells of one family over two batch sizes;
# INFINILM_HF_FULL_MATRIX=1 runs every family x cache x mode over batch 1, 3, 8, 32 (one child per family, in
# parallel under xdist), INFINILM_HF_DIAGNOSE=1 runs the first crashed and the first failed cell again once per
# diagnosis variant (inductor options, each patched part left out, the unpatched model). Eager cells run here.

FULL = DEV == "cuda" and os.environ.get("INFINILM_HF_FULL_MATRIX") == "1"
DIAGNOSE = os.environ.get("INFINILM_HF_DIAGNOSE") == "1"
MATRIX_FAMILIES = FAMILIES if DEV == "cuda" else ["llama"]
MATRIX_BATCHES = [1, 3, 8, 32] if DEV == "cuda" else [1, 3]
if FULL:
    COMPILED = {f: [(f, c, m) for m in ("auto-compile", "reduce-overhead") for c in ("static", "dynamic")]
                for f in FAMILIES}
    COMPILED_BATCHES = MATRIX_BATCHES
elif DEV == "cuda":  # generate's hook (CUDA graphs), torch.compile reduce-overhead, inductor over a dynamic cache
    COMPILED = {"llama-static": [("llama", "static", "auto-compile"), ("llama", "static", "reduce-overhead")],
                "llama-dynamic": [("llama", "dynamic", "auto-compile")]}  # two children, in parallel under xdist
    COMPILED_BATCHES = [1, 3]
else:
    COMPILED = {"llama": [("llama", "static", "auto-compile"), ("llama", "dynamic", "auto-compile")]}
    COMPILED_BATCHES = [1, 3]


def _first(kind, tmp_path_factory):
    """True for the first cell of the session (all xdist workers) that ended in `kind`: only that one is diagnosed."""
    base = tmp_path_factory.getbasetemp()
    marker = (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / f"hf_cells_diagnosed_{kind}"
    try:
        os.close(os.open(marker, os.O_CREAT | os.O_EXCL))
        return True
    except FileExistsError:
        return False


@pytest.mark.parametrize("group", sorted(COMPILED))
def test_cuda_matrix_compiled(group, _fresh_seed, tmp_path_factory):
    """A group of compiled cells in one child process (see tests/test_hf_patch_cells.py for what a cell checks)."""
    todo = COMPILED[group]
    res = cells.run_cells(todo, DEV, _fresh_seed, bf16_families=("llama",) if FULL else (), batches=COMPILED_BATCHES)
    print(cells.summary(res))  # seconds per cell (-rP shows them): what the next run can plan with
    bad = [c for c in todo if res[c]["status"] != "ok"]
    if not bad:
        return
    msg = cells.summary(res)
    for cell in bad:
        r = res[cell]
        crashed = r["status"] in ("crash", "timeout")
        msg += f"\n---- {'/'.join(cell)}\n" + (r["stderr"] if crashed else r["error"])
        if DIAGNOSE and _first("crash" if crashed else "fail", tmp_path_factory):
            diag = cells.diagnose(cell, DEV, _fresh_seed, batches=COMPILED_BATCHES)
            msg += "\ndiagnosis (the same cell, one change each):\n" + cells.summary(
                {(*cell, v): d for v, d in diag.items()})
    pytest.fail(msg, pytrace=False)


@pytest.mark.parametrize("family", MATRIX_FAMILIES)
@pytest.mark.parametrize("cache", ["dynamic", "static"])
def test_cuda_matrix_eager(family, cache):
    cells.run_cell(family, cache, "eager", DEV, MATRIX_BATCHES)


# ---- single checks ---------------------------------------------------------------------------------------------


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
    assert_bf16_rule(spread_weights(gpu_model(family)), gpu_prompt(8, 32)[0])


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
