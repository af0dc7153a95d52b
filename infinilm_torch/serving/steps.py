"""One engine step of the serving loop: its Input, its launch, and the handling of its outputs.

With overlapped steps (``EngineCore.async_scheduling``) step n + 1 is launched before step n's ids are read:
a token sampled by step n is a placeholder on the host and reaches step n + 1 on the device (``prev_output``
+ ``prev_token_index``); ``finish(step n)`` then reads the ids, fills the placeholders in, and applies the
stop checks. A sequence that finished at step n drops its token of step n + 1 (``finish`` skips finished
sequences; the blocks it wrote there are already back in the pool, and later steps run after it in stream
order). Steps whose ids the host needs before the next launch are not overlapped (EngineCore decides).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import List, Optional

import torch

from infinilm_torch.serving import sampler
from infinilm_torch.serving.outputs import check_stop_strings, request_output
from infinilm_torch.serving.params import Logprob
from infinilm_torch.serving.scheduler import Batch
from infinilm_torch.serving.sequence import PLACEHOLDER


@dataclass(eq=False)
class Launched:
    """A queued step: what it ran and how to read its Output."""
    batch: Batch
    out: object                # the engine's Output
    where: List[int]           # per batch entry: its row of the Output
    sampled: List[bool]        # per batch entry: the step samples its next token
    on_host: List[bool]        # per batch entry: the host draws that token (from the returned logits)
    k: Optional[int]           # logprobs asked for (the largest k of the batch)
    step: int = 0              # its number (EngineCore.steps after it)
    last: List = field(default_factory=list)  # sequences whose last token (max_tokens) it draws


def _i64(x) -> torch.Tensor:
    return torch.tensor(x, dtype=torch.int64)


def _feed_row(s, end: int, prev: Optional[Launched]) -> int:
    """The row of ``prev``'s Output whose id the token at ``end - 1`` takes (-1: the host knows the id)."""
    if end != len(s.tokens) or s.tokens[-1] != PLACEHOLDER:
        return -1
    step, row = s.feed
    if prev is None or step != prev.step:
        raise RuntimeError(f"sequence {s.seq_id}: its newest token is a placeholder of a step that is not the one "
                           f"in flight (the serving loop lost an id)")
    return row


