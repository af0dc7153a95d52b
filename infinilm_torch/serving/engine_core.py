"""EngineCore: the one loop that owns the InferEngine and the scheduler; other threads only enqueue.

``submit`` and ``abort`` may be called from any thread (LLM.generate, the server's event loop); the loop
thread drains the queue, runs steps while any request is pending, and hands each request's outputs to its
``sink`` callback (on the loop thread: sinks must only hand over, e.g. put into a queue).
"""
from __future__ import annotations

import atexit
import queue
import threading
import time
import traceback
import weakref
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional

import torch

from infinilm_torch.serving import sampler
from infinilm_torch.serving.outputs import check_stop_strings, request_output
from infinilm_torch.serving.params import Logprob, RequestOutput, SamplingParams
from infinilm_torch.serving.sequence import Sequence

Sink = Callable[[Optional[RequestOutput], Optional[BaseException]], None]


@dataclass
class Request:
    request_id: str
    prompt: Optional[str]
    prompt_token_ids: List[int]
    params: SamplingParams
    sink: Sink
    stream: bool = False
    seqs: List[Sequence] = field(default_factory=list)
    arrival: float = field(default_factory=time.perf_counter)
    first_token: Optional[float] = None


def _i64(x) -> torch.Tensor:
    return torch.tensor(x, dtype=torch.int64)


_cores: "weakref.WeakSet[EngineCore]" = weakref.WeakSet()


@atexit.register
def _stop_all() -> None:
    # Join the loop threads before the interpreter tears down (the engine's C++ threads must not outlive it).
    for core in list(_cores):
        core.shutdown()


