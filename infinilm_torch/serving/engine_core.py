"""EngineCore: the one loop that owns the InferEngine and the scheduler; other threads only enqueue.

``submit`` and ``abort`` may be called from any thread (LLM.generate, the server's event loop); the loop
thread drains the queue, runs steps while any request is pending, and hands each request's outputs to its
``sink`` callback (on the loop thread: sinks must only hand over, e.g. put into a queue).

With ``async_scheduling`` one step stays in flight (vLLM's async scheduling, SGLang's overlap scheduler):
step n + 1 is planned and queued before step n's ids are read, so the device never waits for the host between
decode steps. The loop runs a step synchronously when the next one needs step n's ids on the host: a row of
step n was drawn on the host (min_tokens), a request with penalties is in the scheduler (the engine's penalties
read the output ids from the host), or nothing else runs. Outputs equal the synchronous loop's (serving/steps.py).
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

from infinilm_torch.serving import sampler, steps
from infinilm_torch.serving.outputs import request_output
from infinilm_torch.serving.params import RequestOutput, SamplingParams
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
    prompt_out: Optional[List[int]] = None  # one copy of prompt_token_ids that its outputs share (not per step)


_cores: "weakref.WeakSet[EngineCore]" = weakref.WeakSet()


@atexit.register
def _stop_all() -> None:
    # Join the loop threads before the interpreter tears down (the engine's C++ threads must not outlive it).
    for core in list(_cores):
        core.shutdown()


class EngineCore:
    """The loop holds the LLM weakly: dropping the last LLM reference stops its loop."""

    def __init__(self, llm, scheduler, async_scheduling: bool = False):
        self._llm, self.scheduler = weakref.ref(llm), scheduler
        self.async_scheduling = async_scheduling  # read at every step: may be switched between steps
        self._inflight: Optional[steps.Launched] = None  # the step queued and not read yet
        self._penalized = 0  # running requests with penalties (they need their output ids on the host)
        self._queue: "queue.Queue" = queue.Queue()
        self._requests: Dict[str, Request] = {}
        self._thread: Optional[threading.Thread] = None
        self._start_lock = threading.Lock()
        self.steps = 0
        # wall time in steps, in the engine's forward within them, and waiting there for a step's ids
        self.step_s = self.forward_s = self.wait_s = 0.0
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
    def _busy(self) -> bool:
        return self._inflight is not None or self.scheduler.has_work()

    def _loop(self) -> None:
        while True:
            try:
                cmd = self._queue.get(block=not self._busy())
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
            if self._busy():
                try:
                    self._step()
                except Exception as e:  # noqa: BLE001  (every pending request learns why; the loop goes on)
                    traceback.print_exc()
                    self._fail_all(e)

    def _handle(self, kind: str, arg) -> None:
        if kind == "add":
            self._add(arg)
        elif kind == "abort":
            req = self.retire(arg)
            if req is not None:
                for s in req.seqs:
                    if not s.finished:
                        s.finish_reason = "abort"
                    self.scheduler.finish(s)
                req.sink(request_output(req, True, self.llm.decode), None)
        elif kind == "call":
            fn, done = arg
            try:
                self._complete()  # nothing in flight while fn runs (e.g. a cache reset)
            except Exception as e:  # noqa: BLE001  (as a failed step)
                traceback.print_exc()
                self._fail_all(e)
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
        self._penalized += sampler.penalized(p)
        for s in req.seqs:
            self.scheduler.add(s)

    def retire(self, request_id: str) -> Optional[Request]:
        """Take a request out of the running set (it finished or was aborted)."""
        req = self._requests.pop(request_id, None)
        if req is not None:
            self._penalized -= sampler.penalized(req.params)
        return req

    def _fail_all(self, err: BaseException) -> None:
        self._inflight = None
        self._penalized = 0
        for req in list(self._requests.values()):
            for s in req.seqs:
                self.scheduler.finish(s)
            req.sink(None, err)
        self._requests.clear()
        self.scheduler.waiting.clear()
        self.scheduler.running.clear()
        self.scheduler.reset_blocks()

    def _overlappable(self, prev: steps.Launched) -> bool:
        """Whether the next step may be queued before ``prev``'s ids are read."""
        return (self.async_scheduling and self._penalized == 0 and not any(prev.on_host)
                and bool(self.scheduler.running))

    def _complete(self) -> None:
        """Read the step in flight, if any, and wait until it has run (its ids may all be discarded)."""
        prev, self._inflight = self._inflight, None
        if prev is not None:
            steps.finish(self, prev)
            prev.out.wait()

    def _step(self) -> None:
        t0 = time.perf_counter()
        try:
            if self._inflight is not None and not self._overlappable(self._inflight):
                self._complete()
                if not self.scheduler.has_work():  # it held the last requests' discarded tokens
                    return
            prev = self._inflight
            batch = self.scheduler.schedule()
            if not batch.seqs:  # every running sequence waits for the step in flight (its last token)
                if prev is None:
                    raise RuntimeError("scheduler planned an empty step with requests pending (no block can be freed)")
                self._complete()
                return
            self._inflight = steps.launch(self, batch, prev, non_blocking=self.async_scheduling)
            if prev is not None:
                steps.finish(self, prev)
            steps.release(self, self._inflight)
            if not self.async_scheduling:
                self._complete()
        finally:
            self.step_s += time.perf_counter() - t0
