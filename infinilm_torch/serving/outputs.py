"""A request's outputs: stop strings over the decoded text, and the RequestOutput snapshot handed to callers."""
from __future__ import annotations

import time

from infinilm_torch.serving.params import CompletionOutput, RequestOutput
from infinilm_torch.serving.sequence import Sequence


def _incremental_text(s: Sequence, decode) -> str:
    """``s``'s text grown by the tokens since the last call, decoding only a window of the newest tokens (vLLM's
    incremental detokenization): the window starts at the last token already turned into text, so a merge or a
    multi-byte character across the boundary comes out as in a full decode; text ending in an incomplete
    character waits for the next token."""
    skip = s.params.skip_special_tokens
    prefix = decode(s.out[s.prefix_offset:s.read_offset], skip) if s.read_offset > s.prefix_offset else ""
    full = decode(s.out[s.prefix_offset:], skip)
    if not full.startswith(prefix):  # a tokenizer whose decode is not prefix-stable here: decode it all once
        s.inc_text = decode(s.out, skip).rstrip("\ufffd")
        s.prefix_offset = s.read_offset = len(s.out)
    elif len(full) > len(prefix) and not full.endswith("\ufffd"):
        s.inc_text += full[len(prefix):]
        s.prefix_offset, s.read_offset = s.read_offset, len(s.out)
    return s.inc_text


def check_stop_strings(s: Sequence, decode) -> None:
    """Decode ``s`` (when a stop string, streaming or the end needs its text) and cut it at the first stop string.

    While it runs the text grows incrementally and only its new tail is searched; at its end it is decoded whole
    (one pass), so the final text is exactly the tokens' decode."""
    p = s.params
    if not p.stop and not s.request.stream and not s.finished:
        return
    if s.finished:
        text, before = decode(s.out, p.skip_special_tokens), 0
    else:
        before = len(s.inc_text)
        text = _incremental_text(s, decode)
    if p.stop:
        # A stop string first seen now ends in the new text: it starts at most len(x) - 1 characters before it.
        hits = [(i, x) for x in p.stop for i in (text.find(x, max(0, before - len(x) + 1)),) if i >= 0]
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
    # A streamed request's outputs share one copy of its prompt ids (copying them every step is most of the
    # cost of an output); the engine's own list is never handed out.
    if getattr(req, "prompt_out", None) is None:
        req.prompt_out = list(req.prompt_token_ids)
    return RequestOutput(req.request_id, req.prompt, req.prompt_out, outs, finished, cached, m)
