"""Per-request sampling over a step's logits: penalties, min_tokens, temperature, top-k, top-p, min-p, seeds, logprobs.

Used on the host (whole-batch tensor ops; the only per-row loop is the seeded draw) when the engine's own
sampler cannot serve a request; ``engine_fields`` gives the same parameters as per-request tensors for an
engine whose Input takes them.
"""
from __future__ import annotations

import itertools
from typing import Dict, List, Optional, Tuple

import torch

from infinilm_torch.serving.sequence import Sequence, step_seed, step_seeds


def padded(rows: List[List[int]], pad: int = -1) -> torch.Tensor:
    """Rows of ints as one [n, longest] int64 tensor (one tensor build for all rows, not one per row)."""
    lens = torch.tensor([len(r) for r in rows], dtype=torch.int64)
    width = max(1, int(lens.max())) if rows else 1
    out = torch.full((len(rows), width), pad, dtype=torch.int64)
    flat = list(itertools.chain.from_iterable(rows))
    if flat:
        out[torch.arange(width)[None, :] < lens[:, None]] = torch.tensor(flat, dtype=torch.int64)
    return out


def _presence(ids: torch.Tensor, vocab: int) -> torch.Tensor:
    """[n, L] -1 padded ids -> [n, vocab] counts."""
    counts = torch.zeros(ids.shape[0], vocab + 1, dtype=torch.float32)
    counts.scatter_add_(1, torch.where(ids < 0, vocab, ids), torch.ones(ids.shape, dtype=torch.float32))
    return counts[:, :vocab]


def apply_penalties(logits: torch.Tensor, seqs: List[Sequence]) -> torch.Tensor:
    """vLLM's rules: repetition divides positive / multiplies negative logits of tokens seen in prompt or output;
    presence and frequency subtract from tokens seen in the output (once, and per occurrence)."""
    n, vocab = logits.shape
    rep = torch.tensor([s.params.repetition_penalty for s in seqs], dtype=torch.float32)[:, None]
    pres = torch.tensor([s.params.presence_penalty for s in seqs], dtype=torch.float32)[:, None]
    freq = torch.tensor([s.params.frequency_penalty for s in seqs], dtype=torch.float32)[:, None]
    out_counts = _presence(padded([s.out for s in seqs]), vocab)
    seen = (_presence(padded([s.prompt for s in seqs]), vocab) > 0) | (out_counts > 0)
    penalized = torch.where(logits > 0, logits / rep, logits * rep)
    logits = torch.where(seen, penalized, logits)
    return logits - freq * out_counts - pres * (out_counts > 0).float()


def _filter(logits: torch.Tensor, seqs: List[Sequence]) -> torch.Tensor:
    """Temperature-scaled logits with top-k, top-p and min-p applied (-inf outside)."""
    temp = torch.tensor([s.params.temperature for s in seqs], dtype=torch.float32)[:, None]
    logits = logits / temp
    vocab = logits.shape[1]
    ks = torch.tensor([s.params.top_k if 0 < s.params.top_k < vocab else vocab for s in seqs])
    ps = torch.tensor([s.params.top_p for s in seqs], dtype=torch.float32)[:, None]
    mps = torch.tensor([s.params.min_p for s in seqs], dtype=torch.float32)[:, None]
    sorted_l, order = logits.sort(dim=1, descending=True)
    rank = torch.arange(vocab)[None, :]
    probs = sorted_l.softmax(dim=1)
    before = probs.cumsum(dim=1) - probs  # mass strictly above this token
    drop = (rank >= ks[:, None]) | (before >= ps) | (probs < mps * probs[:, :1])
    drop[:, 0] = False
    sorted_l = sorted_l.masked_fill(drop, float("-inf"))
    return torch.full_like(logits, float("-inf")).scatter(1, order, sorted_l)


