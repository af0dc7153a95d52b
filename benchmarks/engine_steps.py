"""Decode loops timed by bench_engine.py: the engine (synchronous / non-blocking, static / paged cache), gpt-fast's
method on the HF model (StaticCache, compiled reduce-overhead decode step), prefill latency, and a profile.

gpt-fast's method (pytorch-labs/gpt-fast generate.py): an eager prefill into a static cache, then a hand-written
loop calling ``torch.compile(decode_one_token, mode="reduce-overhead", fullgraph=True)`` (CUDA graphs) with the
cache position as a device tensor bumped in place, greedy argmax on the device; tokens stay on the device until
the end. Here the HF model's forward with a transformers StaticCache is what the step calls.
"""
import collections
import inspect
import json
import os
import statistics
import tempfile
import time

import torch

from infinilm_torch.lib import _infinilm

Input = _infinilm.InferEngine.Input


def sync(device):
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


# ---------------------------------------------------------------------------------------------- the engine
class Feeds:
    """Per-step Input fields for B requests of S prompt tokens: a static cache (row b = request b) or a paged
    one (request b owns blocks b*m .. b*m+m-1, m blocks of block_size covering S + n_new)."""

    def __init__(self, B, S, n_new, block_size=None):
        self.B, self.S, self.bs = B, S, block_size
        if block_size:
            self.m = -(-(S + n_new) // block_size)
            self.tables = torch.arange(B * self.m, dtype=torch.long).view(B, self.m)
            self.base = torch.arange(B, dtype=torch.long) * self.m * block_size

    def prefill(self, ids):
        if not self.bs:
            return dict(input_ids=ids)
        slots = (self.base[:, None] + torch.arange(self.S)[None, :]).reshape(-1)
        return dict(input_ids=ids.reshape(1, -1), input_lengths=torch.full((self.B,), self.S, dtype=torch.long),
                    block_tables=self.tables, slot_mapping=slots)

    def decode(self, step):
        cache = torch.full((self.B,), self.S + step, dtype=torch.long)
        if not self.bs:
            return dict(cache_lengths=cache)
        return dict(cache_lengths=cache, input_lengths=torch.ones(self.B, dtype=torch.long), block_tables=self.tables,
                    slot_mapping=self.base + self.S + step)


def engine_decode(engine, ids, n_new, mode="sync", block_size=None):
    """Greedy decode tokens/s after the prefill. sync: each step's ids read on the host and fed back (the
    synchronous API). async: each step takes the previous step's device ids (prev_output) and returns at
    once; the host reads step n's ids after queueing step n + 1, as a serving loop would."""
    B, S = ids.shape
    f = Feeds(B, S, n_new, block_size)
    engine.reset_cache()
    nb = mode == "async"
    out = engine.forward(Input(temperature=0.0, non_blocking=nb, **f.prefill(ids)))
    out.wait()
    toks = []
    t = time.perf_counter()
    for step in range(n_new - 1):
        if nb:
            nxt = engine.forward(Input(prev_output=out, temperature=0.0, non_blocking=True, **f.decode(step)))
            toks.append(out.output_ids)
            out = nxt
        else:
            feed = out.output_ids.view(1, -1) if block_size else out.output_ids
            out = engine.forward(Input(input_ids=feed, temperature=0.0, **f.decode(step)))
            toks.append(out.output_ids)
    if nb:
        toks.append(out.output_ids)
    return B * (n_new - 1) / (time.perf_counter() - t)


def engine_ttft_ms(engine, ids, repeats=3):
    """Prefill of a fresh request to its first sampled id on the host (ms, median; one warm-up)."""
    times = []
    for _ in range(repeats + 1):
        engine.reset_cache()
        sync("cuda" if torch.cuda.is_available() else "cpu")
        t = time.perf_counter()
        engine.forward(Input(input_ids=ids, temperature=0.0)).output_ids
        times.append(time.perf_counter() - t)
    return 1e3 * statistics.median(times[1:])


# ---------------------------------------------------------------------------------------------- gpt-fast
class GptFast:
    """HF model + one StaticCache of max_cache_len (addresses fixed for the CUDA graphs) + the compiled step."""

    def __init__(self, model, max_cache_len, compile_step=True):
        import transformers

        self.model, self.device = model, next(model.parameters()).device
        self.cache = transformers.StaticCache(config=model.config, max_cache_len=max_cache_len)
        params = inspect.signature(model.forward).parameters
        self.cache_kw = "cache" if "cache" in params else "past_key_values"  # renamed in transformers 5.2x
        self.with_cache_position = "cache_position" in params
        mode = "reduce-overhead" if self.device.type == "cuda" else "default"
        self.step = torch.compile(self._step, mode=mode, fullgraph=True) if compile_step else self._step

    def _logits(self, ids, pos):
        kw = {self.cache_kw: self.cache}
        if self.with_cache_position:
            kw["cache_position"] = pos
        return self.model(input_ids=ids, position_ids=pos[None, :].expand(ids.shape[0], -1), use_cache=True,
                          logits_to_keep=1, **kw).logits

    def _step(self, tok, pos):
        return self._logits(tok, pos)[:, -1].argmax(-1, keepdim=True)

    @torch.no_grad()
    def prefill(self, ids):
        self.cache.reset()
        pos = torch.arange(ids.shape[1], device=self.device)
        return self._logits(ids, pos)[:, -1].argmax(-1, keepdim=True)

    @torch.no_grad()
    def decode(self, ids, n_new):
        """Tokens/s of n_new - 1 decode steps after the prefill (the tokens stay on the device)."""
        tok = self.prefill(ids)
        pos = torch.tensor([ids.shape[1]], device=self.device)
        toks = [tok]
        sync(self.device)
        t = time.perf_counter()
        for _ in range(n_new - 1):
            if self.device.type == "cuda":
                torch.compiler.cudagraph_mark_step_begin()
            tok = self.step(tok, pos).clone()
            pos.add_(1)
            toks.append(tok)
        sync(self.device)
        return ids.shape[0] * (n_new - 1) / (time.perf_counter() - t)

    @torch.no_grad()
    def ttft_ms(self, ids, repeats=3):
        times = []
        for _ in range(repeats + 1):
            sync(self.device)
            t = time.perf_counter()
            self.prefill(ids).cpu()
            times.append(time.perf_counter() - t)
        return 1e3 * statistics.median(times[1:])


# ---------------------------------------------------------------------------------------------- profile
FAMILIES = [  # first match wins; kernel names lower-cased
    ("rope+cache", ("rotary_embedding_and_cache", "rope_and_cache", "rope_cache")),  # fused rope + cache write
    ("cache write", ("reshape_and_cache", "index_copy", "indexcopy")),
    ("attention", ("paged_decode", "paged_prefill", "attention", "attn", "flash", "fmha", "sdpa")),
    ("norm", ("rms_norm", "layer_norm", "norm")),
    ("rope", ("rotary", "rope")),
    ("silu", ("silu", "act_and_mul", "swiglu")),
    ("sampling", ("sample", "argmax", "topk", "top_k", "sort", "logprob")),
    ("GEMM", ("gemm", "gemv", "cutlass", "nvjet", "xmma", "cublas", "splitk", "matmul", "dot_kernel")),
]


def family(name, cat):
    if cat in ("gpu_memcpy", "gpu_memset"):
        return "copy"
    low = name.lower()
    return next((fam for fam, keys in FAMILIES if any(k in low for k in keys)), "other")


def profile_decode(engine, ids, steps=32, mode="async"):
    """torch.profiler over `steps` batch-B decode steps in steady state: per step, µs of GPU time per kernel
    family, the GPU span (first kernel start to last kernel end), its idle part, and the host wall time."""
    from torch.profiler import ProfilerActivity, profile

    B, S = ids.shape
    dev = "cuda" if engine.device.startswith("cuda") else "cpu"
    f = Feeds(B, S, steps + 2)
    engine_decode(engine, ids, steps + 2, mode)  # warm-up: graphs captured
    engine.reset_cache()
    out = engine.forward(Input(temperature=0.0, **f.prefill(ids)))
    out.wait()
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if dev == "cuda" else [])
    with profile(activities=acts) as prof:
        sync(dev)
        t = time.perf_counter()
        queue_s = 0.0  # host time building and queueing steps (the rest: waiting for the device)
        for step in range(steps):
            t0 = time.perf_counter()
            if mode == "async":
                nxt = engine.forward(Input(prev_output=out, temperature=0.0, non_blocking=True, **f.decode(step)))
                queue_s += time.perf_counter() - t0
                out.output_ids
                out = nxt
            else:
                ids_h = out.output_ids
                t0 = time.perf_counter()
                out = engine.forward(Input(input_ids=ids_h, temperature=0.0, **f.decode(step)))
                queue_s += time.perf_counter() - t0  # includes the blocking read of this step's ids
        out.wait()
        wall = time.perf_counter() - t
    path = os.path.join(tempfile.mkdtemp(), "trace.json")
    prof.export_chrome_trace(path)
    with open(path) as fh:
        events = json.load(fh)["traceEvents"]
    gpu = [e for e in events if e.get("cat") in ("kernel", "gpu_memcpy", "gpu_memset") and "dur" in e]
    per, names = collections.Counter(), collections.Counter()
    for e in gpu:
        per[family(e["name"], e["cat"])] += e["dur"]
        names[e["name"][:70]] += e["dur"]
    busy = sum(per.values())
    span = max(e["ts"] + e["dur"] for e in gpu) - min(e["ts"] for e in gpu) if gpu else 0.0
    # Idle time between consecutive GPU events: short gaps are the launch latency between back-to-back kernels
    # (inside a CUDA graph, about a microsecond each); long ones are the GPU waiting for the host.
    gpu.sort(key=lambda e: e["ts"])
    gaps = [b["ts"] - (a["ts"] + a["dur"]) for a, b in zip(gpu, gpu[1:])]
    short = sum(g for g in gaps if 0 < g < 5.0)
    long_ = sum(g for g in gaps if g >= 5.0)
    return dict(families={k: v / steps for k, v in per.items()}, busy_us=busy / steps, span_us=span / steps,
                wall_us=1e6 * wall / steps, queue_us=1e6 * queue_s / steps, kernels=len(gpu) / steps, short_gaps_us=short / steps,
                long_gaps_us=long_ / steps, long_gaps=sum(g >= 5.0 for g in gaps) / steps,
                top=[(n, v / steps) for n, v in names.most_common(10)])


