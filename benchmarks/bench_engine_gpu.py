"""The CUDA table of bench_engine.py: engine vs gpt-fast's method in one run (decode, first token, 8k context,
peak memory) and the --profile summary. Random weights of --model-shape; greedy; bf16 by default."""
import itertools
import os
import time
from unittest import mock

import torch

import engine_steps
from engine_steps import GptFast, engine_decode, engine_ttft_ms
from infinilm_torch.lib import _infinilm

HEAD = (f"{'row':<44} | {'batch':>5} | {'context':>7} | {'tok/s':>9} | {'ms/step':>7} | {'TTFT ms':>7} | "
        f"{'vs gpt-fast':>11} | {'peak GB':>7}")


class Peak:
    """Peak bytes allocated above what was live when the row started (torch.cuda.max_memory_allocated), plus
    `extra` already resident that the row uses (the HF weights for gpt-fast's rows)."""

    def __init__(self, extra=0):
        self.extra = extra

    def __enter__(self):
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        self.start = torch.cuda.memory_allocated()
        return self

    def __exit__(self, *exc):
        torch.cuda.synchronize()
        self.gb = (torch.cuda.max_memory_allocated() - self.start + self.extra) / 1e9


def row(name, B, ctx, tps=None, ttft=None, base=None, peak=None):
    f = lambda v, fmt: format(v, fmt) if v is not None else "-"  # noqa: E731
    ms = 1e3 * B / tps if tps else None
    ratio = f"{tps / base:.2f}x" if tps and base else "-"
    print(f"{name:<44} | {B:>5} | {ctx:>7} | {f(tps, '9.1f'):>9} | {f(ms, '7.3f'):>7} | {f(ttft, '7.2f'):>7} | "
          f"{ratio:>11} | {f(peak, '7.2f'):>7}", flush=True)


def make_engine(ec, model, cache_config):
    engine = _infinilm.InferEngine(ec, _infinilm.DistConfig(1), "cuda", cache_config)
    for name, t in model.state_dict().items():
        engine.load_param(name, t)
    return engine


