"""BlockTable: the running sequences' block ids kept as rows of one int64 tensor, grown by appends.

A step's ``block_tables`` is a gather of its sequences' rows instead of a re-padding of every sequence's block
list (most decode steps add a block to few sequences). A sequence holds a row from its first step to when its
blocks go back (preempted, finished); the scheduler calls ``drop`` whenever it frees or replaces a sequence's
blocks, so a row always holds a prefix of the sequence's current list, zeros after it.
"""
from __future__ import annotations

from typing import List

import torch


class BlockTable:
    def __init__(self, rows: int = 8, cols: int = 8):
        self.t = torch.zeros(rows, cols, dtype=torch.int64)
        self._free: List[int] = list(range(rows - 1, -1, -1))

    def _grow(self, rows: int, cols: int) -> None:
        old = self.t
        r, c = max(rows, old.shape[0]), max(cols, old.shape[1])
        self.t = torch.zeros(r, c, dtype=torch.int64)
        self.t[:old.shape[0], :old.shape[1]] = old
        self._free += range(r - 1, old.shape[0] - 1, -1)

    def drop(self, seq) -> None:
        """``seq``'s blocks go back (or are replaced): its row is cleared and freed."""
        r = seq.table_row
        if r is not None:
            self.t[r, :seq.table_len] = 0
            self._free.append(r)
            seq.table_row, seq.table_len = None, 0

    def gather(self, seqs) -> torch.Tensor:
        """[len(seqs), longest] int64: each sequence's block ids, 0 padded (a new tensor)."""
        rows, width = [], 1
        at_r: List[int] = []  # new entries (row, column, block id), written in one indexed store below
        at_c: List[int] = []
        vals: List[int] = []
        for s in seqs:
            n = len(s.blocks)
            if n > width:
                width = n
            r = s.table_row
            if r is None:
                if not self._free:
                    self._grow(2 * self.t.shape[0], 0)
                r = s.table_row = self._free.pop()
            if n != s.table_len:
                if n < s.table_len:
                    raise RuntimeError(f"sequence {s.seq_id}: its block list shrank from {s.table_len} to {n} "
                                       f"without its block-table row being dropped")
                if n > self.t.shape[1]:
                    self._grow(0, max(n, 2 * self.t.shape[1]))
                at_r += [r] * (n - s.table_len)
                at_c += range(s.table_len, n)
                vals += s.blocks[s.table_len:n]
                s.table_len = n
            rows.append(r)
        if vals:
            self.t[torch.tensor(at_r, dtype=torch.int64), torch.tensor(at_c, dtype=torch.int64)] = \
                torch.tensor(vals, dtype=torch.int64)
        return self.t[torch.tensor(rows, dtype=torch.int64), :width]
