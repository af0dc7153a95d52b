"""Paged KV-cache blocks: allocation on demand, reference counts, and a prefix cache of full blocks by hash.

A full block is named by the hash of (its parent's hash, its tokens), so equal prompt prefixes map to the
same chain of hashes. Blocks whose count drops to 0 stay findable by hash until reused; the free list is
ordered least-recently-used first, blocks with no hash (nothing to reuse) before them.
"""
from __future__ import annotations

import collections
from typing import Dict, List, Optional, Sequence


class BlockManager:
    def __init__(self, num_blocks: int, block_size: int, enable_prefix_caching: bool = True):
        if num_blocks < 1 or block_size < 1:
            raise ValueError(f"BlockManager needs num_blocks >= 1 and block_size >= 1, got {num_blocks}, {block_size}")
        self.num_blocks, self.block_size = num_blocks, block_size
        self.enable_prefix_caching = enable_prefix_caching
        self.ref = [0] * num_blocks
        self.hash_of: List[Optional[int]] = [None] * num_blocks
        self.by_hash: Dict[int, int] = {}
        self._free: "collections.OrderedDict[int, None]" = collections.OrderedDict((b, None) for b in range(num_blocks))
        self.hit_tokens = 0     # prompt tokens found in the cache, over the manager's life
        self.query_tokens = 0   # prompt tokens looked up

    @property
    def num_free(self) -> int:
        return len(self._free)

    def blocks_for(self, tokens: int) -> int:
        return -(-tokens // self.block_size)

    @staticmethod
    def chain_hash(parent: Optional[int], tokens: Sequence[int]) -> int:
        return hash((parent, tuple(tokens)))

    def match_prefix(self, tokens: Sequence[int]) -> List[int]:
        """Cached blocks holding ``tokens``' full leading blocks (not taken yet: see :meth:`take`)."""
        if not self.enable_prefix_caching:
            return []
        found, h, bs = [], None, self.block_size
        for i in range(len(tokens) // bs):
            h = self.chain_hash(h, tokens[i * bs:(i + 1) * bs])
            b = self.by_hash.get(h)
            if b is None:
                break
            found.append(b)
        return found

    def can_take(self, cached: Sequence[int], new: int) -> bool:
        idle_cached = sum(1 for b in cached if self.ref[b] == 0)  # in the free list now
        return new <= self.num_free - idle_cached

    def take(self, cached: Sequence[int]) -> None:
        for b in cached:
            if self.ref[b] == 0:
                del self._free[b]
            self.ref[b] += 1

    def allocate(self, n: int) -> List[int]:
        if n > len(self._free):
            raise RuntimeError(f"out of KV-cache blocks: need {n}, {len(self._free)} free of {self.num_blocks}")
        out = []
        for _ in range(n):
            b, _ = self._free.popitem(last=False)
            if self.hash_of[b] is not None:  # evict: its contents are about to be overwritten
                if self.by_hash.get(self.hash_of[b]) == b:
                    del self.by_hash[self.hash_of[b]]
                self.hash_of[b] = None
            self.ref[b] = 1
            out.append(b)
        return out

    def commit_full(self, blocks: Sequence[int], tokens: Sequence[int], num_computed: int, first: int) -> int:
        """Register the hashes of blocks ``first`` .. (num_computed // block_size) - 1; returns the new ``first``."""
        if not self.enable_prefix_caching:
            return first
        bs = self.block_size
        h = self.hash_of[blocks[first - 1]] if first > 0 else None
        last = num_computed // bs
        for i in range(first, last):
            h = self.chain_hash(h, tokens[i * bs:(i + 1) * bs])
            b = blocks[i]
            if self.hash_of[b] is None:
                self.hash_of[b] = h
                self.by_hash.setdefault(h, b)
        return max(first, last)

    def free(self, blocks: List[int]) -> None:
        # Tail blocks first, so a chain's last blocks are evicted before its shared head.
        for b in reversed(blocks):
            self.ref[b] -= 1
            assert self.ref[b] >= 0, f"block {b} freed twice"
            if self.ref[b] == 0:
                self._free[b] = None
                if self.hash_of[b] is None:
                    self._free.move_to_end(b, last=False)
        blocks.clear()

    def reset(self) -> None:
        self.__init__(self.num_blocks, self.block_size, self.enable_prefix_caching)

    def slot(self, blocks: Sequence[int], pos: int) -> int:
        return blocks[pos // self.block_size] * self.block_size + pos % self.block_size
