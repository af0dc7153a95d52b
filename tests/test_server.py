"""The OpenAI-compatible server on loopback, driven by the official ``openai`` client (and raw httpx for bad input)."""
import asyncio
import socket
import threading
import time

import pytest
import torch

from infinilm_torch import LLM, SamplingParams

openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")
uvicorn = pytest.importorskip("uvicorn")

from infinilm_torch.serving.server import build_app  # noqa: E402
from test_serving import BLOCK_BYTES, tiny_model  # noqa: E402

NAME = "tiny"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    path = tiny_model(str(tmp_path_factory.mktemp("server") / "tiny"))
    llm = LLM(path, cache="paged", block_size=4, max_kv_memory_bytes=64 * BLOCK_BYTES, max_num_seqs=16,
              progress=False)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    srv = uvicorn.Server(uvicorn.Config(build_app(llm, NAME), host="127.0.0.1", port=port, log_level="warning"))
    t = threading.Thread(target=srv.run, daemon=True)
    t.start()
    deadline = time.time() + 60
    while not srv.started:
        assert time.time() < deadline and t.is_alive(), "server did not start"
        time.sleep(0.05)
    yield llm, f"http://127.0.0.1:{port}"
    srv.should_exit = True
    t.join(30)


def client(url, **kw):
    return openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0, timeout=120, **kw)


def reference(llm, prompt, **kw):
    return llm.generate([prompt], SamplingParams(**kw), use_tqdm=False)[0].outputs[0]


def test_completions_and_models(server):
    llm, url = server
    c = client(url)
    assert [m.id for m in c.models.list().data] == [NAME]
    r = c.completions.create(model=NAME, prompt="Once upon", max_tokens=12, temperature=0)
    want = reference(llm, "Once upon", max_tokens=12, temperature=0)
    assert r.choices[0].text == want.text and r.choices[0].finish_reason == "length"
    assert (r.usage.prompt_tokens, r.usage.completion_tokens) == (10, 12)
    r = c.completions.create(model=NAME, prompt=[[5, 6, 7], [8, 9]], max_tokens=4, temperature=0, n=2, seed=3)
    assert [ch.index for ch in r.choices] == [0, 1, 2, 3]
    assert r.choices[2].text == reference(llm, [8, 9], max_tokens=4, temperature=0).text
    r = c.completions.create(model=NAME, prompt="abc", max_tokens=5, temperature=0.9, seed=11, logprobs=2)
    want = reference(llm, "abc", max_tokens=5, temperature=0.9, seed=11, logprobs=2)
    assert r.choices[0].text == want.text
    assert r.choices[0].logprobs.token_logprobs == pytest.approx([e[t].logprob for t, e in
                                                                  zip(want.token_ids, want.logprobs)], abs=1e-5)
    assert httpx.get(url + "/health").status_code == 200


def test_chat_and_streaming_equal_non_streamed(server):
    llm, url = server
    c = client(url)
    msgs = [{"role": "user", "content": "Hi!"}]
    full = c.chat.completions.create(model=NAME, messages=msgs, max_tokens=16, temperature=0, stop=["zz"])
    want = llm.chat(msgs, SamplingParams(max_tokens=16, temperature=0, stop=["zz"]), use_tqdm=False)[0].outputs[0]
    assert full.choices[0].message.content == want.text and full.choices[0].message.role == "assistant"
    chunks = list(c.chat.completions.create(model=NAME, messages=msgs, max_tokens=16, temperature=0, stop=["zz"],
                                            stream=True, stream_options={"include_usage": True}))
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert text == want.text and len([ch for ch in chunks if ch.choices]) > 3
    assert [ch.choices[0].finish_reason for ch in chunks if ch.choices][-1] == full.choices[0].finish_reason
    assert chunks[-1].usage.completion_tokens == full.usage.completion_tokens
    long = c.chat.completions.create(model=NAME, messages=msgs, temperature=0, extra_body={"ignore_eos": True})
    n_prompt = long.usage.prompt_tokens  # no max_tokens: up to the cache's 256 positions (64 blocks of 4)
    assert long.choices[0].finish_reason == "length" and long.usage.completion_tokens == 256 - n_prompt + 1
    stop = want.text[5:7]
    parts = [ch.choices[0].text for ch in c.completions.create(model=NAME, prompt="Once", max_tokens=20,
                                                              temperature=0, stop=[stop], stream=True)]
    non = c.completions.create(model=NAME, prompt="Once", max_tokens=20, temperature=0, stop=[stop])
    assert "".join(parts) == non.choices[0].text


