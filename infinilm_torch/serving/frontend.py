"""LLM.generate / LLM.chat (vLLM's signatures) and the argument checks of the LLM constructor.

generate submits every request to the engine loop and waits; outputs come back in input order.
"""
from __future__ import annotations

import itertools
import operator
import os
import queue
import sys
import time
from typing import List, Optional, Sequence, Union

import torch

from infinilm_torch.serving.block_manager import BlockManager
from infinilm_torch.serving.engine_core import EngineCore, Request
from infinilm_torch.serving.params import RequestOutput, SamplingParams
from infinilm_torch.serving.scheduler import PagedScheduler, StaticScheduler

_request_ids = itertools.count()
MAX_LOGPROBS = 20  # vLLM's default max_logprobs


def _pos_int(name, v, allow_none=False, minimum=1):
    if v is None and allow_none:
        return
    if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
        raise ValueError(f"LLM: {name} must be an int >= {minimum}, got {v!r}")


def check_engine_args(cache, block_size, max_batch_size, max_cache_len, max_kv_memory_bytes, max_num_seqs,
                      max_step_tokens, max_num_batched_tokens, tp_size) -> int:
    """Validate the constructor's cache and scheduler arguments; returns the per-step token budget."""
    if cache not in ("static", "paged"):
        raise ValueError(f"LLM: cache must be 'static' or 'paged', got {cache!r}")
    _pos_int("block_size", block_size)
    _pos_int("max_batch_size", max_batch_size)
    _pos_int("max_cache_len", max_cache_len, allow_none=True)
    _pos_int("max_kv_memory_bytes", max_kv_memory_bytes, allow_none=True)
    _pos_int("max_num_seqs", max_num_seqs)
    _pos_int("max_step_tokens", max_step_tokens, allow_none=True)
    _pos_int("max_num_batched_tokens", max_num_batched_tokens, allow_none=True)
    _pos_int("tp_size", tp_size)
    if max_step_tokens is not None and max_num_batched_tokens is not None and max_step_tokens != max_num_batched_tokens:
        raise ValueError(f"LLM: max_step_tokens ({max_step_tokens}) and its vLLM name max_num_batched_tokens "
                         f"({max_num_batched_tokens}) disagree; give one")
    return max_step_tokens or max_num_batched_tokens or 8192


ASYNC_ENV = "INFINILM_ASYNC_SCHEDULING"


def async_scheduling_arg(value, lib) -> bool:
    """LLM's async_scheduling: a bool, or None for the environment's choice (else on when the engine can)."""
    able = hasattr(lib.InferEngine.Input(), "prev_output")
    if value is None:
        env = os.environ.get(ASYNC_ENV, "").strip().lower()
        if env not in ("", "0", "1", "false", "true", "off", "on"):
            raise ValueError(f"{ASYNC_ENV} must be 0 or 1, got {os.environ[ASYNC_ENV]!r}")
        value = able if env == "" else env in ("1", "true", "on")
    if not isinstance(value, bool):
        raise TypeError(f"LLM: async_scheduling must be a bool or None, got {value!r}")
    if value and not able:
        raise ValueError("LLM: async_scheduling=True needs an engine whose Input takes prev_output (rebuild the "
                         "extension)")
    return value


def make_core(llm, async_scheduling: bool = False) -> EngineCore:
    if llm.cache_kind == "static":
        sched = StaticScheduler(llm.max_batch_size, llm.max_cache_len, llm._grow_static)
    else:
        sched = PagedScheduler(BlockManager(llm.num_blocks, llm.block_size, llm.enable_prefix_caching),
                               llm.max_num_seqs, llm.max_step_tokens)
    return EngineCore(llm, sched, async_scheduling)


def _token_ids(prompt, what: str) -> List[int]:
    if isinstance(prompt, torch.Tensor) or type(prompt).__module__ == "numpy":
        if getattr(prompt, "ndim", 1) != 1:
            raise ValueError(f"{what}: a token-id array must be 1-D, got shape {tuple(prompt.shape)}")
        prompt = prompt.tolist()
    ids = []
    for t in prompt:
        if isinstance(t, bool):
            raise TypeError(f"{what}: token ids must be ints, got {t!r}")
        try:
            ids.append(operator.index(t))
        except TypeError:
            raise TypeError(f"{what}: token ids must be ints, got {t!r} ({type(t).__name__})") from None
    return ids