def step_inputs(scheduler, batch: Batch, prev: Optional[Launched] = None) -> dict:
    """The Input fields of ``batch``; placeholder tokens take their ids from ``prev``'s Output on the device."""
    if batch.rows is not None:  # static cache: one padded row per cache row (idle rows feed one pad token)
        feeds = [[0] if s is None else s.tokens[s.num_computed:] for s in batch.rows]
        starts = [0 if s is None else s.num_computed for s in batch.rows]
        width = max(len(f) for f in feeds)
        cache = _i64(starts)
        ids = _i64([f + [0] * (width - len(f)) for f in feeds])
        out = dict(input_ids=ids, position_ids=cache[:, None] + torch.arange(width)[None, :], cache_lengths=cache,
                   input_lengths=_i64([len(f) for f in feeds]))
        src = [-1 if s is None else _feed_row(s, s.num_tokens, prev) for s in batch.rows]
        if any(r >= 0 for r in src):
            index = torch.full(ids.shape, -1, dtype=torch.int64)
            index[torch.arange(len(feeds)), out["input_lengths"] - 1] = _i64(src)
            ids.clamp_(min=0)
            out.update(prev_output=prev.out, prev_token_index=index)
        return out
    # Paged: token-level tensors from per-sequence ones (no Python loop over tokens).
    bs = scheduler.bm.block_size
    ids: List[int] = []
    src: List[int] = []  # per sequence: _feed_row (inlined: this loop runs once per sequence and step)
    pstep = prev.step if prev is not None else None
    for s, st, n in zip(batch.seqs, batch.starts, batch.lengths):
        t = s.tokens
        end = st + n
        if n == 1:
            ids.append(t[st])
        else:
            ids += t[st:end]
        if end == len(t) and t[-1] == PLACEHOLDER:
            if s.feed[0] != pstep:
                _feed_row(s, end, prev)  # raises
            src.append(s.feed[1])
        else:
            src.append(-1)
    starts, lengths = _i64(batch.starts), _i64(batch.lengths)
    tables = scheduler.table.gather(batch.seqs)
    if len(ids) == len(batch.seqs):  # decodes only: one token per sequence, at its cache length
        rows, pos = torch.arange(len(ids)), starts.clone()
    else:
        rows = torch.repeat_interleave(torch.arange(len(batch.seqs)), lengths)
        first = torch.cumsum(lengths, 0) - lengths
        pos = torch.arange(len(ids)) - first[rows] + starts[rows]
    slots = tables[rows, pos // bs] * bs + pos % bs
    ids_t = _i64(ids)
    out = dict(input_ids=ids_t.view(1, -1), position_ids=pos, cache_lengths=starts, input_lengths=lengths,
               slot_mapping=slots, block_tables=tables)
    if max(src, default=-1) >= 0:
        if len(ids) == len(src):  # decodes only: each sequence's one token is its last
            index = _i64(src)
        else:
            index = torch.full((len(ids),), -1, dtype=torch.int64)
            index[torch.cumsum(lengths, 0) - 1] = _i64(src)
        ids_t.clamp_(min=0)
        out.update(prev_output=prev.out, prev_token_index=index)
    return out


def launch(core, batch: Batch, prev: Optional[Launched], non_blocking: bool) -> Launched:
    """Queue ``batch`` on the engine and account it in the scheduler (its sampled tokens become pending)."""
    seqs = batch.seqs
    # Plain greedy rows take the engine's argmax; other rows its per-request sampler when it has one. The host
    # samples (from the returned logits) rows still under min_tokens (stop ids masked) and, without an engine
    # sampler, every non-greedy row. The choice depends on the row alone, so a seeded row's draw does not
    # depend on its batch.
    simple = [s.simple for s in seqs]
    engine_sampling = core.engine_per_request and not all(simple)
    if engine_sampling:  # (the same rule, with its second half known to be False)
        on_host = [len(s.out) + s.num_pending < s.params.min_tokens for s in seqs]
    else:
        on_host = [len(s.out) + s.num_pending < s.params.min_tokens or not simple[i] for i, s in enumerate(seqs)]
    k = max((s.params.logprobs for s in seqs if s.params.logprobs is not None), default=None)
    # Logprob rows on the engine path also fetch logits: the chosen token's rank needs the whole row.
    want_logits = any(on_host) or (engine_sampling and k is not None)
    fields = step_inputs(core.scheduler, batch, prev)
    if non_blocking:
        fields["non_blocking"] = True
    inp = core.llm._lib.InferEngine.Input(temperature=0.0, top_k=1, top_p=1.0, return_logits=want_logits, **fields)
    if engine_sampling:
        for name, v in sampler.engine_fields(batch.rows if batch.rows is not None else seqs, k).items():
            setattr(inp, name, v)
    t0 = time.perf_counter()
    out = core.llm.engine.forward(inp)
    core.forward_s += time.perf_counter() - t0
    core.steps += 1
    where = [s.slot for s in seqs] if batch.rows is not None else list(range(len(seqs)))  # output row of each
    rec = Launched(batch, out, where, core.scheduler.update(batch), on_host, k, core.steps)
    for s, ok, row in zip(seqs, rec.sampled, where):
        if ok and not s.expect(rec.step, row):
            rec.last.append(s)
    return rec


def release(core, rec: Launched) -> None:
    """Sequences whose last token ``rec`` draws compute nothing more: their rows or blocks serve the next step
    (whose writes run after ``rec``'s), as in the synchronous loop; they finish when the ids are read. Called
    once the step before ``rec`` has been read (its ids complete their prefix-cache blocks)."""
    for s in rec.last:
        if not s.finished:
            core.scheduler.finish(s)


def finish(core, rec: Launched) -> None:
    """Read ``rec``'s Output: draw host rows, gather logprobs, add the tokens, stop checks, hand outputs over."""
    seqs, out, where = rec.batch.seqs, rec.out, rec.where
    live = [i for i, ok in enumerate(rec.sampled) if ok and not seqs[i].finished]
    if not live:
        return
    t0 = time.perf_counter()
    out.wait()
    core.wait_s += time.perf_counter() - t0
    live_seqs = [seqs[i] for i in live]
    if rec.batch.rows is None and len(live) == len(where):  # paged, every row live: the rows in order
        tokens = out.output_ids.view(-1)[:len(where)].clone()
    else:
        tokens = out.output_ids.view(-1)[where][live].clone()
    lps: List[Optional[tuple]] = [None] * len(live)
    has_lp = rec.k is not None  # some row asked for logprobs
    ks = [s.params.logprobs if s.params.logprobs is not None else 0 for s in live_seqs] if has_lp else None
    host_j = [j for j, i in enumerate(live) if rec.on_host[i]] if any(rec.on_host) else []
    if host_j:
        lg = out.logits[[where[live[j]] for j in host_j]]
        hs = [live_seqs[j] for j in host_j]
        drawn = sampler.sample(lg, hs)
        tokens[host_j] = drawn
        if any(q.params.logprobs is not None for q in hs):
            for j, r in zip(host_j, sampler.logprobs_of(lg, drawn, [ks[j] for j in host_j])):
                lps[j] = r
    eng_j = [j for j, i in enumerate(live) if not rec.on_host[i] and live_seqs[j].params.logprobs is not None] \
        if has_lp else []
    if eng_j:
        res = engine_logprobs(out, [where[live[j]] for j in eng_j], [int(tokens[j]) for j in eng_j],
                              [ks[j] for j in eng_j])
        for j, r in zip(eng_j, res):
            lps[j] = r
    now = time.perf_counter()
    touched = {}
    decode = core.llm.decode
    sched = core.scheduler
    bs = sched.bm.block_size if hasattr(sched, "bm") else None  # paged: commit's own test, inlined below
    for j, (s, tok) in enumerate(zip(live_seqs, tokens.tolist())):
        req = s.request
        if lps[j] is not None and s.logprobs is not None:
            lp, rank, top = lps[j]
            entry = {t: Logprob(v, None) for t, v in top.items()}
            for r, t in enumerate(top):
                entry[t].rank = r + 1
            entry[tok] = Logprob(lp, rank)
            s.logprobs.append(entry)
            s.cumulative_logprob += lp
        # The calls below with their early returns inlined: check_stop_strings returns at once unless the row
        # finished, streams or has stop strings; commit unless a block filled up.
        s.resolve(tok)
        if s.finish_reason is not None or req.stream or s.params.stop:
            check_stop_strings(s, decode)
        if req.first_token is None:
            req.first_token = now
        touched[req.request_id] = req
        if s.finish_reason is not None:
            sched.finish(s)
        elif bs is None or min(s.num_computed, len(s.prompt) + len(s.out)) >= (s.hashed_blocks + 1) * bs:
            sched.commit(s)
    for rid, req in touched.items():
        done = req.seqs[0].finish_reason is not None if len(req.seqs) == 1 else all(s.finished for s in req.seqs)
        if done:
            core.retire(rid)
        if done or req.stream:
            req.sink(request_output(req, done, decode), None)


def engine_logprobs(out, rows, tokens, ks):
    """(logprob, rank, top-k {id: logprob}) from the engine's Output rows."""
    chosen, top_v, top_i = out.logprobs[rows], out.top_logprobs[rows], out.top_token_ids[rows]
    logits = out.logits[rows]
    ranks = (logits > logits.gather(1, torch.tensor(tokens).view(-1, 1))).sum(dim=1) + 1
    res = []
    for j, (tok, kk) in enumerate(zip(tokens, ks)):
        top = {int(top_i[j, r]): float(top_v[j, r]) for r in range(kk)}
        res.append((float(chosen[j]), int(ranks[j]), top))
    return res
