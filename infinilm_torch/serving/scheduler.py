"""Schedulers: which sequences run in the next engine step, and with how many tokens each.

PagedScheduler (vLLM's unified scheduling): every step has a token budget (``max_step_tokens``). Running
sequences go first, oldest first, each with its next chunk (one token when decoding, up to the budget
when prefilling, so long prompts are prefilled in chunks mixed with decodes); blocks are allocated only as
a sequence grows. When blocks run out, the youngest running sequence is preempted by recompute (its blocks
freed, back to the head of the queue; its full blocks stay in the prefix cache, so recompute is cheap).
Waiting sequences are admitted FIFO while budget, ``max_num_seqs`` and blocks allow, starting after their
longest cached prefix. One sequence that fits the cache alone always makes progress.

StaticScheduler: the static cache's rows; a sequence holds one row from admission to its end, and a row
is the whole prompt's prefill or one decode token.

Both split a step in two halves — ``schedule()`` and ``update(batch)`` once the step is queued — and
``update`` ignores sequences that finished or were aborted meanwhile. A step's sampled ids may arrive after
the next step has been planned (overlapped steps): a sequence then runs with a placeholder for its newest
token, a sequence whose pending token is its last (max_tokens) leaves the scheduler before the next plan
(``finish``; it would not be scheduled again), and only blocks of known tokens enter the prefix cache
(``commit``, again once the ids arrive).
"""
from __future__ import annotations

import collections
from dataclasses import dataclass, field
from typing import Callable, Deque, List, Optional

from infinilm_torch.serving.block_manager import BlockManager
from infinilm_torch.serving.block_table import BlockTable
from infinilm_torch.serving.sequence import Sequence


def _leave(running: List[Sequence], seq: Sequence) -> None:
    """Take ``seq`` out of the running list (``seq.in_running`` spares the scans of a membership test)."""
    if running and running[-1] is seq:
        running.pop()
    else:
        running.remove(seq)
    seq.in_running = False


@dataclass
class Batch:
    seqs: List[Sequence] = field(default_factory=list)
    starts: List[int] = field(default_factory=list)    # cache length before the step
    lengths: List[int] = field(default_factory=list)   # tokens fed this step
    rows: Optional[List[Optional[Sequence]]] = None    # static cache: one entry per row (None = idle row)

    def add(self, seq: Sequence, n: int) -> None:
        self.seqs.append(seq)
        self.starts.append(seq.num_computed)
        self.lengths.append(n)

    @property
    def num_tokens(self) -> int:
        return sum(self.lengths)


