"""The OpenAI-compatible server (FastAPI): /v1/completions, /v1/chat/completions (SSE streaming), /v1/models, /health.

Every request goes to the LLM's one engine loop, so requests of all clients are batched continuously. A
client that disconnects has its request aborted (its blocks freed at once); a bad request gets an OpenAI
error body with status 400 (404 for an unknown model, as OpenAI and vLLM answer).
"""
from __future__ import annotations

import asyncio
import collections
import json
import threading
import time
import uuid
from typing import Any, AsyncIterator, Dict, List, Optional

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse

from infinilm_torch.serving import protocol
from infinilm_torch.serving.params import RequestOutput
from infinilm_torch.serving.protocol import RequestError, error_body


_GONE = object()  # queued by the disconnect watcher: the client went away


async def _watch(request: Request, q: asyncio.Queue) -> None:
    """Poll for the client's disconnect (twice a second) while its request runs; then wake its reader."""
    while True:
        await asyncio.sleep(0.5)
        if await request.is_disconnected():
            q.put_nowait((None, _GONE))
            return


class _Deliverer:
    """Hands the engine loop's outputs to one event loop in batches: one wake-up of the event loop per engine
    step rather than one per request (each is a self-pipe write and a loop iteration)."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop, self.pending, self.lock, self.scheduled = loop, collections.deque(), threading.Lock(), False

    def put(self, q: asyncio.Queue, item) -> None:  # on the engine loop's thread
        self.pending.append((q, item))
        with self.lock:
            if self.scheduled:
                return
            self.scheduled = True
        try:
            self.loop.call_soon_threadsafe(self._drain)
        except RuntimeError:  # the event loop is closed (server shut down): nobody is left to read it
            self.pending.clear()

    def _drain(self) -> None:  # on the event loop
        with self.lock:
            self.scheduled = False
        while self.pending:
            q, item = self.pending.popleft()
            q.put_nowait(item)


def build_app(llm, model_name: str, aliases: Optional[List[str]] = None):
    app = FastAPI(title="infinilm_torch", docs_url=None, redoc_url=None)
    names = {model_name, *(aliases or [])}
    created = int(time.time())

    def err(e: RequestError) -> JSONResponse:
        return JSONResponse(error_body(str(e), e.err_type, e.status, e.param), status_code=e.status)

    async def parse(request: Request) -> Dict[str, Any]:
        raw = await request.body()
        try:
            body = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise RequestError(f"the request body is not valid JSON: {e}") from None
        if not isinstance(body, dict):
            raise RequestError("the request body must be a JSON object")
        model = body.get("model")
        if model is not None and model not in names:
            raise RequestError(f"The model `{model}` does not exist.", "model", 404, "NotFoundError")
        return body

    deliverers: Dict[asyncio.AbstractEventLoop, _Deliverer] = {}

    def submit(prompt, params, stream: bool, what: str):
        """Queue one request on the engine loop; returns (request id, asyncio queue of (output, error))."""
        loop = asyncio.get_running_loop()
        deliver = deliverers.get(loop) or deliverers.setdefault(loop, _Deliverer(loop))
        q: asyncio.Queue = asyncio.Queue()

        def sink(out, e):
            deliver.put(q, (out, e))
        try:
            req = llm.make_request(prompt, params, sink, stream=stream, request_id=uuid.uuid4().hex, what=what)
        except (TypeError, ValueError) as e:
            raise RequestError(str(e), "prompt") from None
        llm._core.submit(req)
        return req.request_id, q

    async def results(rid: str, q: asyncio.Queue, request: Request) -> AsyncIterator[RequestOutput]:
        """Outputs of one request until it finishes; aborts it when the client goes away."""
        done = False
        watcher = asyncio.create_task(_watch(request, q))
        try:
            while not done:
                out, e = await q.get()
                if e is _GONE:
                    return
                if e is not None:
                    done = True
                    raise RequestError(str(e)) if isinstance(e, ValueError) else e
                done = out.finished
                yield out
        finally:
            watcher.cancel()
            if not done:
                llm._core.abort(rid)

    async def run_all(prompts, params, request, what):
        subs = [submit(p, params, False, f"{what} {i}" if len(prompts) > 1 else what) for i, p in enumerate(prompts)]
        finals = []
        for rid, q in subs:
            last = None
            async for out in results(rid, q, request):
                last = out
            if last is None:  # the client went away
                for r, _ in subs:
                    llm._core.abort(r)
                return None
            finals.append(last)
        return finals

    @app.exception_handler(RequestError)
    async def _request_error(_, e: RequestError):
        return err(e)

    @app.get("/health")
    async def health():
        return JSONResponse({"status": "ok"})

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": model_name, "object": "model", "created": created,
                                            "owned_by": "infinilm_torch", "max_model_len": llm.max_model_len}]}

    async def handle(request: Request, chat: bool):
        body = await parse(request)
        params = protocol.sampling_params(body, chat)
        if chat:
            try:
                prompts = [llm.render_chat(protocol.chat_messages(body))]
            except ValueError as e:
                raise RequestError(str(e), "messages") from None
        else:
            prompts = protocol.completion_prompts(body)
        stream = bool(body.get("stream", False))
        include_usage = bool((body.get("stream_options") or {}).get("include_usage", False))
        cid = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex
        kind = "chat.completion" if chat else "text_completion"
        k = params.logprobs or 0
        if not stream:
            finals = await run_all(prompts, params, request, "prompt")
            if finals is None:
                return JSONResponse({}, status_code=499)
            choices, n_prompt, n_gen = [], 0, 0
            for pi, out in enumerate(finals):
                n_prompt += len(out.prompt_token_ids)
                for o in out.outputs:
                    n_gen += len(o.token_ids)
                    c = {"index": pi * params.n + o.index, "finish_reason": o.finish_reason,
                         "logprobs": protocol.logprobs_json(o, llm.decode, chat, k)}
                    if chat:
                        c["message"] = {"role": "assistant", "content": o.text}
                    else:
                        c["text"] = o.text
                    choices.append(c)
            return {"id": cid, "object": kind, "created": int(time.time()), "model": model_name,
                    "choices": choices, "usage": protocol.usage(n_prompt, n_gen)}
        subs = [submit(p, params, True, "prompt") for p in prompts]
        return StreamingResponse(sse(subs, request, chat, cid, include_usage, params.n, k),
                                 media_type="text/event-stream")

    async def sse(subs, request, chat, cid, include_usage, n, k):
        kind = "chat.completion.chunk" if chat else "text_completion"

        def chunk(choices, **extra):
            return "data: " + json.dumps({"id": cid, "object": kind, "created": int(time.time()),
                                          "model": model_name, "choices": choices, **extra}) + "\n\n"
        n_prompt = n_gen = 0
        try:
            for pi, (rid, q) in enumerate(subs):
                sent: Dict[int, str] = {}
                ntok: Dict[int, int] = {}
                if chat:
                    yield chunk([{"index": pi * n + j, "delta": {"role": "assistant", "content": ""},
                                  "finish_reason": None, "logprobs": None} for j in range(n)])
                async for out in results(rid, q, request):
                    if out.finished:
                        n_prompt += len(out.prompt_token_ids)
                    for o in out.outputs:
                        prev, start = sent.get(o.index, ""), ntok.get(o.index, 0)
                        delta = o.text[len(prev):] if o.text.startswith(prev) else ""
                        fin = o.finish_reason if out.finished else None
                        if not delta and fin is None and len(o.token_ids) == start:
                            continue
                        sent[o.index], ntok[o.index] = prev + delta, len(o.token_ids)
                        lp = protocol.logprobs_json(o, llm.decode, chat, k, start)
                        c = {"index": pi * n + o.index, "finish_reason": fin, "logprobs": lp}
                        c.update({"delta": {"content": delta}} if chat else {"text": delta})
                        yield chunk([c])
                        if out.finished:
                            n_gen += len(o.token_ids)
            if include_usage:
                yield chunk([], usage=protocol.usage(n_prompt, n_gen))
            yield "data: [DONE]\n\n"
        except RequestError as e:
            yield "data: " + json.dumps(error_body(str(e), e.err_type, e.status, e.param)) + "\n\n"
        finally:
            for rid, _ in subs:
                llm._core.abort(rid)  # a no-op for finished requests

    @app.post("/v1/completions")
    async def completions(request: Request):
        return await handle(request, chat=False)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        return await handle(request, chat=True)

    return app


def serve(llm, model_name: str, host: str = "127.0.0.1", port: int = 8000, aliases=None,
          log_level: str = "info") -> None:
    import uvicorn

    uvicorn.run(build_app(llm, model_name, aliases), host=host, port=port, log_level=log_level)