def paged_config(ec, a, blocks, block_size=16):
    per_block = _infinilm.kv_block_bytes(a.layers, a.kv_heads, a.hidden // a.heads, a.dtype, block_size)
    return _infinilm.PagedKVCacheConfig(blocks * per_block, block_size)


def best(fn, repeats):
    fn()  # warm-up: graphs captured (engine), compiled and recorded (gpt-fast)
    return max(fn() for _ in range(repeats))


def gpt_fast_rows(model, wbytes, ids, new, repeats, ctx):
    with Peak(wbytes) as pk:
        g = GptFast(model, ids.shape[1] + new + 1)
        g.decode(ids, new)  # compile; reduce-overhead records its graphs on the next calls
        tps = best(lambda: g.decode(ids, new), repeats)
    del g
    row("gpt-fast's method (HF StaticCache, compiled)", ids.shape[0], ctx, tps, peak=pk.gb)
    return tps


def main_gpu(a, build_random):
    t_start = time.perf_counter()
    torch.backends.cuda.matmul.allow_tf32 = True
    max_ctx = max([a.prompt_len, a.long_context, *a.ttft]) + a.new_tokens + 1
    model, ec, wbytes = build_random(a, "cuda", max_pos=max(2048, max_ctx))
    gpt_fast = a.gpt_fast != "off"
    for name, value in (("cache_size_limit", 64), ("recompile_limit", 64)):
        if hasattr(torch._dynamo.config, name):
            setattr(torch._dynamo.config, name, value)
    print(f"{a.model_shape or 'custom'} shapes ({wbytes / 1e9:.2f} GB of {a.dtype} weights), "
          f"{torch.cuda.get_device_name()}, torch {torch.__version__}; prompt {a.prompt_len}, {a.new_tokens} new "
          f"tokens, greedy, best of {a.repeats}; engine: CUDA graphs {'on' if 'on' in a.cuda_graphs else 'off'}; "
          f"peak GB: max_memory_allocated above the row's start (+ the HF weights for gpt-fast)")
    print(HEAD)
    print("-" * len(HEAD))
    for B in a.batch:
        ids = torch.randint(0, a.vocab, (B, a.prompt_len))
        base = gpt_fast_rows(model, wbytes, ids.cuda(), a.new_tokens, a.repeats, a.prompt_len) if gpt_fast else None
        if a.hf:
            from bench_engine import hf_decode_tok_s

            row("HF generate (eager, dynamic cache)", B, a.prompt_len,
                hf_decode_tok_s(model, ids.cuda(), a.new_tokens, "cuda"), base=base)
        for graphs, pf in itertools.product(a.cuda_graphs, a.l2_prefetch or [None]):
            # INFINILM_L2_PREFETCH=pf around the row (None: as it is): a graph keeps the mode set when it is recorded
            with Peak() as pk, mock.patch.dict(os.environ, {} if pf is None else {"INFINILM_L2_PREFETCH": pf}):
                engine = make_engine(ec, model, _infinilm.StaticKVCacheConfig(B, a.prompt_len + a.new_tokens + 1))
                engine.enable_cuda_graphs(graphs == "on")
                res = {m: best(lambda: engine_decode(engine, ids, a.new_tokens, m), a.repeats) for m in a.modes}
            label = "" if pf is None else f", L2 prefetch {pf}"
            for m, tps in res.items():
                row(f"engine, static cache, graphs {graphs}, {m}{label}", B, a.prompt_len, tps, base=base, peak=pk.gb)
            del engine
    long_engine = None
    if a.ttft or a.long_context:
        with Peak() as pk:
            long_engine = make_engine(ec, model, _infinilm.StaticKVCacheConfig(max(1, a.long_batch), max_ctx))
    for S in a.ttft:
        ids = torch.randint(0, a.vocab, (1, S))
        with Peak(wbytes) as pk_hf:
            ref = GptFast(model, S + 1, compile_step=False).ttft_ms(ids.cuda(), a.repeats)
        row("HF prefill (eager sdpa, StaticCache)", 1, S, ttft=ref, peak=pk_hf.gb)
        with Peak() as pk_e:
            ms = engine_ttft_ms(long_engine, ids, a.repeats)
        row(f"engine prefill (first token {ref / ms:.2f}x faster)", 1, S, ttft=ms, peak=pk.gb + pk_e.gb)
    if a.long_context:
        B, L = a.long_batch, a.long_context
        ids = torch.randint(0, a.vocab, (B, L))
        base = gpt_fast_rows(model, wbytes, ids.cuda(), a.new_tokens, a.repeats, L) if gpt_fast else None
        with Peak() as pk_s:
            res = {m: best(lambda: engine_decode(long_engine, ids, a.new_tokens, m), a.repeats) for m in a.modes}
        for m, tps in res.items():
            row(f"engine, static cache, {m}", B, L, tps, base=base, peak=pk.gb + pk_s.gb)
        del long_engine
        long_engine = None
        blocks = B * -(-(L + a.new_tokens) // 16) + 1
        with Peak() as pk_p:
            engine = make_engine(ec, model, paged_config(ec, a, blocks))
            tps = best(lambda: engine_decode(engine, ids, a.new_tokens, a.modes[-1], block_size=16), a.repeats)
        row(f"engine, paged cache (16-token blocks), {a.modes[-1]}", B, L, tps, base=base, peak=pk_p.gb)
        del engine
    if a.profile:
        engine = make_engine(ec, model, _infinilm.StaticKVCacheConfig(1, a.prompt_len + 64))
        ids = torch.randint(0, a.vocab, (1, a.prompt_len))
        for m in a.modes:
            engine_steps.print_profile(f"engine, batch 1, {m}", engine_steps.profile_decode(engine, ids, 32, m))
        del engine
    print(f"\ntotal {time.perf_counter() - t_start:.0f} s")