def _is_scalar(x) -> bool:
    return not isinstance(x, (str, dict, list, tuple)) and getattr(x, "ndim", 0) == 0


def _is_single(prompts) -> bool:
    """One prompt (text, dict, 1-D ids) rather than a list of prompts."""
    if isinstance(prompts, (str, dict)):
        return True
    if isinstance(prompts, torch.Tensor) or type(prompts).__module__ == "numpy":
        return getattr(prompts, "ndim", 1) == 1
    if isinstance(prompts, (list, tuple)):
        return len(prompts) > 0 and _is_scalar(prompts[0])
    raise TypeError(f"prompts must be a str, a list of token ids, a dict with 'prompt_token_ids', or a list of "
                    f"those; got {type(prompts).__name__}")


class GenerateMixin:
    """generate/chat/encode/decode for LLM (needs .tokenizer, .fields, ._core, .max_model_len)."""

    def encode(self, prompt, what: str = "prompt") -> List[int]:
        if isinstance(prompt, dict):
            if "prompt_token_ids" in prompt:
                prompt = prompt["prompt_token_ids"]
            elif "prompt" in prompt:
                prompt = prompt["prompt"]
            else:
                raise ValueError(f"{what}: a dict prompt needs 'prompt_token_ids' or 'prompt', got keys {list(prompt)}")
        if isinstance(prompt, str):
            if self.tokenizer is None:
                raise ValueError("this model has no tokenizer: pass token ids instead of text")
            ids = self.tokenizer.encode(prompt)
        else:
            ids = _token_ids(prompt, what)
        vocab = self.fields["vocab_size"]
        if not ids:
            raise ValueError(f"empty {what}: a prompt needs at least one token")
        bad = [t for t in ids if not 0 <= t < vocab]
        if bad:
            raise ValueError(f"{what} token ids {bad[:5]} are out of range [0, {vocab})")
        return ids

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        if self.tokenizer is None:
            return ""
        return self.tokenizer.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def make_request(self, prompt, params: SamplingParams, sink, stream=False, request_id=None,
                     what="prompt") -> Request:
        """A validated request (raises before anything is queued)."""
        if not isinstance(params, SamplingParams):
            raise TypeError(f"sampling_params must be a SamplingParams, got {type(params).__name__}")
        params.validate()
        if params.logprobs is not None and params.logprobs > MAX_LOGPROBS:
            raise ValueError(f"logprobs must be <= {MAX_LOGPROBS} (vLLM's max_logprobs), got {params.logprobs}")
        text = prompt if isinstance(prompt, str) else prompt.get("prompt") if isinstance(prompt, dict) else None
        ids = self.encode(prompt, what)
        new = params.max_tokens if params.max_tokens is not None else 1
        if len(ids) + new - 1 > self.max_model_len:
            raise ValueError(f"{what} ({len(ids)} tokens) + max_tokens ({new}) - 1 = {len(ids) + new - 1} positions "
                             f"exceeds the model's max_position_embeddings {self.max_model_len}")
        rid = str(next(_request_ids)) if request_id is None else request_id
        return Request(rid, text, ids, params, sink, stream)

    def generate(self, prompts, sampling_params: Union[SamplingParams, Sequence[SamplingParams], None] = None,
                 use_tqdm: bool = True, **legacy) -> List[RequestOutput]:
        """Generate for one prompt or a list (str, token ids, or {"prompt_token_ids": [...]}); one RequestOutput
        per prompt, in input order. ``sampling_params``: one for all prompts, or one per prompt."""
        if legacy:
            raise TypeError(f"generate() got unexpected keyword arguments {sorted(legacy)}: sampling settings go in "
                            f"a SamplingParams (max_new_tokens is SamplingParams(max_tokens=...), stop_at_eos=False "
                            f"is ignore_eos=True)")
        batch = [prompts] if _is_single(prompts) else list(prompts)
        if not batch:
            raise ValueError("generate: no prompts given")
        if sampling_params is None:
            sampling_params = SamplingParams()
        if isinstance(sampling_params, SamplingParams):
            params = [sampling_params] * len(batch)
        else:
            params = list(sampling_params)
            if len(params) != len(batch):
                raise ValueError(f"generate: {len(params)} sampling_params for {len(batch)} prompts")
        done: "queue.Queue" = queue.Queue()
        reqs = [self.make_request(p, sp, lambda o, e, i=i: done.put((i, o, e)), what=f"prompt {i}")
                for i, (p, sp) in enumerate(zip(batch, params))]
        t0 = time.perf_counter()
        steps0 = self._core.steps
        for r in reqs:
            self._core.submit(r)
        results: List[Optional[RequestOutput]] = [None] * len(reqs)
        error = None
        bar = _progress(len(reqs), use_tqdm)
        try:
            for _ in range(len(reqs)):
                i, out, err = done.get()
                if err is not None and error is None:
                    error = err
                results[i] = out
                if bar is not None:
                    bar.update(1)
        except BaseException:
            for r in reqs:
                self._core.abort(r.request_id)
            raise
        finally:
            if bar is not None:
                bar.close()
        if error is not None:
            raise error
        self.last_stats = _stats(results, time.perf_counter() - t0, self._core.steps - steps0)
        return results

    def stream(self, prompt, sampling_params: Optional[SamplingParams] = None):
        """One request's RequestOutput snapshots as tokens arrive (cumulative text; the last one is finished)."""
        q: "queue.Queue" = queue.Queue()
        req = self.make_request(prompt, sampling_params or SamplingParams(), lambda o, e: q.put((o, e)), stream=True)
        self._core.submit(req)
        try:
            while True:
                out, err = q.get()
                if err is not None:
                    raise err
                yield out
                if out.finished:
                    return
        finally:
            self._core.abort(req.request_id)  # a no-op once finished

    def chat(self, messages, sampling_params=None, use_tqdm: bool = True, add_generation_prompt: bool = True,
             chat_template: Optional[str] = None) -> List[RequestOutput]:
        """vLLM's LLM.chat: one conversation (a list of {"role", "content"}) or a list of them, rendered with the
        model's chat template (or ``chat_template``)."""
        if not isinstance(messages, (list, tuple)) or not messages:
            raise ValueError("chat: messages must be a non-empty list of {'role', 'content'} dicts (or of such lists)")
        convs = [messages] if isinstance(messages[0], dict) else list(messages)
        prompts = [self.render_chat(c, add_generation_prompt, chat_template) for c in convs]
        return self.generate(prompts, sampling_params, use_tqdm=use_tqdm)

    def render_chat(self, conv, add_generation_prompt: bool = True, chat_template: Optional[str] = None) -> dict:
        """A chat as a prompt: {"prompt": rendered text, "prompt_token_ids": its ids (the template wrote the
        special tokens, so the tokenizer adds none)}."""
        if not isinstance(conv, (list, tuple)) or not conv:
            raise ValueError(f"chat: a conversation must be a non-empty list of messages, got {conv!r}")
        for m in conv:
            if not isinstance(m, dict) or "role" not in m or "content" not in m:
                raise ValueError(f"chat: each message needs 'role' and 'content', got {m!r}")
        tok = self.tokenizer
        if tok is None:
            raise ValueError("chat needs a tokenizer with a chat template; this model has none")
        if chat_template is not None:
            from infinilm_torch.loaders.chat_template import render

            text = render(chat_template, list(conv), add_generation_prompt=add_generation_prompt,
                          special_tokens=tok.special_tokens)
        else:
            text = tok.apply_chat_template(list(conv), add_generation_prompt=add_generation_prompt)
        return {"prompt": text, "prompt_token_ids": tok.encode(text, add_special_tokens=False)}


def _progress(total: int, use_tqdm: bool):
    # A bar only on a terminal: piped output gets no carriage-return fragments.
    if not use_tqdm or total < 2 or not sys.stderr.isatty():
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="Processed prompts", unit="req", dynamic_ncols=True)


def _stats(results: List[RequestOutput], seconds: float, steps: int):
    from infinilm_torch.runner import RunStats

    s = RunStats(requests=len(results), prompt_tokens=sum(len(r.prompt_token_ids) for r in results),
                 generated_tokens=sum(len(o.token_ids) for r in results for o in r.outputs), steps=steps,
                 total_s=seconds)
    firsts = [r.metrics["first_token"] - r.metrics["arrival"] for r in results if "first_token" in r.metrics]
    s.first_step_s = min(firsts) if firsts else 0.0
    return s
