"""Sequence: one generation (a request with n > 1 has n of them) — its tokens, cache state and stop checks.

With overlapped steps a sampled token may be known only on the device when the next step is planned: it is
``pending`` (counted, not in ``out``) and its place in ``tokens`` holds ``PLACEHOLDER`` until ``resolve``.
"""
from __future__ import annotations

import itertools
from typing import Dict, List, Optional

import torch

from infinilm_torch.serving.params import Logprob, SamplingParams

_ids = itertools.count()
_MASK = (1 << 63) - 1
PLACEHOLDER = -1  # a token sampled by a step still in flight (its id is fed to the next step on the device)


_MIX = (0x9E3779B97F4A7C15, 0xBF58476D1CE4E5B9, 0x94D049BB133111EB, 0xD6E8FEEBDA00E26B)  # SplitMix64 constants


def step_seed(seed: int, step: int) -> int:
    """The seed of a sequence's draw at its own step ``step``: a mix of both, independent of the batch."""
    x = (seed * _MIX[0] + step * _MIX[1] + _MIX[2]) & _MASK
    x ^= x >> 31
    x = (x * _MIX[3]) & _MASK
    return x ^ (x >> 29)


def _signed(c: int) -> int:
    return c - (1 << 64) if c >= 1 << 63 else c


_A, _B, _C, _D = (_signed(c) for c in _MIX)  # the same constants as int64 values, for step_seeds


def step_seeds(seeds: torch.Tensor, steps: torch.Tensor) -> torch.Tensor:
    """``step_seed`` over int64 tensors (products wrap mod 2**64; the 63-bit mask makes the low bits the same)."""
    x = (seeds * _A + steps * _B + _C) & _MASK
    x ^= x >> 31
    x = (x * _D) & _MASK
    return x ^ (x >> 29)


class Sequence:
    def __init__(self, request, index: int, prompt: List[int], params: SamplingParams, seed: int, max_len: int,
                 stop_ids: List[int]):
        self.seq_id = next(_ids)
        self.request, self.index, self.params, self.seed = request, index, params, seed
        self.seed63 = seed & _MASK  # what step_seed reads of it (fits an int64 tensor: step_seeds)
        self.prompt = prompt
        self.out: List[int] = []
        self.tokens: List[int] = list(prompt)  # prompt + out: what the cache must hold (minus the newest token)
        self.num_computed = 0                  # tokens whose KV is in the cache
        self.blocks: List[int] = []
        self.table_row: Optional[int] = None   # its row of the scheduler's BlockTable (paged cache)
        self.table_len = 0                     # leading blocks written into that row
        self.hashed_blocks = 0                 # leading blocks already registered in the prefix cache
        self.slot: Optional[int] = None        # static cache row
        self.in_running = False                # in its scheduler's running list
        self.finish_reason: Optional[str] = None
        self.stop_reason = None
        self.logprobs: Optional[List[Dict[int, Logprob]]] = [] if params.logprobs is not None else None
        self.cumulative_logprob = 0.0 if params.logprobs is not None else None
        self.text = ""
        self.inc_text, self.prefix_offset, self.read_offset = "", 0, 0  # incremental detokenization state
        self.num_cached_prompt = 0
        self.num_pending = 0                   # sampled by steps in flight, not read yet
        self.feed = (-1, 0)                    # (step, output row) whose id the PLACEHOLDER ending tokens takes
        # None: up to the longest sequence that can run (explicit values are checked against it on admission).
        self.max_tokens = params.max_tokens if params.max_tokens is not None else max(1, max_len - len(prompt) + 1)
        self.stop_ids = set(stop_ids)
        # Plain greedy without logprobs: the engine's argmax serves it (read every step; params do not change).
        self.simple = params.greedy and params.plain and params.logprobs is None

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None

    @property
    def num_tokens(self) -> int:
        return len(self.tokens)

    @property
    def final_len(self) -> int:
        """Cache positions this sequence needs at most (its last token is never fed back)."""
        return len(self.prompt) + self.max_tokens - 1

    @property
    def num_known(self) -> int:
        """Leading tokens whose ids the host knows (the rest are placeholders)."""
        return len(self.prompt) + len(self.out)

    def expect(self, step: int, row: int) -> bool:
        """Step ``step`` samples this sequence's next token in output row ``row``. Unless that token is the last
        one (max_tokens), a placeholder makes it schedulable before its id reaches the host; returns whether
        the sequence has more to compute."""
        self.num_pending += 1
        if len(self.out) + self.num_pending < self.max_tokens:
            self.tokens.append(PLACEHOLDER)
            self.feed = (step, row)
            return True
        return False

    def resolve(self, token: int) -> None:
        """The oldest pending token has arrived: it replaces its placeholder (or is appended)."""
        self.num_pending -= 1
        i = self.num_known
        if i < len(self.tokens):
            self.tokens[i] = token
            self.out.append(token)
            self._check_stop(token)
        else:
            self.append(token)

    def append(self, token: int) -> None:
        self.out.append(token)
        self.tokens.append(token)
        self._check_stop(token)

    def _check_stop(self, token: int) -> None:
        if token in self.stop_ids and len(self.out) > self.params.min_tokens:
            self.finish_reason, self.stop_reason = "stop", token
        elif len(self.out) >= self.max_tokens:
            self.finish_reason = "length"

    def reset_for_recompute(self) -> None:
        self.num_computed = 0
        self.hashed_blocks = 0
