"""A request's outputs: stop strings over the decoded text, and the RequestOutput snapshot handed to callers."""
from __future__ import annotations

import time

from infinilm_torch.serving.params import CompletionOutput, RequestOutput
from infinilm_torch.serving.sequence import Sequence


def check_stop_strings(s: Sequence, decode) -> None:
    """Decode ``s`` (when a stop string, streaming or the end needs its text) and cut it at the first stop string."""
    p = s.params
    if not p.stop and not s.request.stream and not s.finished:
        return
    text = decode(s.out, p.skip_special_tokens)
    if p.stop:
        hits = [(text.find(x), x) for x in p.stop if x in text]
        if hits:
            at, x = min(hits)
            text = text[:at]
            s.finish_reason, s.stop_reason = "stop", x
    s.text = text


def request_output(req, finished: bool, decode) -> RequestOutput:
    outs = []
    hold = max((len(x) for x in req.params.stop), default=1) - 1
    for s in req.seqs:
        text = s.text
        if s.finished and not text and s.out and s.stop_reason not in req.params.stop:
            text = s.text = decode(s.out, req.params.skip_special_tokens)
        if not s.finished:  # a stop string may be forming, and a multi-byte character may be cut
            text = text[:len(text) - hold] if hold else text
            text = text.rstrip("\ufffd")
        outs.append(CompletionOutput(s.index, text, list(s.out), s.cumulative_logprob,
                                     None if s.logprobs is None else list(s.logprobs), s.finish_reason,
                                     s.stop_reason))
    m = {"arrival": req.arrival}
    if req.first_token is not None:
        m["first_token"] = req.first_token
    if finished:
        m["finished"] = time.perf_counter()
    cached = req.seqs[0].num_cached_prompt if req.seqs else 0
    return RequestOutput(req.request_id, req.prompt, list(req.prompt_token_ids), outs, finished, cached, m)
