"""Random workloads and cache settings through both engine loops (async scheduling vs synchronous steps).

Each case draws a cache (static or paged; block size, a tight or roomy paged cache, chunked prefill, prefix
caching) and requests mixing greedy and seeded sampling, n > 1, logprobs, stop strings, stop ids, min_tokens,
penalties and shared prompt heads; both loops must give the same tokens, text and finish reasons, logprobs to
fp32 rounding (their steps may hold different rows after early stops), and return every block.
"""
import os
import random

import pytest

from infinilm_torch import SamplingParams

pytest.importorskip("transformers")

from test_async_frontend import both, make  # noqa: E402
from test_serving import BLOCK_BYTES, tiny_model  # noqa: E402


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return tiny_model(str(tmp_path_factory.mktemp("async_fuzz") / "tiny"))


def _params(rng: random.Random) -> SamplingParams:
    kw = dict(max_tokens=rng.randint(1, 18), ignore_eos=rng.random() < 0.5)
    if rng.random() < 0.5:
        kw.update(temperature=rng.choice([0.5, 1.0, 1.5]), top_k=rng.choice([0, 5, 40]), seed=rng.randrange(1000),
                  top_p=rng.choice([1.0, 0.9]), n=rng.choice([1, 1, 2, 3]))
    else:
        kw.update(temperature=0.0)
    if rng.random() < 0.3:
        kw.update(logprobs=rng.randint(0, 3))
    if rng.random() < 0.3:
        kw.update(stop=[chr(rng.randrange(40, 120)) for _ in range(2)])
    if rng.random() < 0.3:
        kw.update(stop_token_ids=[rng.randrange(4, 100)])
    if rng.random() < 0.15:
        kw.update(min_tokens=rng.randint(1, min(4, kw["max_tokens"])))
    if rng.random() < 0.1:
        kw.update(repetition_penalty=1.5, presence_penalty=0.5)
    return SamplingParams(**kw)


@pytest.mark.parametrize("case", range(int(os.environ.get("INFINILM_FUZZ_CASES", 6))))
def test_random_workloads_equal_sync(model_dir, case):
    rng = random.Random(1000 + case)
    head = [rng.randrange(4, 100) for _ in range(rng.randint(0, 12))]
    prompts = [head + [rng.randrange(4, 100) for _ in range(rng.randint(1, 20))] for _ in range(rng.randint(3, 9))]
    params = [_params(rng) for _ in prompts]
    if case % 2 == 0:
        kw = dict(cache="static", max_batch_size=rng.randint(1, 6), max_cache_len=64)
    else:
        bs = rng.choice([4, 8])
        longest = max(len(p) + sp.max_tokens - 1 for p, sp in zip(prompts, params))
        blocks = max(rng.choice([48, 80, 800]) // bs, -(-longest // bs))  # tight caches preempt
        kw = dict(cache="paged", block_size=bs, max_kv_memory_bytes=blocks * BLOCK_BYTES * bs // 4,
                  max_num_seqs=rng.randint(2, 8), max_step_tokens=rng.choice([8, 16, 8192]),
                  enable_prefix_caching=rng.random() < 0.7)
    llm = make(model_dir, **kw)
    # Penalties and min_tokens run synchronous steps while they are live: overlap is then not guaranteed.
    overlapped = True if all(sp.plain and sp.min_tokens == 0 for sp in params) else None
    sync, _ = both(llm, prompts, params, overlapped=overlapped, exact=False)
    assert sum(len(c.token_ids) for o in sync for c in o.outputs) > 0
