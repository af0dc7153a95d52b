"""The OpenAI server's streaming path (SSE chunks of /v1/completions and /v1/chat/completions) with async
scheduling against synchronous steps: per choice the same streamed text, tokens and finish reason, and the
same logprobs up to fp32 rounding (chunks of different choices may interleave differently)."""
import json

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("httpx")
pytest.importorskip("transformers")

from fastapi.testclient import TestClient  # noqa: E402

from infinilm_torch.serving.server import build_app  # noqa: E402
from test_async_frontend import make  # noqa: E402
from test_serving import tiny_model  # noqa: E402


def _per_choice(body: str, chat: bool):
    """{choice index: [text, finish reason, tokens, token logprobs]} from an SSE body."""
    got = {}
    for line in body.splitlines():
        if not line.startswith("data: ") or line == "data: [DONE]":
            continue
        for ch in json.loads(line[6:])["choices"]:
            e = got.setdefault(ch["index"], ["", None, [], []])
            e[0] += (ch["delta"].get("content") or "") if chat else ch["text"]
            e[1] = ch.get("finish_reason") or e[1]
            lp = ch.get("logprobs") or {}
            if chat:
                e[2] += [t["token"] for t in lp.get("content") or []]
                e[3] += [t["logprob"] for t in lp.get("content") or []]
            else:
                e[2] += lp.get("tokens", [])
                e[3] += lp.get("token_logprobs", [])
    return got


def test_streamed_chunks_equal_sync(tmp_path):
    llm = make(tiny_model(str(tmp_path / "tiny")), cache="paged", max_num_seqs=3)
    reqs = [("/v1/completions", dict(prompt=["Once upon", "Hello", "Abc"], max_tokens=14, temperature=0.8,
                                     seed=3, n=2, stop=["a", "%"], logprobs=2), False),
            ("/v1/chat/completions", dict(messages=[{"role": "user", "content": "Hi there"}], max_tokens=10,
                                          temperature=0, logprobs=True, top_logprobs=2), True)]
    with TestClient(build_app(llm, "tiny")) as client:
        for url, body, chat in reqs:
            got = {}
            for mode in (False, True):
                llm.async_scheduling = mode
                fed0 = llm.engine.fed
                r = client.post(url, json={"model": "tiny", "stream": True, **body})
                assert r.status_code == 200, r.text
                got[mode] = _per_choice(r.text, chat)
                assert (llm.engine.fed > fed0) == mode
            assert got[True].keys() == got[False].keys() and len(got[True]) == (6 if not chat else 1)
            for i in got[False]:
                a, b = got[True][i], got[False][i]
                assert a[:3] == b[:3], (url, i)
                assert a[3] == pytest.approx(b[3], abs=1e-4)
            assert any(e[2] for e in got[False].values())