def print_profile(name, p):
    fams = ["GEMM", "attention", "norm", "rope", "silu", "cache write", "rope+cache", "sampling", "copy", "other"]
    print(f"\nprofile ({name}): per decode step, µs of GPU time per kernel family ({p['kernels']:.0f} kernels/step)")
    print(" | ".join(f"{k:>11}" for k in fams))
    print(" | ".join(f"{p['families'].get(k, 0.0):>11.1f}" for k in fams))
    idle = p["span_us"] - p["busy_us"]
    print(f"kernels {p['busy_us']:.1f} µs, GPU span {p['span_us']:.1f} µs, idle gap {idle:.1f} µs "
          f"(GPU busy {100 * p['busy_us'] / max(p['span_us'], 1e-9):.1f}%), host wall {p['wall_us']:.1f} µs/step "
          f"(under the profiler)")
    print(f"idle gap = {p['short_gaps_us']:.1f} µs in gaps < 5 µs between back-to-back kernels (launch latency, "
          f"{p['kernels']:.0f} kernels) + {p['long_gaps_us']:.1f} µs in {p['long_gaps']:.1f} gaps >= 5 µs (waiting "
          f"for the host)")
    print(f"host: {p['queue_us']:.1f} µs/step inside forward (building, checking, queueing; a synchronous step "
          f"also waits there for its ids), the rest of the {p['wall_us']:.1f} µs waiting for the device or in Python")
    print("top kernels (µs/step, family): " + "; ".join(f"{n} {v:.1f} ({family(n, 'kernel')})" for n, v in p["top"]))
