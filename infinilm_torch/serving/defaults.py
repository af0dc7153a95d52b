"""Sampling defaults, in one place: SamplingParams' (vLLM's), the OpenAI server's, the CLI's, and the engine's.

Three sets, because three APIs promise different things:

- ``SAMPLING``: vLLM's ``SamplingParams`` defaults (temperature 1, top-p 1, top-k 0 = off, max_tokens 16, ...).
  ``SamplingParams`` declares its fields with them, and the OpenAI server leaves every field a request body
  omits to them, except chat's ``max_tokens`` (``CHAT_MAX_TOKENS``).
- ``CLI``: ``python -m infinilm_torch generate|chat``: the spec example's sampling (temperature 0.8, top-k 50,
  top-p 0.95), 64 new tokens, seed 0, so a demo reads well and repeats.
- ``engine_input()``: what ``_infinilm.InferEngine.Input`` uses for a scalar left out (csrc/engine/io.h, read
  from the module): temperature 1, **top-k 50** (the spec's), top-p 1. It differs from ``SAMPLING`` in top-k
  only; the front end passes each request's own values (the per-request tensors), so the engine's scalar
  defaults never apply to a SamplingParams request.
"""
from __future__ import annotations

from typing import Any, Dict

SAMPLING: Dict[str, Any] = {
    "n": 1, "temperature": 1.0, "top_p": 1.0, "top_k": 0, "min_p": 0.0, "max_tokens": 16, "min_tokens": 0,
    "ignore_eos": False, "seed": None, "logprobs": None, "repetition_penalty": 1.0, "presence_penalty": 0.0,
    "frequency_penalty": 0.0, "skip_special_tokens": True,
}

# OpenAI's chat completions: no max_tokens (nor max_completion_tokens) means up to the context length.
CHAT_MAX_TOKENS = None

CLI: Dict[str, Any] = {"max_tokens": 64, "temperature": 0.8, "chat_temperature": 0.7, "top_k": 50, "top_p": 0.95,
                       "seed": 0}

_ENGINE_FIELDS = ("temperature", "top_k", "top_p", "return_logits", "seed", "return_logprobs")


def engine_input() -> Dict[str, Any]:
    """The compiled engine's Input defaults: {temperature, top_k, top_p, return_logits, seed, return_logprobs}."""
    from infinilm_torch.lib import _infinilm

    x = _infinilm.InferEngine.Input()
    return {k: getattr(x, k) for k in _ENGINE_FIELDS}