class EngineCore:
    """The loop holds the LLM weakly: dropping the last LLM reference stops its loop."""

    def __init__(self, llm, scheduler):
        self._llm, self.scheduler = weakref.ref(llm), scheduler
        self._queue: "queue.Queue" = queue.Queue()
        self._requests: Dict[str, Request] = {}
        self._thread: Optional[threading.Thread] = None
        self._start_lock = threading.Lock()
        self.steps = 0
        self.step_s = self.forward_s = 0.0  # wall time in steps, and in the engine's forward within them
        self.engine_per_request = hasattr(llm._lib.InferEngine.Input(), "temperatures")
        _cores.add(self)

    @property
    def llm(self):
        llm = self._llm()
        if llm is None:
            raise RuntimeError("the LLM of this engine loop was deleted")
        return llm

    def shutdown(self) -> None:
        t = self._thread
        if t is not None and t.is_alive() and t is not threading.current_thread():
            self._queue.put(("stop", None))
            t.join(timeout=30)

    # ---- any thread ------------------------------------------------------------------------------------
    def submit(self, req: Request) -> None:
        self._ensure_thread()
        self._queue.put(("add", req))

    def abort(self, request_id: str) -> None:
        self._queue.put(("abort", request_id))

    def call(self, fn: Callable[[], object]) -> object:
        """Run ``fn`` on the loop thread between steps and return its result (e.g. a cache reset)."""
        self._ensure_thread()
        done: "queue.Queue" = queue.Queue()
        self._queue.put(("call", (fn, done)))
        ok, value = done.get()
        if not ok:
            raise value
        return value

    def _ensure_thread(self) -> None:
        with self._start_lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._loop, name="infinilm-engine", daemon=True)
                self._thread.start()

    # ---- the loop thread -------------------------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            try:
                cmd = self._queue.get(block=not self.scheduler.has_work())
            except queue.Empty:
                cmd = None
            while cmd is not None:
                if cmd[0] == "stop":
                    self._fail_all(RuntimeError("the engine loop was shut down"))
                    return
                self._handle(*cmd)
                try:
                    cmd = self._queue.get_nowait()
                except queue.Empty:
                    cmd = None
            if self._llm() is None:  # the LLM is gone: nothing can be served any more
                return
            if self.scheduler.has_work():
                try:
                    self._step()
                except Exception as e:  # noqa: BLE001  (every pending request learns why; the loop goes on)
                    traceback.print_exc()
                    self._fail_all(e)

    def _handle(self, kind: str, arg) -> None:
        if kind == "add":
            self._add(arg)
        elif kind == "abort":
            req = self._requests.pop(arg, None)
            if req is not None:
                for s in req.seqs:
                    if not s.finished:
                        s.finish_reason = "abort"
                    self.scheduler.finish(s)
                req.sink(request_output(req, True, self.llm.decode), None)
        elif kind == "call":
            fn, done = arg
            try:
                done.put((True, fn()))
            except Exception as e:  # noqa: BLE001
                done.put((False, e))

    def _add(self, req: Request) -> None:
        llm, p = self.llm, req.params
        stop_ids = list(p.stop_token_ids) + ([] if p.ignore_eos else list(llm.eos_token_ids))
        base = p.seed if p.seed is not None else int(torch.randint(0, 1 << 62, (1,)).item())
        try:
            if req.request_id in self._requests:
                raise ValueError(f"request id {req.request_id!r} is already running")
            for i in range(p.n):
                seed = base if i == 0 else hash((base, i)) & ((1 << 62) - 1)
                seq = Sequence(req, i, req.prompt_token_ids, p, seed, self.scheduler.capacity(llm.max_model_len),
                               stop_ids)
                self.scheduler.check_fits(seq)
                req.seqs.append(seq)
        except Exception as e:  # noqa: BLE001
            req.sink(None, e)
            return
        self._requests[req.request_id] = req
        for s in req.seqs:
            self.scheduler.add(s)

    def _fail_all(self, err: BaseException) -> None:
        for req in list(self._requests.values()):
            for s in req.seqs:
                self.scheduler.finish(s)
            req.sink(None, err)
        self._requests.clear()
        self.scheduler.waiting.clear()
        self.scheduler.running.clear()
        if hasattr(self.scheduler, "bm"):
            self.scheduler.bm.reset()

    def _inputs(self, batch) -> dict:
        if batch.rows is not None:  # static cache: one padded row per cache row (idle rows feed one pad token)
            feeds = [[0] if s is None else s.tokens[s.num_computed:] for s in batch.rows]
            starts = [0 if s is None else s.num_computed for s in batch.rows]
            width = max(len(f) for f in feeds)
            cache = _i64(starts)
            return dict(input_ids=_i64([f + [0] * (width - len(f)) for f in feeds]),
                        position_ids=cache[:, None] + torch.arange(width)[None, :], cache_lengths=cache,
                        input_lengths=_i64([len(f) for f in feeds]))
        # Paged: token-level tensors from per-sequence ones (no Python loop over tokens).
        bs = self.scheduler.bm.block_size
        ids: List[int] = []
        for s, st, n in zip(batch.seqs, batch.starts, batch.lengths):
            ids += s.tokens[st:st + n]
        starts, lengths = _i64(batch.starts), _i64(batch.lengths)
        tables = sampler.padded([s.blocks for s in batch.seqs], pad=0)
        if len(ids) == len(batch.seqs):  # decodes only: one token per sequence, at its cache length
            rows, pos = torch.arange(len(ids)), starts.clone()
        else:
            rows = torch.repeat_interleave(torch.arange(len(batch.seqs)), lengths)
            first = torch.cumsum(lengths, 0) - lengths
            pos = torch.arange(len(ids)) - first[rows] + starts[rows]
        slots = tables[rows, pos // bs] * bs + pos % bs
        return dict(input_ids=_i64(ids).view(1, -1), position_ids=pos, cache_lengths=starts, input_lengths=lengths,
                    slot_mapping=slots, block_tables=tables)

    def _step(self) -> None:
        t0 = time.perf_counter()
        try:
            self._run_step()
        finally:
            self.step_s += time.perf_counter() - t0

    def _run_step(self) -> None:
        batch = self.scheduler.schedule()
        if not batch.seqs:
            raise RuntimeError("scheduler planned an empty step with requests pending (no block can be freed)")
        seqs = batch.seqs
        # Plain greedy rows take the engine's argmax; other rows its per-request sampler when it has one. The host
        # samples (from the returned logits) rows still under min_tokens (stop ids masked) and, without an engine
        # sampler, every non-greedy row. The choice depends on the row alone, so a seeded row's draw does not
        # depend on its batch.
        simple = [s.params.greedy and s.params.plain and s.params.logprobs is None for s in seqs]
        engine_sampling = self.engine_per_request and not all(simple)
        on_host = [len(s.out) < s.params.min_tokens or (not simple[i] and not engine_sampling)
                   for i, s in enumerate(seqs)]
        k = max((s.params.logprobs for s in seqs if s.params.logprobs is not None), default=None)
        # Logprob rows on the engine path also fetch logits: the chosen token's rank needs the whole row.
        want_logits = any(on_host) or (engine_sampling and k is not None)
        inp = self.llm._lib.InferEngine.Input(temperature=0.0, top_k=1, top_p=1.0, return_logits=want_logits,
                                              **self._inputs(batch))
        if engine_sampling:
            for name, v in sampler.engine_fields(batch.rows if batch.rows is not None else seqs, k).items():
                setattr(inp, name, v)
        t0 = time.perf_counter()
        out = self.llm.engine.forward(inp)
        self.forward_s += time.perf_counter() - t0
        where = [s.slot for s in seqs] if batch.rows is not None else list(range(len(seqs)))  # output row of each
        ids = out.output_ids.view(-1)[where]
        sampled = self.scheduler.update(batch)
        self.steps += 1
        live = [i for i, ok in enumerate(sampled) if ok]
        if not live:
            return
        live_seqs = [seqs[i] for i in live]
        ks = [s.params.logprobs if s.params.logprobs is not None else 0 for s in live_seqs]
        tokens = ids[live].clone()
        lps: List[Optional[tuple]] = [None] * len(live)
        host_j = [j for j, i in enumerate(live) if on_host[i]]
        if host_j:
            lg = out.logits[[where[live[j]] for j in host_j]]
            hs = [live_seqs[j] for j in host_j]
            drawn = sampler.sample(lg, hs)
            tokens[host_j] = drawn
            if any(q.params.logprobs is not None for q in hs):
                for j, r in zip(host_j, sampler.logprobs_of(lg, drawn, [ks[j] for j in host_j])):
                    lps[j] = r
        eng_j = [j for j, i in enumerate(live) if not on_host[i] and live_seqs[j].params.logprobs is not None]
        if eng_j:
            res = self._engine_logprobs(out, [where[live[j]] for j in eng_j], [int(tokens[j]) for j in eng_j],
                                        [ks[j] for j in eng_j])
            for j, r in zip(eng_j, res):
                lps[j] = r
        now = time.perf_counter()
        touched = {}
        for j, (s, tok) in enumerate(zip(live_seqs, tokens.tolist())):
            if lps[j] is not None and s.logprobs is not None:
                lp, rank, top = lps[j]
                entry = {t: Logprob(v, None) for t, v in top.items()}
                for r, t in enumerate(top):
                    entry[t].rank = r + 1
                entry[tok] = Logprob(lp, rank)
                s.logprobs.append(entry)
                s.cumulative_logprob += lp
            s.append(tok)
            check_stop_strings(s, self.llm.decode)
            if s.request.first_token is None:
                s.request.first_token = now
            if s.finished:
                self.scheduler.finish(s)
            touched[s.request.request_id] = s.request
        for rid, req in touched.items():
            done = all(s.finished for s in req.seqs)
            if done:
                self._requests.pop(rid, None)
            if done or req.stream:
                req.sink(request_output(req, done, self.llm.decode), None)

    @staticmethod
    def _engine_logprobs(out, rows, tokens, ks):
        """(logprob, rank, top-k {id: logprob}) from the engine's Output rows."""
        chosen, top_v, top_i = out.logprobs[rows], out.top_logprobs[rows], out.top_token_ids[rows]
        logits = out.logits[rows]
        ranks = (logits > logits.gather(1, torch.tensor(tokens).view(-1, 1))).sum(dim=1) + 1
        res = []
        for j, (tok, kk) in enumerate(zip(tokens, ks)):
            top = {int(top_i[j, r]): float(top_v[j, r]) for r in range(kk)}
            res.append((float(chosen[j]), int(ranks[j]), top))
        return res
