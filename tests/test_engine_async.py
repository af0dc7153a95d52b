"""Non-blocking decode (Input.prev_output / prev_token_index / non_blocking, Output.device_ids / ready / wait):
the same tokens, logits and logprobs as the synchronous path fed with host ids (static and paged caches,
joins, leaves and reordered rows, greedy and seeded sampling), bad inputs refused before the model runs, and
on CUDA a step that returns before the GPU has run it, its host fields blocking until they land.

The reference is the engine's own synchronous path on the same weights (the feature changes where the ids
come from, not the arithmetic); its agreement with HF is the other engine tests' business. On CUDA both runs
replay the same graphs, so equality is exact.
"""
import os
import time

import pytest
import torch

from engine_utils import engine_config, make_hf, paged_config
from infinilm_torch.lib import _infinilm

Input = _infinilm.InferEngine.Input
CFG = dict(heads=4, kv_heads=2, hidden=256, head_dim=64, inter=256, vocab=384)
CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
DEVICES = ["cpu", pytest.param("cuda", marks=CUDA)]
SAMPLING = {"greedy": dict(temperature=0.0), "seeded": dict(temperature=0.9, top_k=40, top_p=0.95)}
MODES = ["sync", "prev", "prev_async"]  # host ids; device ids, blocking step; device ids, non-blocking step
BS = 16


def _dtype(device):
    return torch.float32 if device == "cpu" else torch.bfloat16


def _engine(model, device, cache_config):
    dtype = _dtype(device)
    engine = _infinilm.InferEngine(engine_config(model.config, dtype), device_type=device, cache_config=cache_config)
    for name, t in model.state_dict().items():
        engine.load_param(name, t.to(device))
    return engine


def _model(device, seed=0):
    torch.manual_seed(seed)
    return make_hf(dtype=_dtype(device), max_pos=256, **CFG)


def _read(out, logits=False):
    ids = out.output_ids.view(-1).tolist()
    extra = (out.logits.clone(), out.logprobs.clone(), out.top_token_ids.clone()) if logits else None
    return ids, extra


def _static_run(engine, prompts, steps, mode, idle_from=None, logits=False, **sampling):
    """Rows decode together; with idle_from = (row, step) that row then idles (pad id 0 at position 0, as the
    front end feeds a free row). Returns each row's outputs per step (and logits/logprobs when asked)."""
    engine.reset_cache()
    B, S = len(prompts), max(len(p) for p in prompts)
    ids = torch.zeros(B, S, dtype=torch.long)
    for b, p in enumerate(prompts):
        ids[b, : len(p)] = torch.tensor(p)
    lens = [len(p) for p in prompts]
    extra = dict(return_logits=logits, return_logprobs=2 if logits else -1)
    seeded = "top_k" in sampling
    out = engine.forward(Input(input_ids=ids, input_lengths=torch.tensor(lens),
                               non_blocking=mode == "prev_async", seed=7 if seeded else None, **extra, **sampling))
    rows, pending = [], out
    if mode == "sync":
        rows.append(_read(out, logits))
    for step in range(steps):
        idle = idle_from is not None and step >= idle_from[1]
        cache = torch.tensor([0 if idle and b == idle_from[0] else lens[b] + step for b in range(B)])
        kw = dict(cache_lengths=cache, seed=100 + step if seeded else None, **extra, **sampling)
        if mode == "sync":
            tok = rows[-1][0]
            feed = torch.tensor([[0 if idle and b == idle_from[0] else tok[b]] for b in range(B)])
            out = engine.forward(Input(input_ids=feed, **kw))
            rows.append(_read(out, logits))
            continue
        if idle:  # the idle row takes its own id (-1), the others the previous step's sampled ids
            index = torch.tensor([[-1 if b == idle_from[0] else b] for b in range(B)])
            kw.update(input_ids=torch.zeros(B, 1, dtype=torch.long), prev_token_index=index)
        out = engine.forward(Input(prev_output=pending, non_blocking=mode == "prev_async", **kw))
        rows.append(_read(pending, logits))  # one step late: the step just queued runs meanwhile
        pending = out
    if mode != "sync":
        rows.append(_read(pending, logits))
    return rows


