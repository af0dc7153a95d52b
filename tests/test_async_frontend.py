"""Async scheduling (one engine step in flight) against the synchronous loop, through LLM.generate / stream.

Both loops run on the same LLM (its cache reset in between) and must give the same tokens, text, finish and
stop reasons, logprobs and cumulative logprobs, across greedy and seeded sampling, requests that finish at
different steps of one batch (EOS, stop ids, stop strings, max_tokens), preemption, chunked prefill, prefix
caching, n > 1, min_tokens, penalties, streaming and aborts from another thread. A spy on the engine proves
the overlap (step n + 1 is queued from step n's device ids before the host has read them) and that every
comparison really ran overlapped steps.
"""
import dataclasses
import threading
import types

import pytest

from infinilm_torch import LLM, SamplingParams
from infinilm_torch.serving import sampler

pytest.importorskip("transformers")

from test_serving import BLOCK_BYTES, rand_prompts, tiny_model  # noqa: E402


class Spy:
    """Wraps an LLM's engine; per forward: (fed from a previous Output, non_blocking, {seq_id: tokens read})."""

    def __init__(self, llm):
        self.engine, self.llm, self.log, self.penalized = llm.engine, llm, [], []
        llm.engine = self

    def forward(self, inp):
        reqs = list(self.llm._core._requests.values())  # the loop thread: safe to read
        self.log.append((inp.prev_output is not None, inp.non_blocking,
                         {s.seq_id: len(s.out) for r in reqs for s in r.seqs}))
        self.penalized.append(any(sampler.penalized(r.params) for r in reqs))
        return self.engine.forward(inp)

    @property
    def fed(self):
        return sum(f for f, _, _ in self.log)

    @property
    def fed_while_penalized(self):
        return sum(f and p for (f, _, _), p in zip(self.log, self.penalized))

    def __getattr__(self, name):
        return getattr(self.engine, name)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return tiny_model(str(tmp_path_factory.mktemp("async") / "tiny"))


def make(path, **kw):
    kw.setdefault("block_size", 4)
    llm = LLM(path, progress=False, **kw)
    Spy(llm)
    return llm


def summary(outs, values=True):
    """Everything a caller sees; ``values=False`` leaves out logprob values and prefix-cache hits (which
    depend on when blocks were freed)."""
    def lps(c):
        if c.logprobs is None:
            return None
        return [{t: (v.logprob if values else None, v.rank) for t, v in e.items()} for e in c.logprobs]
    return [([(c.index, c.token_ids, c.text, c.finish_reason, c.stop_reason,
               c.cumulative_logprob if values else None, lps(c)) for c in o.outputs],
             o.num_cached_tokens if values else None) for o in outs]


def logprob_values(outs):
    return [v.logprob for o in outs for c in o.outputs for e in (c.logprobs or []) for v in e.values()]


def both(llm, prompts, params, overlapped=True, exact=True):
    """(sync outputs, async outputs) of one workload; checks the async run fed steps from the device.

    exact=False where the two loops' steps hold different rows: a sequence that stopped at step n still has
    its (discarded) token in the overlapped step n + 1, the rows it frees are taken one step later, and a
    sequence preempted in one loop only is recomputed by a prefill. The engine's arithmetic for a row depends
    on its batch (GEMM blocking, prefill vs decode attention) at fp32 rounding, so logprob values then agree
    to 1e-4; tokens, text, ranks and reasons stay exactly equal."""
    got = {}
    for mode in (False, True):
        llm.reset_cache()
        llm.async_scheduling = mode
        fed0 = llm.engine.fed
        got[mode] = llm.generate(prompts, params, use_tqdm=False)
        llm._core.call(lambda: None)  # the step in flight after the last output (discarded tokens) has ended
        fed = llm.engine.fed - fed0
        if overlapped is not None or not mode:  # None: the async run may or may not overlap
            assert (fed > 0) == (mode and bool(overlapped)), f"async={mode}: {fed} steps fed from the device"
        sched = llm._core.scheduler
        assert not sched.running and not sched.waiting and llm._core._inflight is None
        if hasattr(sched, "bm"):
            assert sched.bm.num_free == sched.bm.num_blocks and sum(sched.bm.ref) == 0  # every block came back
    assert summary(got[True], values=exact) == summary(got[False], values=exact)
    if not exact:
        assert logprob_values(got[True]) == pytest.approx(logprob_values(got[False]), abs=1e-4)
    return got[False], got[True]


