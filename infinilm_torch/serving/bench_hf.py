"""transformers baselines for bench-throughput: continuous batching (``generate_batch``'s manager) and padded ``generate``.

Both run the same requests (prompt ids, per-request output lengths, ignore_eos) with the same sampling
(temperature 0.6, no top-k / top-p) on the same weights, device and dtype as the engine. Time counts from the
first request handed over to the last token back; the continuous-batching manager's own setup (cache
allocation, warm-up) is timed and printed apart, as the engine's warm-up is.
"""
from __future__ import annotations

import gc
import inspect
import os
import time
from typing import Callable, List, Optional

import torch

Line = Callable[..., None]


def load(model: str, dtype, device, attn: str):
    import transformers

    transformers.utils.logging.disable_progress_bar()
    kw = dict(dtype=dtype, attn_implementation=attn)
    if str(model).endswith(".gguf"):
        kw["gguf_file"] = os.path.basename(model)
        model = os.path.dirname(model) or "."
    return transformers.AutoModelForCausalLM.from_pretrained(model, **kw).to(device).eval()


def free() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _gen_config(max_new: int):
    from transformers import GenerationConfig

    # eos -1: no stop token (ignore_eos); the requests' lengths alone end them.
    return GenerationConfig(max_new_tokens=max_new, do_sample=True, temperature=0.6, top_k=0, top_p=1.0,
                            eos_token_id=-1, pad_token_id=0)


def _accepts(fn, name: str) -> bool:
    try:
        return name in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False


def _finished(result) -> bool:
    done = getattr(result, "is_finished", None)
    if callable(done):
        return bool(done())
    return str(getattr(result, "status", "")).upper().endswith("FINISHED")


def continuous_batching(model: str, dtype, device, prompts: List[List[int]], outs: List[int], attn: str,
                        line: Line, num_blocks: Optional[int] = None) -> None:
    """transformers' continuous batching: one request per prompt with its own max_new_tokens, as generate_batch
    submits them (generate_batch itself takes one max_new_tokens for all; used when the manager API differs).
    ``num_blocks``: the manager's cache size in pages (default: transformers sizes it from free memory)."""
    try:
        hf = load(model, dtype, device, attn)
    except (ValueError, ImportError) as e:  # e.g. a transformers release without the "paged|" prefix
        fallback = attn.split("|")[-1]
        if fallback == attn:
            raise
        print(f"attn_implementation {attn!r} refused ({str(e).splitlines()[0]}); using {fallback!r}")
        attn, hf = fallback, load(model, dtype, device, fallback)
    cfg = _gen_config(max(outs))
    name = f"HF generate_batch ({attn})"
    if hasattr(hf, "continuous_batching_context_manager") and _accepts(hf.continuous_batching_context_manager, "block"):
        kw = dict(generation_config=cfg, block=True, timeout=10)
        if num_blocks is not None:
            from transformers.generation.configuration_utils import ContinuousBatchingConfig

            kw["continuous_batching_config"] = ContinuousBatchingConfig(num_blocks=num_blocks)
        if _accepts(hf.continuous_batching_context_manager, "workload_hints"):
            try:  # the sizing hints generate_batch gives
                from transformers.generation.continuous_batching.utils import WorkloadHints

                kw["workload_hints"] = WorkloadHints(max_prompt_length=max(len(p) for p in prompts),
                                                     max_generated_length=max(outs), num_requests=len(prompts))
            except (ImportError, TypeError):
                pass
        t0 = time.perf_counter()
        with torch.no_grad(), hf.continuous_batching_context_manager(**kw) as manager:
            setup = time.perf_counter() - t0
            eos = {"eos_token_id": -1} if _accepts(manager.add_request, "eos_token_id") else {}
            t0 = time.perf_counter()
            ids = {manager.add_request(input_ids=p, max_new_tokens=n, **eos): n for p, n in zip(prompts, outs)}
            got, errors = {}, 0
            while len(got) < len(ids):
                r = manager.get_result(timeout=1)
                if r is None:
                    if not getattr(manager, "is_running", lambda: True)():
                        raise RuntimeError(f"{name}: the generation thread stopped with {len(got)} of {len(ids)} done")
                    continue
                if _finished(r):
                    got[r.request_id] = len(r.generated_tokens)
                    errors += getattr(r, "error", None) is not None
            dt = time.perf_counter() - t0
        tokens = sum(min(got[i], n) for i, n in ids.items())
        line(name, len(prompts), tokens, dt, f"  (manager setup {setup:.1f} s{f', {errors} errors' if errors else ''})")
    else:
        t0 = time.perf_counter()
        with torch.no_grad():
            res = hf.generate_batch(inputs=prompts, generation_config=cfg, progress_bar=False)
        dt = time.perf_counter() - t0
        tokens = sum(len(r.generated_tokens) for r in res.values())
        line(name, len(prompts), tokens, dt, f"  (one max_new_tokens={max(outs)} for all; setup included)")
    del hf
    free()


def padded_generate(model: str, dtype, device, prompts: List[List[int]], outs: List[int], batch: int,
                    line: Line) -> None:
    """transformers' generate over left-padded batches of ``batch`` requests in arrival order; each batch runs to
    its longest request; only the tokens the requests asked for are counted."""
    hf = load(model, dtype, device, "sdpa")
    t0, useful = time.perf_counter(), 0
    with torch.no_grad():
        for i in range(0, len(prompts), batch):
            ps, ns = prompts[i:i + batch], outs[i:i + batch]
            width = max(len(p) for p in ps)
            ids = torch.tensor([[0] * (width - len(p)) + p for p in ps], device=device)
            mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in ps], device=device)
            n = max(ns)
            hf.generate(ids, attention_mask=mask, max_new_tokens=n, min_new_tokens=n, do_sample=True,
                        temperature=0.6, top_k=0, top_p=1.0, pad_token_id=0)
            useful += sum(ns)
    line(f"HF generate (padded, batch {batch})", len(prompts), useful, time.perf_counter() - t0)
    del hf
    free()