class PagedScheduler:
    def __init__(self, bm: BlockManager, max_num_seqs: int, max_step_tokens: int):
        self.bm, self.max_num_seqs, self.max_step_tokens = bm, max_num_seqs, max_step_tokens
        self.waiting: Deque[Sequence] = collections.deque()
        self.running: List[Sequence] = []
        self.num_preemptions = 0
        self.table = BlockTable()

    def check_fits(self, seq: Sequence) -> None:
        need = self.bm.blocks_for(seq.final_len)
        if need > self.bm.num_blocks:
            raise ValueError(f"request {seq.request.request_id}: prompt ({len(seq.prompt)} tokens) + max_tokens "
                             f"({seq.max_tokens}) - 1 = {seq.final_len} cache positions need {need} blocks of "
                             f"{self.bm.block_size}; the paged cache has only {self.bm.num_blocks}")

    def add(self, seq: Sequence) -> None:
        self.waiting.append(seq)

    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def capacity(self, max_model_len: int) -> int:
        """The longest sequence that can run (max_tokens=None generates up to it)."""
        return min(max_model_len, self.bm.num_blocks * self.bm.block_size)

    def _preempt(self, seq: Sequence) -> None:
        _leave(self.running, seq)
        self.table.drop(seq)
        self.bm.free(seq.blocks)
        seq.reset_for_recompute()
        self.waiting.appendleft(seq)
        self.num_preemptions += 1

    def schedule(self) -> Batch:
        bm, batch = self.bm, Batch()
        budget = self.max_step_tokens
        preempted = False
        bs, seqs, starts, lengths = bm.block_size, batch.seqs, batch.starts, batch.lengths
        for seq in list(self.running):  # (inlined: this loop runs once per running sequence and step)
            if budget == 0:
                break
            if not seq.in_running:  # preempted below as a victim
                continue
            c = seq.num_computed
            n = len(seq.tokens) - c
            if n > budget:
                n = budget
            if n == 0:  # its next token is its last and still in flight: nothing left to compute
                continue
            need = -(-(c + n) // bs) - len(seq.blocks)
            if need > 0:  # most decode steps fill no block
                while need > bm.num_free:
                    victim = self.running[-1]
                    self._preempt(victim)
                    preempted = True
                    if victim is seq:
                        break
                if not seq.in_running:
                    break
                seq.blocks += bm.allocate(need)
            seqs.append(seq)
            starts.append(c)
            lengths.append(n)
            budget -= n
        while self.waiting and budget > 0 and len(self.running) < self.max_num_seqs and not preempted:
            seq = self.waiting[0]
            # Leave at least the last token to compute: it yields the next token's logits.
            cached = bm.match_prefix(seq.tokens[:-1])
            done = len(cached) * bm.block_size
            n = min(seq.num_tokens - done, budget)
            need = bm.blocks_for(done + n) - len(cached)
            if not bm.can_take(cached, need):
                break
            bm.take(cached)
            self.table.drop(seq)
            seq.blocks = list(cached) + bm.allocate(need)
            seq.num_computed, seq.hashed_blocks = done, len(cached)
            if not seq.out:  # first admission: count prompt tokens found in the prefix cache
                seq.num_cached_prompt = done
                bm.hit_tokens += done
                bm.query_tokens += len(seq.prompt)
            self.running.append(self.waiting.popleft())
            seq.in_running = True
            batch.add(seq, n)
            budget -= n
        return batch

    def update(self, batch: Batch) -> List[bool]:
        """Account the step's computed tokens; per batch entry, whether its sampled token is a real next token."""
        sampled, bs = [], self.bm.block_size
        for seq, n in zip(batch.seqs, batch.lengths):
            if seq.finish_reason is not None or not seq.in_running:
                sampled.append(False)
                continue
            c = seq.num_computed = seq.num_computed + n
            if min(c, len(seq.prompt) + len(seq.out)) >= (seq.hashed_blocks + 1) * bs:  # commit's own test
                self.commit(seq)
            sampled.append(c == len(seq.tokens))
        return sampled

    def commit(self, seq: Sequence) -> None:
        """Enter ``seq``'s full computed blocks of known tokens into the prefix cache."""
        upto = min(seq.num_computed, len(seq.prompt) + len(seq.out))
        # A block was filled (most steps fill none), and the sequence still holds its blocks (not preempted,
        # nor out of the scheduler with its last token in flight).
        if upto >= (seq.hashed_blocks + 1) * self.bm.block_size and seq.in_running:
            seq.hashed_blocks = self.bm.commit_full(seq.blocks, seq.tokens, upto, seq.hashed_blocks)

    def reset_blocks(self) -> None:
        """Every block free again, the prefix cache emptied (the engine's cache was reset)."""
        self.bm.reset()

    def finish(self, seq: Sequence) -> None:
        if seq.in_running:
            _leave(self.running, seq)
            self.table.drop(seq)
            self.bm.free(seq.blocks)
        elif seq in self.waiting:
            self.waiting.remove(seq)
            self.table.drop(seq)
            self.bm.free(seq.blocks)


class StaticScheduler:
    def __init__(self, max_batch_size: int, max_cache_len: int, grow: Callable[[int, int], None]):
        self.max_batch_size, self.max_cache_len, self._grow = max_batch_size, max_cache_len, grow
        self.waiting: Deque[Sequence] = collections.deque()
        self.running: List[Sequence] = []
        self.num_preemptions = 0

    def check_fits(self, seq: Sequence) -> None:
        pass  # the cache grows (between batches) to the longest request

    def capacity(self, max_model_len: int) -> int:
        return max_model_len

    def add(self, seq: Sequence) -> None:
        self.waiting.append(seq)

    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def schedule(self) -> Batch:
        if not self.running and self.waiting and self.waiting[0].final_len > self.max_cache_len:
            self.max_cache_len = self.waiting[0].final_len
            self._grow(self.max_batch_size, self.max_cache_len)
        used = {s.slot for s in self.running}
        while self.waiting and len(self.running) < self.max_batch_size and \
                self.waiting[0].final_len <= self.max_cache_len:
            seq = self.waiting.popleft()
            seq.slot = min(set(range(self.max_batch_size)) - used)
            used.add(seq.slot)
            seq.num_computed = 0
            self.running.append(seq)
            seq.in_running = True
        # A sequence whose last token is in flight has nothing left to compute: its row idles (or is left out).
        todo = [s for s in sorted(self.running, key=lambda s: s.slot) if s.num_tokens > s.num_computed]
        batch = Batch(rows=[None] * (todo[-1].slot + 1 if todo else 0))
        for seq in todo:
            batch.rows[seq.slot] = seq
            batch.add(seq, seq.num_tokens - seq.num_computed)
        return batch

    def update(self, batch: Batch) -> List[bool]:
        out = []
        for seq, n in zip(batch.seqs, batch.lengths):
            if seq.finished or not seq.in_running:
                out.append(False)
                continue
            seq.num_computed += n
            out.append(True)
        return out

    def commit(self, seq: Sequence) -> None:
        pass  # no prefix cache

    def reset_blocks(self) -> None:
        pass  # no block manager

    def finish(self, seq: Sequence) -> None:
        if seq.in_running:
            _leave(self.running, seq)
        elif seq in self.waiting:
            self.waiting.remove(seq)
