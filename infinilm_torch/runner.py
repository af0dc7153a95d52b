"""Generation loops over an InferEngine: static cache (padded rows) and paged cache (block manager + scheduler).

Both take token-id prompts and return, per prompt, the generated ids (an eos that stopped a request is
kept, as HF transformers does) and why it finished.
"""
from __future__ import annotations

import collections
import math
import time
from dataclasses import dataclass, field
from typing import Callable, List, Optional, Sequence, Tuple

import torch

# Step t's draws use seed_t + request index (the engine's rule), so step seeds are spaced wider than any batch.
_SEED_STRIDE = 1 << 16


@dataclass
class SamplingParams:
    max_new_tokens: int = 32
    temperature: float = 1.0
    top_k: int = 50
    top_p: float = 1.0
    seed: Optional[int] = None
    stop_token_ids: Sequence[int] = ()

    def validate(self) -> None:
        if not isinstance(self.max_new_tokens, int) or self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be an int >= 1, got {self.max_new_tokens!r}")
        if not self.temperature >= 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature!r}")
        if not isinstance(self.top_k, int) or self.top_k < -1:
            raise ValueError(f"top_k must be an int >= -1 (0 or -1: off), got {self.top_k!r}")
        if not 0.0 <= self.top_p <= 1.0:
            raise ValueError(f"top_p must be in [0, 1], got {self.top_p!r}")

    def step_seed(self, step: int) -> Optional[int]:
        if self.seed is None:
            return None
        return (self.seed * 1_000_003 + step * _SEED_STRIDE) % (1 << 62)


@dataclass
class RunStats:
    requests: int = 0
    prompt_tokens: int = 0
    generated_tokens: int = 0
    steps: int = 0
    first_step_s: float = 0.0  # the first forward (prefill of the first requests): time to first token
    total_s: float = 0.0

    @property
    def tokens_per_s(self) -> float:
        return self.generated_tokens / self.total_s if self.total_s > 0 else float("nan")

    @property
    def decode_tokens_per_s(self) -> float:
        """Tokens per second after the first step (the decode rate for one batch of prompts)."""
        t = self.total_s - self.first_step_s
        n = self.generated_tokens - min(self.requests, self.generated_tokens)
        return n / t if t > 0 and n > 0 else float("nan")

    def merge(self, other: "RunStats") -> None:
        for k in ("requests", "prompt_tokens", "generated_tokens", "steps"):
            setattr(self, k, getattr(self, k) + getattr(other, k))
        if self.total_s == 0:
            self.first_step_s = other.first_step_s
        self.total_s += other.total_s


@dataclass
class _Request:
    idx: int
    prompt: List[int]
    out: List[int] = field(default_factory=list)
    cached: int = 0  # tokens in the KV cache
    blocks: List[int] = field(default_factory=list)
    finish: Optional[str] = None

    def pending(self) -> List[int]:
        """Tokens to feed next: the whole prompt first, then the last generated token."""
        return self.prompt if self.cached == 0 else self.out[-1:]


def _record(req: _Request, token: int, sp: SamplingParams, stop: set) -> None:
    req.out.append(token)
    if token in stop:
        req.finish = "eos"
    elif len(req.out) >= sp.max_new_tokens:
        req.finish = "length"


def _i64(rows) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.int64)


def run_static(forward: Callable, prompts: List[List[int]], sp: SamplingParams) -> Tuple[List[_Request], RunStats]:
    """All prompts as one batch of right-padded rows; row b lives in static-cache slot b."""
    reqs = [_Request(i, list(p)) for i, p in enumerate(prompts)]
    stop = set(sp.stop_token_ids)
    stats = RunStats(requests=len(reqs), prompt_tokens=sum(len(p) for p in prompts))
    t0 = time.perf_counter()
    step = 0
    while True:
        active = [r.idx for r in reqs if r.finish is None]
        if not active:
            break
        # Rows past the last unfinished one are dropped; finished rows before it are still fed (their slot is fixed).
        rows = reqs[: active[-1] + 1]
        feeds = [r.pending() for r in rows]
        width = max(len(f) for f in feeds)
        ids = _i64([f + [0] * (width - len(f)) for f in feeds])
        cache = _i64([r.cached for r in rows])
        pos = cache[:, None] + torch.arange(width)[None, :]
        out = forward(input_ids=ids, position_ids=pos, cache_lengths=cache,
                      input_lengths=_i64([len(f) for f in feeds]), seed=sp.step_seed(step))
        for r, f, tok in zip(rows, feeds, out.view(-1).tolist()):
            r.cached += len(f)
            if r.finish is None:
                _record(r, tok, sp, stop)
                stats.generated_tokens += 1
        if step == 0:
            stats.first_step_s = time.perf_counter() - t0
        step += 1
    stats.steps = step
    stats.total_s = time.perf_counter() - t0
    return reqs, stats