def mixed_params(n, stop_id=None):
    """Greedy, seeded and logprob requests ending at different steps: max_tokens, stop ids, stop strings."""
    out = []
    for i in range(n):
        kw = dict(max_tokens=4 + 3 * i, ignore_eos=True)
        if i % 2:
            kw.update(temperature=0.9, top_k=20, top_p=0.9, seed=100 + i)
        else:
            kw.update(temperature=0.0)
        if i % 3 == 1:
            kw.update(logprobs=3)
        if i % 4 == 2 and stop_id is not None:
            kw.update(stop_token_ids=[stop_id])
        if i % 4 == 3:
            kw.update(stop=["a", "e", "o"])
        out.append(SamplingParams(**kw))
    return out


def test_step_n_plus_1_is_queued_before_step_n_is_read(model_dir):
    for cache in ("static", "paged"):
        llm = make(model_dir, cache=cache)
        for mode in (False, True):
            llm.async_scheduling = mode
            llm.engine.log.clear()
            out = llm.generate([rand_prompts([6])[0]], SamplingParams(temperature=0, max_tokens=8, ignore_eos=True))
            log = llm.engine.log
            assert len(log) == 8  # the last token is never fed back: no extra step at max_tokens
            assert not log[0][0]
            for i, (fed, nb, read) in enumerate(log[1:], 1):
                (n_read,) = read.values()
                # async: step i is queued from step i-1's device ids while the host has read only i-1 tokens
                assert (fed, nb, n_read) == ((True, True, i - 1) if mode else (False, False, i)), (cache, i)
            assert len(out[0].outputs[0].token_ids) == 8


@pytest.mark.parametrize("cache", ["static", "paged"])
def test_mixed_finishes_equal_sync(model_dir, cache):
    llm = make(model_dir, cache=cache, max_batch_size=4, max_cache_len=64)
    prompts = rand_prompts([5, 17, 2, 9, 12, 7, 3, 11])
    probe = llm.generate(prompts[2], SamplingParams(temperature=0, max_tokens=12, ignore_eos=True))
    stop_id = probe[0].outputs[0].token_ids[4]  # ends request 2 early, others maybe at other steps
    sync, _ = both(llm, prompts, mixed_params(len(prompts), stop_id), exact=False)
    reasons = {c.finish_reason for o in sync for c in o.outputs}
    assert reasons == {"stop", "length"}, reasons
    assert len({len(o.outputs[0].token_ids) for o in sync}) > 3


@pytest.mark.parametrize("cache", ["static", "paged"])
def test_same_steps_give_bit_equal_logprobs(model_dir, cache):
    """Each request ends at its own max_tokens, three run at a time: both loops run the same rows in every
    step (a sequence whose last token is in flight leaves at once, its row or blocks taken by the next
    waiting request in the next step), so logprobs are bit-equal."""
    llm = make(model_dir, cache=cache, max_batch_size=3, max_num_seqs=3, max_cache_len=64)
    prompts = rand_prompts([5, 17, 2, 9, 12, 7, 3, 11])
    sp = [SamplingParams(max_tokens=3 + 2 * i, ignore_eos=True, logprobs=2, **(
        dict(temperature=0.9, top_k=30, seed=i) if i % 2 else dict(temperature=0.0))) for i in range(8)]
    sync, _ = both(llm, prompts, sp)
    assert [len(o.outputs[0].token_ids) for o in sync] == [3 + 2 * i for i in range(8)]
    if cache == "paged":  # also under preemption, with prompts sharing a cached head
        llm = make(model_dir, cache="paged", max_kv_memory_bytes=14 * BLOCK_BYTES)
        head = rand_prompts([9])[0]
        sync, _ = both(llm, [head + p for p in prompts[:6]], sp[:6])
        assert llm._core.scheduler.num_preemptions > 0 and any(o.num_cached_tokens for o in sync)


