"""Run statistics of a generate call and the paged cache's block arithmetic (the scheduler is in serving/)."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

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


def num_paged_blocks(max_kv_memory_bytes: int, block_size: int, num_layers: int, num_kv_heads: int,
                     head_dim: int, dtype: torch.dtype, tp_size: int = 1) -> int:
    """The engine's block count for a memory budget (UPSTREAM.md): bytes / (2·head_dim·kv_heads/tp·block·layers·size)."""
    from infinilm_torch.lib import _infinilm

    return max_kv_memory_bytes // _infinilm.kv_block_bytes(num_layers, num_kv_heads // tp_size, head_dim, dtype,
                                                           block_size)


def kv_bytes_for(tokens: int, block_size: int, num_layers: int, num_kv_heads: int, head_dim: int,
                 dtype: torch.dtype, tp_size: int = 1) -> int:
    """The memory budget that gives room for ``tokens`` tokens in whole blocks."""
    blocks = math.ceil(tokens / block_size)
    from infinilm_torch.lib import _infinilm

    return blocks * _infinilm.kv_block_bytes(num_layers, num_kv_heads // tp_size, head_dim, dtype, block_size)