def test_bad_requests_get_openai_errors(server):
    llm, url = server
    c = client(url)
    with pytest.raises(openai.NotFoundError, match="The model `nope` does not exist"):
        c.completions.create(model="nope", prompt="hi", max_tokens=2)
    with pytest.raises(openai.BadRequestError, match="max_position_embeddings 512"):
        c.completions.create(model=NAME, prompt=[5] * 600, max_tokens=2)
    with pytest.raises(openai.BadRequestError, match="the paged cache has only 64"):
        c.completions.create(model=NAME, prompt=[5] * 300, max_tokens=2)
    with pytest.raises(openai.BadRequestError, match=r"logprobs must be <= 20"):
        c.completions.create(model=NAME, prompt="hi", max_tokens=2, logprobs=5000)
    with pytest.raises(openai.BadRequestError, match="temperature must be a number >= 0"):
        c.completions.create(model=NAME, prompt="hi", max_tokens=2, temperature=-1)
    for body in (b"{not json", b"[1, 2]", b'{"model": "tiny", "prompt": 3}', b'{"messages": "x"}'):
        r = httpx.post(url + "/v1/completions" if b"prompt" in body or b"[" in body or b"{n" in body
                       else url + "/v1/chat/completions", content=body, headers={"content-type": "application/json"})
        assert r.status_code == 400, (body, r.text)
        assert set(r.json()["error"]) >= {"message", "type", "code"}
    r = httpx.post(url + "/v1/completions", json={"prompt": "hi", "max_tokens": "3"})
    assert r.status_code == 400 and "'max_tokens' must be int" in r.json()["error"]["message"]
    assert httpx.get(url + "/health").status_code == 200


def test_disconnect_mid_stream_frees_blocks(server):
    llm, url = server
    bm = llm._core.scheduler.bm
    with httpx.Client(timeout=60) as h:
        with h.stream("POST", url + "/v1/completions", json={"prompt": [7] * 40, "max_tokens": 200,
                                                           "ignore_eos": True, "stream": True}) as r:
            it = r.iter_lines()
            got = [next(it) for _ in range(6)]
            assert any(x.startswith("data: ") for x in got)
            assert llm._core.scheduler.running
    deadline = time.time() + 30
    while (llm._core.scheduler.running or bm.num_free != bm.num_blocks) and time.time() < deadline:
        time.sleep(0.05)
    assert not llm._core.scheduler.running and bm.num_free == bm.num_blocks
    assert httpx.get(url + "/health").status_code == 200


def test_load_many_concurrent_clients(server):
    """32 clients x 8 requests, all in flight together: each answer equals the request run alone."""
    llm, url = server
    prompts = [torch.randint(4, 100, (int(n),)).tolist() for n in torch.randint(2, 20, (16,))]
    want = [reference(llm, p, max_tokens=6, temperature=0).token_ids for p in prompts]

    async def one_client(ac, i):
        out = []
        for j in range(8):
            k = (i * 8 + j) % len(prompts)
            if j % 2:
                text = ""
                async for ch in await ac.completions.create(model=NAME, prompt=prompts[k], max_tokens=6,
                                                            temperature=0, stream=True):
                    text += ch.choices[0].text
            else:
                text = (await ac.completions.create(model=NAME, prompt=prompts[k], max_tokens=6,
                                                    temperature=0)).choices[0].text
            out.append((k, text))
        return out

    async def main():
        ac = openai.AsyncOpenAI(base_url=url + "/v1", api_key="none", max_retries=0, timeout=300)
        res = await asyncio.wait_for(asyncio.gather(*(one_client(ac, i) for i in range(32))), timeout=300)
        await ac.close()
        return res

    steps0 = llm._core.steps
    t0 = time.time()
    res = asyncio.run(main())
    took = time.time() - t0
    for out in res:
        for k, text in out:
            assert text == llm.decode(want[k]), k
    assert llm._core.steps - steps0 < 32 * 8 * 6 / 2, "requests were not batched together"
    assert httpx.get(url + "/health").status_code == 200 and took < 300