def test_eos_finishes_equal_sync(tmp_path, model_dir):
    probe = make(model_dir, cache="paged")
    prompts = rand_prompts([4, 9, 6, 13, 5])
    runs = probe.generate(prompts, SamplingParams(temperature=0, max_tokens=16, ignore_eos=True), use_tqdm=False)
    eos = runs[1].outputs[0].token_ids[3]
    llm = make(tiny_model(str(tmp_path / "eos"), eos=eos), cache="paged", max_num_seqs=3)  # same weights
    sp = [SamplingParams(temperature=0, max_tokens=16), SamplingParams(temperature=0.8, seed=3, max_tokens=16)]
    sync, _ = both(llm, prompts, [sp[(i + 1) % 2] for i in range(5)], exact=False)
    assert sync[1].outputs[0].finish_reason == "stop" and sync[1].outputs[0].stop_reason == eos


def test_preemption_equal_sync(model_dir):
    for caching in (False, True):
        llm = make(model_dir, cache="paged", max_kv_memory_bytes=12 * BLOCK_BYTES, enable_prefix_caching=caching)
        prompts = rand_prompts([10, 6, 13, 8, 3, 11])
        sched = llm._core.scheduler
        pre0 = sched.num_preemptions
        both(llm, prompts, mixed_params(6), exact=False)
        assert sched.num_preemptions > pre0


def test_chunked_prefill_and_prefix_cache_equal_sync(model_dir):
    llm = make(model_dir, cache="paged", max_step_tokens=8)
    head = rand_prompts([21])[0]
    prompts = rand_prompts([30, 3, 21]) + [head + t for t in rand_prompts([3, 7, 1])] + [head]
    sync, _ = both(llm, prompts, mixed_params(len(prompts)), exact=False)
    assert any(o.num_cached_tokens > 0 for o in sync)  # the shared head was found in the cache
    for cache in ("static", "paged"):  # against a fresh synchronous LLM without prefix cache or chunks
        ref = LLM(model_dir, cache=cache, progress=False, async_scheduling=False,
                  **({"enable_prefix_caching": False} if cache == "paged" else {}))
        want = ref.generate(prompts, mixed_params(len(prompts)), use_tqdm=False)
        assert [[c.token_ids for c in o.outputs] for o in want] == [[c.token_ids for c in o.outputs] for o in sync]


def test_n_samples_logprobs_equal_sync(model_dir):
    llm = make(model_dir, cache="paged", max_num_seqs=5)
    prompts = rand_prompts([6, 11])
    sp = [SamplingParams(n=4, temperature=1.0, max_tokens=10, seed=99, logprobs=2, stop=["Xy"]),
          SamplingParams(n=3, temperature=0.7, top_k=0, max_tokens=7, ignore_eos=True, seed=7)]
    sync, _ = both(llm, prompts, sp, exact=False)
    assert len({tuple(c.token_ids) for c in sync[0].outputs}) > 1


def test_min_tokens_and_penalties_fall_back_to_sync_steps(model_dir):
    llm = make(model_dir, cache="paged")
    prompts = rand_prompts([8, 5, 12])
    full = llm.generate(prompts[0], SamplingParams(temperature=0, max_tokens=12, ignore_eos=True))
    stop = full[0].outputs[0].token_ids[2]
    held = [SamplingParams(temperature=0, max_tokens=12, stop_token_ids=[stop], min_tokens=5)] * 3
    both(llm, prompts, held)  # the steps after min_tokens overlap again
    pen = SamplingParams(temperature=0.8, seed=1, max_tokens=12, repetition_penalty=2.0, frequency_penalty=1.0)
    both(llm, prompts, [pen] * 3, overlapped=False)  # the penalties read output ids on the host: no overlap
    # mixed with others: no overlap while the penalized request runs, overlap again once it is done
    both(llm, prompts[:2], [dataclasses.replace(pen, max_tokens=3), SamplingParams(temperature=0, max_tokens=12,
                                                                                ignore_eos=True)])
    assert llm.engine.fed_while_penalized == 0 and sum(llm.engine.penalized) > 0