def sample(logits: torch.Tensor, seqs: List[Sequence]) -> torch.Tensor:
    """One next token per row of ``logits`` [n, vocab] (float32), following each sequence's parameters."""
    logits = logits.float()
    if any(not s.params.plain for s in seqs):
        logits = apply_penalties(logits, seqs)
    for i, s in enumerate(seqs):
        if len(s.out) < s.params.min_tokens and s.stop_ids:
            logits[i, list(s.stop_ids)] = float("-inf")
    out = logits.argmax(dim=1)
    rand = [i for i, s in enumerate(seqs) if not s.params.greedy]
    if rand:
        probs = _filter(logits[rand], [seqs[i] for i in rand]).softmax(dim=1)
        for j, i in enumerate(rand):
            g = torch.Generator().manual_seed(step_seed(seqs[i].seed, len(seqs[i].out)))
            out[i] = torch.multinomial(probs[j], 1, generator=g)[0]
    return out


def logprobs_of(logits: torch.Tensor, tokens: torch.Tensor, ks: List[int]) -> List[Tuple[float, int, Dict[int, float]]]:
    """Per row: (logprob of the chosen token, its rank, the top-k {id: logprob}) under log_softmax(logits)."""
    lp = torch.log_softmax(logits.float(), dim=1)
    chosen = lp.gather(1, tokens.view(-1, 1)).view(-1)
    ranks = (lp > chosen[:, None]).sum(dim=1) + 1
    kmax = max(ks) if ks else 0
    top_v, top_i = lp.topk(min(kmax, lp.shape[1]), dim=1) if kmax > 0 else (None, None)
    out = []
    for r, k in enumerate(ks):
        top = {int(top_i[r, j]): float(top_v[r, j]) for j in range(k)} if k > 0 else {}
        out.append((float(chosen[r]), int(ranks[r]), top))
    return out


def penalized(p) -> bool:
    return p.repetition_penalty != 1.0 or p.presence_penalty != 0.0 or p.frequency_penalty != 0.0


def engine_fields(seqs: List[Optional[Sequence]], logprobs: Optional[int]) -> dict:
    """The per-request sampling tensors of an engine Input that takes them (temperatures, seeds, penalties ...);
    a None entry (an idle static-cache row) samples greedily. Penalties and the token ids they read are sent
    only when some row has one (the engine skips them otherwise; building them costs a pass over every token).
    A row's draw is its token number len(out) + num_pending (tokens of steps in flight count); the penalties'
    output ids are the host's, so the serving loop does not overlap steps while a penalized request runs."""
    ps = [s.params if s is not None else None for s in seqs]

    def col(get, idle, dtype=torch.float32):
        return torch.tensor([get(p) if p is not None else idle for p in ps], dtype=dtype)
    live = [s for s in seqs if s is not None]
    floats = [(p.temperature, p.top_p, p.min_p) if p is not None else (0.0, 1.0, 0.0) for p in ps]
    seeds = step_seeds(torch.tensor([s.seed63 for s in live], dtype=torch.int64),
                       torch.tensor([len(s.out) + s.num_pending for s in live], dtype=torch.int64))
    if len(live) < len(seqs):  # idle static-cache rows draw nothing: seed 0
        full = torch.zeros(len(seqs), dtype=torch.int64)
        full[torch.tensor([s is not None for s in seqs])] = seeds
        seeds = full
    temps, top_ps, min_ps = torch.tensor(floats, dtype=torch.float32).t().contiguous() if floats else \
        (torch.zeros(0),) * 3
    out = dict(
        temperatures=temps,
        top_ks=torch.tensor([(p.top_k if p.top_k > 0 else 0) if p is not None else 0 for p in ps], dtype=torch.int64),
        top_ps=top_ps,
        min_ps=min_ps,
        seeds=seeds,
        return_logprobs=-1 if logprobs is None else int(logprobs),
    )
    if any(p is not None and penalized(p) for p in ps):
        out.update(
            repetition_penalties=col(lambda p: p.repetition_penalty, 1.0),
            presence_penalties=col(lambda p: p.presence_penalty, 0.0),
            frequency_penalties=col(lambda p: p.frequency_penalty, 0.0),
            prompt_token_ids=padded([s.prompt if s is not None else [] for s in seqs]),
            output_token_ids=padded([s.out if s is not None else [] for s in seqs]))
    return out
