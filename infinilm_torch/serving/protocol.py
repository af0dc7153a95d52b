"""OpenAI request bodies -> (prompts, SamplingParams), and the response / error JSON shapes."""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

from infinilm_torch.serving import defaults
from infinilm_torch.serving.params import CompletionOutput, SamplingParams


class RequestError(ValueError):
    """A bad request: becomes an OpenAI error body with ``status`` (400 unless said otherwise)."""

    def __init__(self, message: str, param: Optional[str] = None, status: int = 400,
                 err_type: str = "BadRequestError"):
        super().__init__(message)
        self.param, self.status, self.err_type = param, status, err_type


def error_body(message: str, err_type: str, status: int, param: Optional[str] = None) -> Dict[str, Any]:
    return {"error": {"message": message, "type": err_type, "param": param, "code": status}}


# body field -> (SamplingParams field, accepted python types)
_NUM, _INT = (int, float), (int,)
_FIELDS = {
    "n": ("n", _INT), "temperature": ("temperature", _NUM), "top_p": ("top_p", _NUM), "top_k": ("top_k", _INT),
    "min_p": ("min_p", _NUM), "max_tokens": ("max_tokens", _INT), "min_tokens": ("min_tokens", _INT),
    "seed": ("seed", _INT), "presence_penalty": ("presence_penalty", _NUM),
    "frequency_penalty": ("frequency_penalty", _NUM), "repetition_penalty": ("repetition_penalty", _NUM),
    "ignore_eos": ("ignore_eos", (bool,)), "skip_special_tokens": ("skip_special_tokens", (bool,)),
}


def sampling_params(body: Dict[str, Any], chat: bool) -> SamplingParams:
    kw: Dict[str, Any] = {}
    if chat and body.get("max_completion_tokens") is not None:
        body = dict(body, max_tokens=body["max_completion_tokens"])
    if chat and body.get("max_tokens") is None:
        kw["max_tokens"] = defaults.CHAT_MAX_TOKENS
    for key, (name, types) in _FIELDS.items():
        v = body.get(key)
        if v is None:
            continue
        if isinstance(v, bool) and bool not in types or not isinstance(v, types):
            raise RequestError(f"'{key}' must be {'a number' if types is _NUM else types[0].__name__}, got {v!r}", key)
        kw[name] = v
    stop = body.get("stop")
    if stop is not None:
        if isinstance(stop, str):
            stop = [stop]
        if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop):
            raise RequestError(f"'stop' must be a string or a list of strings, got {stop!r}", "stop")
        kw["stop"] = stop
    if body.get("stop_token_ids") is not None:
        kw["stop_token_ids"] = body["stop_token_ids"]
    lp = body.get("top_logprobs" if chat else "logprobs")
    if chat and body.get("logprobs"):
        kw["logprobs"] = lp if lp is not None else 0
    elif not chat and lp is not None:
        kw["logprobs"] = lp
    try:
        return SamplingParams(**kw)
    except (TypeError, ValueError) as e:
        raise RequestError(str(e).replace("SamplingParams.", ""), None) from None


def completion_prompts(body: Dict[str, Any]) -> List[Any]:
    p = body.get("prompt")
    if isinstance(p, str):
        return [p]
    if isinstance(p, list) and p:
        if all(isinstance(t, int) and not isinstance(t, bool) for t in p):
            return [p]
        if all(isinstance(x, str) for x in p) or all(isinstance(x, list) and x and all(
                isinstance(t, int) and not isinstance(t, bool) for t in x) for x in p):
            return list(p)
    raise RequestError("'prompt' must be a string, a list of strings, a list of token ids or a list of such lists",
                       "prompt")


def chat_messages(body: Dict[str, Any]) -> List[Dict[str, str]]:
    msgs = body.get("messages")
    if not isinstance(msgs, list) or not msgs:
        raise RequestError("'messages' must be a non-empty list", "messages")
    out = []
    for m in msgs:
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise RequestError(f"each message needs a 'role' string, got {m!r}", "messages")
        content = m.get("content")
        if isinstance(content, list):  # [{"type": "text", "text": ...}, ...]
            content = "".join(c.get("text", "") for c in content if isinstance(c, dict) and c.get("type") == "text")
        if not isinstance(content, str):
            raise RequestError(f"message content must be a string or text parts, got {content!r}", "messages")
        out.append({"role": m["role"], "content": content})
    return out


def logprobs_json(o: CompletionOutput, decode, chat: bool, k: int, start: int = 0) -> Optional[Dict[str, Any]]:
    """Tokens ``start``.. of ``o`` in the OpenAI logprobs layout (chat or legacy completions), top ``k`` each."""
    if o.logprobs is None:
        return None
    items = list(zip(o.token_ids[start:], o.logprobs[start:]))

    def top(e):
        return sorted(((i, lp) for i, lp in e.items() if lp.rank is not None and lp.rank <= k),
                      key=lambda kv: kv[1].rank)
    if chat:
        return {"content": [{"token": decode([t]), "logprob": e[t].logprob,
                             "top_logprobs": [{"token": decode([i]), "logprob": lp.logprob} for i, lp in top(e)]}
                            for t, e in items]}
    return {"tokens": [decode([t]) for t, _ in items], "token_logprobs": [e[t].logprob for t, e in items],
            "top_logprobs": [{decode([i]): lp.logprob for i, lp in top(e)} for _, e in items]}


def usage(prompt_tokens: int, completion_tokens: int) -> Dict[str, int]:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def split_choice(index: int, n: int) -> Tuple[int, int]:
    return divmod(index, n)