def _paged_run(engine, prompts, schedule, mode, **sampling):
    """schedule: per step the requests it runs, in row order; a request's first step prefills its prompt, later
    ones decode the id it drew in the step before. Each request owns blocks r*8 .. r*8+7."""
    engine.reset_cache()
    reqs = [dict(tokens=list(p), cached=0, out=[]) for p in prompts]
    seeded = "top_k" in sampling
    pending, prev_plan = None, None
    for step, plan in enumerate(schedule):
        ids, src, pos, slots, cl, il = [], [], [], [], [], []
        for r in plan:
            q = reqs[r]
            n = len(q["tokens"]) if q["cached"] == 0 else 1
            for j in range(n):
                p = q["cached"] + j
                pos.append(p)
                slots.append((r * 8 + p // BS) * BS + p % BS)
            if q["cached"] == 0:
                ids += q["tokens"]
                src += [-1] * n
            else:
                assert r in prev_plan, "a decode step feeds the id drawn in the step before"
                ids.append(q["tokens"][-1] if mode == "sync" else 0)
                src.append(prev_plan.index(r))
            cl.append(q["cached"])
            il.append(n)
            q["cached"] += n
        T = torch.tensor
        kw = dict(position_ids=T(pos), slot_mapping=T(slots), cache_lengths=T(cl), input_lengths=T(il),
                  block_tables=T([[r * 8 + k for k in range(8)] for r in plan]), seed=50 + step if seeded else None,
                  **sampling)
        if mode == "sync" or pending is None:
            out = engine.forward(Input(input_ids=T([ids]), non_blocking=mode == "prev_async", **kw))
        else:
            out = engine.forward(Input(input_ids=T([ids]), prev_output=pending, prev_token_index=T(src),
                                       non_blocking=mode == "prev_async", **kw))
        done = out if mode == "sync" else pending
        if done is not None:
            drawn = done.output_ids.view(-1).tolist()
            for i, r in enumerate(plan if mode == "sync" else prev_plan):
                reqs[r]["tokens"].append(drawn[i])
                reqs[r]["out"].append(drawn[i])
        pending, prev_plan = None if mode == "sync" else out, plan
    if pending is not None:  # the last step, read after the loop
        for i, r in enumerate(prev_plan):
            reqs[r]["out"].append(int(pending.output_ids[i, 0]))
    return [q["out"] for q in reqs]


def _prompts(n, lo=5, hi=30, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, CFG["vocab"], (int(torch.randint(lo, hi, (1,), generator=g)),), generator=g).tolist()
            for _ in range(n)]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("sampling", list(SAMPLING))
def test_static_device_ids_match_host_ids(device, sampling):
    model = _model(device)
    engine = _engine(model, device, _infinilm.StaticKVCacheConfig(3, 128))
    prompts = _prompts(3)
    want = _static_run(engine, prompts, 12, "sync", idle_from=(1, 8), **SAMPLING[sampling])
    assert len({t for ids, _ in want for t in ids}) >= 6, "degenerate token paths: the test would prove nothing"
    for mode in MODES[1:]:
        got = _static_run(engine, prompts, 12, mode, idle_from=(1, 8), **SAMPLING[sampling])
        assert [ids for ids, _ in got] == [ids for ids, _ in want], f"{mode}: tokens differ"


@pytest.mark.parametrize("device", DEVICES)
def test_static_logits_and_logprobs_match(device):
    model = _model(device, seed=3)
    engine = _engine(model, device, _infinilm.StaticKVCacheConfig(2, 128))
    prompts = _prompts(2, seed=4)
    want = _static_run(engine, prompts, 6, "sync", logits=True, temperature=0.0)
    got = _static_run(engine, prompts, 6, "prev_async", logits=True, temperature=0.0)
    for step, ((wi, we), (gi, ge)) in enumerate(zip(want, got)):
        assert wi == gi, f"step {step}: tokens differ"
        for name, a, b in zip(("logits", "logprobs", "top_token_ids"), we, ge):
            assert a.device.type == "cpu" and torch.equal(a, b), f"step {step}: {name} differ"


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("sampling", list(SAMPLING))
def test_paged_joins_leaves_and_reorders(device, sampling):
    model = _model(device, seed=5)
    engine = _engine(model, device, paged_config(model, 48, BS, _dtype(device)))
    prompts = _prompts(3, seed=6)
    # r2 joins with a prefill in a decode step, r0 leaves, and the last steps list r2 before r1.
    schedule = [[0, 1]] + [[0, 1]] * 3 + [[0, 1, 2]] + [[0, 1, 2]] * 3 + [[1, 2]] * 3 + [[2, 1]] * 3
    want = _paged_run(engine, prompts, schedule, "sync", **SAMPLING[sampling])
    assert len({t for o in want for t in o}) >= 6, "degenerate token paths: the test would prove nothing"
    for mode in MODES[1:]:
        assert _paged_run(engine, prompts, schedule, mode, **SAMPLING[sampling]) == want, f"{mode}: tokens differ"


def _counting(engine):
    calls = []
    reg = _infinilm.HookRegistry()
    reg.register_hook("logits", lambda n, t, i: calls.append(n))
    engine.set_hook_registry(reg)
    return calls


@pytest.mark.parametrize("device", DEVICES)
def test_bad_prev_inputs_raise_before_the_model_runs(device):
    model = _model(device, seed=8)
    engine = _engine(model, device, _infinilm.StaticKVCacheConfig(2, 64))
    other = _engine(model, device, _infinilm.StaticKVCacheConfig(2, 64))
    prompts = [p[:6] for p in _prompts(2, lo=6, seed=9)]
    want = _static_run(engine, prompts, 2, "sync", temperature=0.0)
    engine.reset_cache()
    calls = _counting(engine)
    out = engine.forward(Input(input_ids=torch.tensor(prompts), temperature=0.0, non_blocking=True))
    foreign = other.forward(Input(input_ids=torch.tensor(prompts), temperature=0.0))
    assert len(calls) == 1
    cache = torch.tensor([6, 6])
    bad = [
        (ValueError, "another engine", dict(prev_output=foreign)),
        (ValueError, "no engine", dict(prev_output=_infinilm.InferEngine.Output())),
        (ValueError, "without 'prev_output'", dict(input_ids=torch.zeros(2, 1, dtype=torch.long),
                                                   prev_token_index=torch.tensor([[0], [1]]))),
        (ValueError, "without 'prev_token_index'", dict(prev_output=out, input_ids=torch.zeros(2, 1, dtype=torch.long))),
        (IndexError, "value 2", dict(prev_output=out, prev_token_index=torch.tensor([[0], [2]]))),
        (IndexError, "value -2", dict(prev_output=out, prev_token_index=torch.tensor([[0], [-2]]))),
        (ValueError, "'input_ids' was not given", dict(prev_output=out, prev_token_index=torch.tensor([[0], [-1]]))),
        (ValueError, "shape of 'input_ids'", dict(prev_output=out, input_ids=torch.zeros(2, 1, dtype=torch.long),
                                                  prev_token_index=torch.tensor([0, 1]))),
        (TypeError, "prev_token_index", dict(prev_output=out, prev_token_index=torch.tensor([[0.0], [1.0]]))),
    ]
    for exc, text, kw in bad:
        with pytest.raises(exc, match=text):
            engine.forward(Input(cache_lengths=cache, temperature=0.0, non_blocking=True, **kw))
    with pytest.raises(TypeError):
        Input(prev_output=torch.zeros(2, 1, dtype=torch.long))
    assert len(calls) == 1, "a refused step ran the model"
    engine.set_hook_registry(None)
    nxt = engine.forward(Input(prev_output=out, cache_lengths=cache, temperature=0.0, non_blocking=True))
    last = engine.forward(Input(prev_output=nxt, cache_lengths=cache + 1, temperature=0.0, non_blocking=True))
    got = [_read(o)[0] for o in (out, nxt, last)]
    assert got == [ids for ids, _ in want], "the refused steps changed what later steps compute"


def test_cpu_and_blocking_steps_are_ready_at_once():
    model = _model("cpu", seed=10)
    engine = _engine(model, "cpu", _infinilm.StaticKVCacheConfig(2, 64))
    for non_blocking in (False, True):
        engine.reset_cache()
        out = engine.forward(Input(input_ids=torch.tensor(_prompts(2, lo=4, hi=5)), temperature=0.0,
                                   non_blocking=non_blocking))
        assert out.ready()
        out.wait()
        assert out.device_ids.device.type == "cpu" and out.device_ids.dtype == torch.long
        assert torch.equal(out.device_ids, out.output_ids.view(-1))
    empty = _infinilm.InferEngine.Output()
    assert empty.ready() and empty.output_ids is None and empty.device_ids is None


@CUDA
@pytest.mark.parametrize("cache", ["static", "paged"])
def test_cuda_step_returns_before_the_gpu_runs_it(cache):
    """A GPU kept busy by a long kernel on the engine's stream: non-blocking steps (prefill, graph replays fed
    by device ids) return at once, their outputs are not ready, and reading one blocks until it is correct."""
    model = _model("cuda", seed=11)
    cc = (_infinilm.StaticKVCacheConfig(2, 128) if cache == "static"
          else paged_config(model, 32, BS, torch.bfloat16))
    engine = _engine(model, "cuda", cc)
    prompts = [p[:8] for p in _prompts(2, lo=8, seed=12)]
    T = torch.tensor

    def steps(non_blocking, busy_s=0.0):
        engine.reset_cache()
        paged = dict(block_tables=T([[0, 1], [2, 3]]), slot_mapping=T([r * 2 * BS + p for r in range(2)
                                                                          for p in range(8)]),
                     input_lengths=T([8, 8])) if cache == "paged" else {}
        ids = T([sum(prompts, [])]) if cache == "paged" else T(prompts)
        if busy_s:
            torch.cuda._sleep(int(busy_s * 2e9))  # about busy_s on a 2 GHz clock (longer on slower ones)
        t0 = time.perf_counter()
        outs = [engine.forward(Input(input_ids=ids, temperature=0.0, non_blocking=non_blocking, **paged))]
        for s in range(6):
            kw = dict(cache_lengths=T([8 + s, 8 + s]), temperature=0.0, non_blocking=non_blocking,
                      prev_output=outs[-1])
            if cache == "paged":
                kw.update(block_tables=T([[0, 1], [2, 3]]), slot_mapping=T([8 + s, 2 * BS + 8 + s]),
                          input_lengths=T([1, 1]))
            outs.append(engine.forward(Input(**kw)))
        return outs, time.perf_counter() - t0

    want, _ = steps(False)
    want = [o.output_ids.clone() for o in want]
    steps(True)  # graphs captured, pinned blocks allocated: the timed run reuses them
    torch.cuda.synchronize()
    replays = engine._cuda_graph_replays
    outs, host_s = steps(True, busy_s=1.0)
    if engine.cuda_graphs:  # unless INFINILM_CUDA_GRAPHS=0: the decode steps replay graphs, and the 16-token
        mixed = os.environ.get("INFINILM_CUDA_GRAPHS_MIXED") != "0"  # prefill too unless mixed graphs are off
        assert engine._cuda_graph_replays == replays + 6 + mixed, "the steps did not replay graphs"
    pending = not outs[-1].ready()
    assert host_s < 0.3, f"7 non-blocking steps took {host_s:.3f} s of host time behind a 1 s kernel: one synced"
    assert pending, "the last step was ready although the GPU was still busy"
    t0 = time.perf_counter()
    got = outs[-1].output_ids  # blocks until the copy has landed
    assert time.perf_counter() - t0 > 0.2, "output_ids returned before the busy GPU could have run the step"
    assert outs[-1].ready()
    assert [o.output_ids.tolist() for o in outs] == [w.tolist() for w in want]
    assert torch.equal(got, want[-1]) and outs[-1].device_ids.device.type == "cuda"


def test_tensor_parallel_takes_device_ids_through_the_host():
    """Every rank embeds the ids and only rank 0 holds the sampled ones: prev_output works, synchronously."""
    model = _model("cpu", seed=13)
    cc = _infinilm.StaticKVCacheConfig(2, 64)
    prompts = _prompts(2, seed=14)
    want = _static_run(_engine(model, "cpu", cc), prompts, 5, "sync", temperature=0.0)
    tp = _infinilm.InferEngine(engine_config(model.config, torch.float32), _infinilm.DistConfig(2), "cpu", cc)
    for name, t in model.state_dict().items():
        tp.load_param(name, t)
    got = _static_run(tp, prompts, 5, "prev_async", idle_from=None, temperature=0.0)
    assert [ids for ids, _ in got] == [ids for ids, _ in want]
