"""Tensor parallelism on CPU: in-process Gloo rank threads vs HF transformers and vs TP=1 (with and without
biases), two Gloo processes vs TP=1; failure handling."""
import importlib.util
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from engine_utils import (Input, PagedDriver, check_sequence, engine_config, make_engine, make_hf, paged_config,
                          run_static)
from infinilm_torch.lib import _infinilm

ROOT = Path(__file__).resolve().parents[1]
STEPS = 32
DistConfig = _infinilm.DistConfig


# Llama with attention_bias and mlp_bias has a bias on both row-parallel projections (o_proj, down_proj), which
# must be added once after the all-reduce; Qwen2 has q/k/v biases only (column-parallel, sharded).
KINDS = {"plain": dict(), "llama_bias": dict(bias=True, mlp_bias=True), "qwen2": dict(model_type="qwen2")}


def _model(kind="plain"):
    # 8 query heads over 4 kv heads: TP 2 and 4 both split the kv heads, and GQA stays on within a rank.
    return make_hf(hidden=64, heads=8, kv_heads=4, inter=128, vocab=256, layers=2, **KINDS[kind])


def _close(got, want):
    g, w = torch.stack(got), torch.stack(want)
    scale = w.abs().max().item()
    err = (g - w).abs().max().item()
    assert err <= 1e-4 * scale + 1e-5, f"TP logits differ from TP=1 by {err} (scale {scale})"


@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("tp", [2, 4])
def test_static_tp_matches_tp1_and_hf(tp, kind):
    model = _model(kind)
    prompts = [[3, 17, 42, 9, 100, 7], [250, 1, 64]]
    cache = _infinilm.StaticKVCacheConfig(2, 64)
    want_seqs, want_logits = run_static(make_engine(model, cache_config=cache), prompts, STEPS)
    engine = make_engine(model, cache_config=cache, distributed_config=DistConfig(tp))
    assert engine.tp_size == tp and engine.local_ranks == list(range(tp))
    seqs, logits = run_static(engine, prompts, STEPS)
    assert seqs == want_seqs
    assert len(set(seqs[0][len(prompts[0]):])) >= 4, "greedy path is degenerate: the test would prove nothing"
    for b in range(len(prompts)):
        _close(logits[b], want_logits[b])
        check_sequence(model, len(prompts[b]), seqs[b], logits[b], min_distinct=1)


def _paged_run(model, tp, block_size=4, num_blocks=48):
    torch.manual_seed(1234)  # the same scattered blocks for every run
    kw = {} if tp == 1 else dict(distributed_config=DistConfig(tp))
    engine = make_engine(model, cache_config=paged_config(model, num_blocks, block_size), **kw)
    d = PagedDriver(engine, [[5, 6, 7, 8, 9, 10, 11], [200, 3], [77] * 5], num_blocks, block_size)
    d.step([(0, 7), (1, 2)])  # two prefills
    d.step([(0, 1), (2, 5), (1, 1)])  # decode mixed with a prefill
    for _ in range(STEPS - 2):
        d.step([(0, 1), (1, 1), (2, 1)])
    return d.reqs


@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("tp", [2, 4])
def test_paged_tp_matches_tp1_and_hf(tp, kind):
    model = _model(kind)
    want = _paged_run(model, 1)
    got = _paged_run(model, tp)
    for g, w, n in zip(got, want, (7, 2, 5)):
        assert g["tokens"] == w["tokens"]
        _close(g["logits"], w["logits"])
        check_sequence(model, n, g["tokens"], g["logits"], min_distinct=1)


@pytest.mark.parametrize("kind", list(KINDS))
def test_state_dict_shards_concatenate_to_full(kind):
    model = _model(kind)
    tp = 2
    engine = make_engine(model, distributed_config=DistConfig(tp))
    shards = engine.state_dict()
    assert len(shards) == tp
    full = model.state_dict()
    for name, t in full.items():
        parts = [sd[name] for sd in shards]
        if any(k in name for k in ("q_proj", "k_proj", "v_proj", "gate_proj", "up_proj")):
            assert parts[0].shape[0] * tp == t.shape[0]
            torch.testing.assert_close(torch.cat(parts, 0), t, rtol=0, atol=0)
        elif "o_proj.weight" in name or "down_proj.weight" in name:
            assert parts[0].shape[1] * tp == t.shape[1]
            torch.testing.assert_close(torch.cat(parts, 1), t, rtol=0, atol=0)
        else:  # embeddings, norms, lm_head: replicated
            for p in parts:
                torch.testing.assert_close(p, t, rtol=0, atol=0)