class BlockManager:
    """Free list of KV-cache blocks; a request reserves the blocks for its prompt and all its new tokens."""

    def __init__(self, num_blocks: int, block_size: int):
        if num_blocks < 1 or block_size < 1:
            raise ValueError(f"BlockManager needs num_blocks >= 1 and block_size >= 1, got {num_blocks}, {block_size}")
        self.num_blocks, self.block_size = num_blocks, block_size
        self._free = collections.deque(range(num_blocks))

    @property
    def num_free(self) -> int:
        return len(self._free)

    def blocks_for(self, tokens: int) -> int:
        return math.ceil(tokens / self.block_size)

    def allocate(self, n: int) -> List[int]:
        if n > len(self._free):
            raise RuntimeError(f"out of KV-cache blocks: need {n}, {len(self._free)} free of {self.num_blocks}")
        return [self._free.popleft() for _ in range(n)]

    def free(self, blocks: List[int]) -> None:
        self._free.extend(blocks)  # reused last: tables of later requests are non-contiguous
        blocks.clear()

    def slot(self, blocks: List[int], pos: int) -> int:
        return blocks[pos // self.block_size] * self.block_size + pos % self.block_size


def run_paged(forward: Callable, prompts: List[List[int]], sp: SamplingParams, bm: BlockManager,
              max_num_seqs: int = 64, max_step_tokens: int = 8192) -> Tuple[List[_Request], RunStats]:
    """Continuous batching: each step decodes every running request and admits waiting ones (prefill) while
    blocks, ``max_num_seqs`` and ``max_step_tokens`` allow; finished requests give their blocks back at once."""
    reqs = [_Request(i, list(p)) for i, p in enumerate(prompts)]
    stop = set(sp.stop_token_ids)
    for r in reqs:
        # The last new token is never fed back, so a request caches at most prompt + max_new_tokens - 1 tokens.
        need = bm.blocks_for(len(r.prompt) + sp.max_new_tokens - 1)
        if need > bm.num_blocks:
            raise ValueError(f"prompt {r.idx} ({len(r.prompt)} tokens + {sp.max_new_tokens} new) needs {need} "
                             f"blocks of {bm.block_size}; the paged cache has only {bm.num_blocks}")
    waiting = collections.deque(reqs)
    running: List[_Request] = []
    stats = RunStats(requests=len(reqs), prompt_tokens=sum(len(p) for p in prompts))
    t0 = time.perf_counter()
    step = 0
    while waiting or running:
        budget = max_step_tokens - len(running)
        while waiting and len(running) < max_num_seqs:
            r = waiting[0]
            need = bm.blocks_for(len(r.prompt) + sp.max_new_tokens - 1)
            if need > bm.num_free or (len(r.prompt) > budget and any(q.cached == 0 for q in running)):
                break
            r.blocks = bm.allocate(need)
            budget -= len(r.prompt)
            running.append(waiting.popleft())
        feeds = [r.pending() for r in running]
        width = max(len(r.blocks) for r in running)
        ids, pos, slots = [], [], []
        for r, f in zip(running, feeds):
            ids += f
            pos += range(r.cached, r.cached + len(f))
            slots += [bm.slot(r.blocks, p) for p in range(r.cached, r.cached + len(f))]
        out = forward(input_ids=_i64([ids]), position_ids=_i64(pos),
                      cache_lengths=_i64([r.cached for r in running]),
                      input_lengths=_i64([len(f) for f in feeds]),
                      block_tables=_i64([r.blocks + [0] * (width - len(r.blocks)) for r in running]),
                      slot_mapping=_i64(slots), seed=sp.step_seed(step))
        still = []
        for r, f, tok in zip(running, feeds, out.view(-1).tolist()):
            r.cached += len(f)
            _record(r, tok, sp, stop)
            stats.generated_tokens += 1
            if r.finish is None:
                still.append(r)
            else:
                bm.free(r.blocks)
        running = still
        if step == 0:
            stats.first_step_s = time.perf_counter() - t0
        step += 1
    stats.steps = step
    stats.total_s = time.perf_counter() - t0
    return reqs, stats


def num_paged_blocks(max_kv_memory_bytes: int, block_size: int, num_layers: int, num_kv_heads: int,
                     head_dim: int, dtype: torch.dtype, tp_size: int = 1) -> int:
    """The engine's block count for a memory budget (UPSTREAM.md): bytes / (2·head_dim·kv_heads/tp·block·layers·size)."""
    per_block = 2 * head_dim * (num_kv_heads // tp_size) * block_size * num_layers * torch.empty((), dtype=dtype).element_size()
    return max_kv_memory_bytes // per_block


def kv_bytes_for(tokens: int, block_size: int, num_layers: int, num_kv_heads: int, head_dim: int,
                 dtype: torch.dtype, tp_size: int = 1) -> int:
    """The memory budget that gives room for ``tokens`` tokens in whole blocks."""
    blocks = math.ceil(tokens / block_size)
    return blocks * 2 * head_dim * (num_kv_heads // tp_size) * block_size * num_layers * \
        torch.empty((), dtype=dtype).element_size()