def test_stream_and_abort_from_another_thread(model_dir):
    llm = make(model_dir, cache="paged", max_num_seqs=4)
    prompt = rand_prompts([13])[0]
    sp = SamplingParams(temperature=0.6, seed=4, max_tokens=20, stop=["zz"])
    snaps = {}
    for mode in (False, True):
        llm.reset_cache()
        llm.async_scheduling = mode
        snaps[mode] = [(s.outputs[0].token_ids, s.outputs[0].text, s.finished) for s in llm.stream(prompt, sp)]
    assert snaps[True] == snaps[False] and snaps[True][-1][2]
    # An abort from another thread while steps overlap: the others finish as when run alone, blocks come back.
    llm.async_scheduling = True
    others = rand_prompts([7, 4])
    want = llm.generate(others, SamplingParams(temperature=0, max_tokens=30, ignore_eos=True), use_tqdm=False)
    got, started = {}, threading.Event()

    def long():
        for i, s in enumerate(llm.stream(prompt, SamplingParams(temperature=0, max_tokens=200, ignore_eos=True))):
            if i == 3:
                started.set()
                break  # the generator's exit aborts the request

    def rest():
        started.wait(60)
        got["rest"] = llm.generate(others, SamplingParams(temperature=0, max_tokens=30, ignore_eos=True),
                                   use_tqdm=False)

    threads = [threading.Thread(target=long), threading.Thread(target=rest)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert [o.outputs[0].token_ids for o in got["rest"]] == [o.outputs[0].token_ids for o in want]
    llm._core.call(lambda: None)
    assert llm._core.scheduler.bm.num_free == llm._core.scheduler.bm.num_blocks


def test_switch_and_environment(model_dir, monkeypatch):
    assert make(model_dir).async_scheduling is True  # the default where the engine can feed ids back
    assert make(model_dir, async_scheduling=False).async_scheduling is False
    monkeypatch.setenv("INFINILM_ASYNC_SCHEDULING", "0")
    assert make(model_dir).async_scheduling is False
    assert make(model_dir, async_scheduling=True).async_scheduling is True
    monkeypatch.setenv("INFINILM_ASYNC_SCHEDULING", "maybe")
    with pytest.raises(ValueError, match="INFINILM_ASYNC_SCHEDULING must be 0 or 1, got 'maybe'"):
        make(model_dir)
    monkeypatch.delenv("INFINILM_ASYNC_SCHEDULING")
    llm = make(model_dir)
    with pytest.raises(TypeError, match="async_scheduling must be a bool or None, got 'yes'"):
        llm.async_scheduling = "yes"
    from infinilm_torch.serving.frontend import async_scheduling_arg

    old = types.SimpleNamespace(InferEngine=types.SimpleNamespace(Input=lambda: types.SimpleNamespace()))
    assert async_scheduling_arg(None, old) is False  # an engine without prev_output: synchronous steps
    with pytest.raises(ValueError, match="async_scheduling=True needs an engine whose Input takes prev_output"):
        async_scheduling_arg(True, old)


def test_smollm2_text_equal_sync():
    pytest.importorskip("gguf")
    from infinilm_torch.loaders import default_model

    try:
        path = default_model()
    except FileNotFoundError as e:
        pytest.skip(str(e))
    for cache in ("static", "paged"):
        llm = make(path, cache=cache, block_size=16, max_batch_size=3, max_cache_len=128)
        prompts = [llm.render_chat([{"role": "user", "content": q}]) for q in
                   ("What is the capital of France?", "Name three colors.", "Count to five.", "Say hi.")]
        sp = [SamplingParams(temperature=0, max_tokens=24, stop=["."]),
              SamplingParams(temperature=0.7, seed=5, max_tokens=20, logprobs=2),
              SamplingParams(temperature=0, max_tokens=12),
              SamplingParams(temperature=0.9, seed=8, max_tokens=24, stop=[","])]
        sync, _ = both(llm, prompts, sp, exact=False)
        assert any(o.outputs[0].text.strip() for o in sync)