def _example():
    spec = importlib.util.spec_from_file_location("tp_generate", ROOT / "examples" / "tp_generate.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _launch(nproc, *args):
    """Start examples/tp_generate.py as torchrun would: one process per rank with the env:// variables."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = []
    for r in range(nproc):
        env = dict(os.environ, RANK=str(r), LOCAL_RANK=str(r), WORLD_SIZE=str(nproc), LOCAL_WORLD_SIZE=str(nproc),
                   MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), OMP_NUM_THREADS="1",
                   PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
        procs.append(subprocess.Popen([sys.executable, str(ROOT / "examples" / "tp_generate.py"), *args], env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    outs = []
    for p in procs:
        out, err = p.communicate(timeout=120)
        outs.append((p.returncode, out, err))
    return outs


def test_two_processes_match_tp1():
    ex = _example()
    model = ex.tiny_model(seed=7)
    engine = _infinilm.InferEngine(ex.engine_config(model.config), device_type="cpu")
    for name, t in model.state_dict().items():
        engine.load_param(name, t)
    prompt = [1, 5, 9, 2, 7, 3]
    seqs, _ = run_static(engine, [prompt], STEPS - 1)
    want = seqs[0][len(prompt):]
    outs = _launch(2, "--seed", "7", "--steps", str(STEPS))
    for rc, out, err in outs:
        assert rc == 0, err[-2000:]
    rank0 = json.loads(outs[0][1].strip().splitlines()[-1])
    assert rank0["tp_size"] == 2 and rank0["prompt"] == prompt
    assert rank0["tokens"] == want
    assert outs[1][1].strip() == "", "only rank 0 reports tokens"


def test_dead_peer_process_raises_instead_of_hanging():
    start = time.monotonic()
    outs = _launch(2, "--steps", "4", "--comm-timeout", "5", "--fail-rank", "1")
    assert outs[1][0] == 3
    rc, out, err = outs[0]
    assert rc == 1, f"rank 0 should fail cleanly, got rc {rc}: {err[-2000:]}"
    assert "error" in json.loads(out.strip().splitlines()[-1])
    assert time.monotonic() - start < 90


def test_heads_not_divisible_raise():
    cfg = engine_config(make_hf(hidden=64, heads=8, kv_heads=2, inter=128).config, torch.float32)
    with pytest.raises(ValueError, match="num_key_value_heads.*divisible by tp_size \\(4\\)"):
        _infinilm.InferEngine(cfg, distributed_config=DistConfig(4), device_type="cpu")
    cfg.num_attention_heads = cfg.num_key_value_heads = 6
    with pytest.raises(ValueError, match="num_attention_heads.*divisible by tp_size \\(4\\)"):
        _infinilm.InferEngine(cfg, distributed_config=DistConfig(4), device_type="cpu")


def test_bad_device_ids_raise():
    with pytest.raises(ValueError, match="appears twice"):
        DistConfig([0, 0])
    with pytest.raises(ValueError, match="negative"):
        DistConfig([0, -1])
    with pytest.raises(ValueError, match="tp_size"):
        DistConfig(0)
    cfg = engine_config(_model().config, torch.float32)
    # On a CPU-only torch: no CUDA at all; with CUDA: device 999 does not exist. Either is a ValueError.
    with pytest.raises(ValueError, match="CUDA"):
        _infinilm.InferEngine(cfg, distributed_config=DistConfig([0, 999]), device_type="cuda")


def test_bad_process_group_raises():
    cfg = engine_config(_model().config, torch.float32)
    with pytest.raises(ValueError, match="process_group"):
        _infinilm.InferEngine(cfg, device_type="cpu", process_group=object())
    with pytest.raises(ValueError, match="comm_timeout"):
        _infinilm.InferEngine(cfg, _infinilm.DistConfig(2), "cpu", comm_timeout=0.0)


def test_failing_rank_raises_and_engine_tears_down():
    model = _model()
    engine = make_engine(model, distributed_config=DistConfig(2), comm_timeout=60.0)
    ids = torch.tensor([[3, 4, 5]])
    engine.forward(Input(input_ids=ids, temperature=0.0))
    engine.reset_cache()
    engine._inject_rank_failure(1)
    start = time.monotonic()
    with pytest.raises(RuntimeError, match="injected failure on rank 1"):
        engine.forward(Input(input_ids=ids, temperature=0.0))
    assert time.monotonic() - start < 20, "rank 0 waited for the comm timeout instead of being aborted"
    with pytest.raises(RuntimeError, match="create a new engine"):
        engine.forward(Input(input_ids=ids, temperature=0.0))
    start = time.monotonic()
    del engine  # joins both rank threads and releases both Gloo groups (one with a pending all-reduce)
    assert time.monotonic() - start < 20


def test_load_param_error_reaches_caller_and_engine_stays_usable():
    model = _model()
    engine = make_engine(model, distributed_config=DistConfig(2))
    with pytest.raises(ValueError, match="has shape"):
        engine.load_param("model.layers.0.self_attn.q_proj.weight", torch.randn(3, 3))
    out = engine.forward(Input(input_ids=torch.tensor([[1, 2]]), temperature=0.0))
    assert out.output_ids.shape == (1, 1)


@pytest.mark.parametrize("tp", [2, 4])
def test_row_parallel_outputs_match_hf_modules(tp):
    """Module level: each layer's o_proj and down_proj outputs (row-parallel, bias added once after the
    all-reduce) under TP vs the HF modules' own outputs in the same prefill."""
    model = _model("llama_bias")
    prompt = [3, 17, 42, 9, 100, 7, 55]
    want = {}

    def keep(key):
        return lambda mod, args, out: want.__setitem__(key, (out[0] if isinstance(out, tuple) else out)[0].detach())

    handles = []
    for i, layer in enumerate(model.model.layers):
        handles += [layer.self_attn.register_forward_hook(keep(f"layer{i}_attention")),
                    layer.mlp.register_forward_hook(keep(f"layer{i}_mlp"))]
    with torch.no_grad():
        model(torch.tensor([prompt]))
    for h in handles:
        h.remove()
    got = {}
    reg = _infinilm.HookRegistry()
    for key in want:
        reg.register_hook(key, lambda n, t, i: got.__setitem__(n, t.clone()))
    engine = make_engine(model, distributed_config=DistConfig(tp))
    engine.set_hook_registry(reg)
    engine.forward(Input(input_ids=torch.tensor([prompt]), temperature=0.0))
    assert set(got) == set(want)
    for key, w in want.items():
        g = got[key].reshape(w.shape)
        err = (g - w).abs().max().item()
        assert err <= 1e-4 * w.abs().max().item() + 1e-5, f"{key}: TP={tp} differs from HF by {err}"
