"""Sampling parameters followed end to end through InferEngine: with a fixed seed and return_logits, the
engine's ids equal ops.sample (after the reference penalties) on the returned logits with the same
temperature / top-k / top-p / min-p / seeds; per-request seeds draw the same alone and in any batch position;
logprobs equal log_softmax of the returned logits; every new field is validated with a clear error."""
import pytest
import torch

from engine_utils import Input, PagedDriver, make_engine, make_hf, paged_config
from infinilm_torch import ops
from infinilm_torch.lib import _infinilm
from test_sampling_extras import ref_penalties, token_lists

V = 256


def paged_engine(num_blocks=64, block_size=8):
    model = make_hf(vocab=V)
    return make_engine(model, cache_config=paged_config(model, num_blocks, block_size)), num_blocks, block_size


def per_request(n, greedy_rows=True):
    T = torch.tensor([0.0, 0.8, 1.5, 2.5])[torch.randint(0 if greedy_rows else 1, 4, (n,))]
    K = torch.tensor([-1, 0, 1, 5, 40])[torch.randint(0, 5, (n,))]
    P = torch.tensor([1.0, 0.9, 0.5, 0.2])[torch.randint(0, 4, (n,))]
    Q = torch.tensor([0.0, 0.05, 0.2, 0.5])[torch.randint(0, 4, (n,))]
    S = torch.randint(-(2**62), 2**62, (n,))
    return T, K, P, Q, S


def op_params(T, K, P):
    """The engine's documented mapping of per-request values to the op's: top_k -1 -> 0, greedy rows."""
    K = torch.where(K < 0, 0, K)
    greedy = (T == 0) | (K == 1)
    return torch.where(greedy, 0.0, T), torch.where(greedy, 0, K), torch.where(greedy, 1.0, P)


def prompts(n, lo=3, hi=12):
    return [torch.randint(0, V, (int(torch.randint(lo, hi, ())),)).tolist() for _ in range(n)]


def test_engine_ids_equal_ops_sample_per_request():
    engine, nb, bs = paged_engine()
    n = 6
    drv = PagedDriver(engine, prompts(n), nb, bs)
    plan = [(r, len(drv.reqs[r]["tokens"])) for r in range(n)]
    dropped = {"top_p": 0, "min_p": 0, "top_k": 0, "temperature": 0}
    for step in range(8):
        T, K, P, Q, S = per_request(n)
        T[0], K[0], P[0], Q[0] = 2.5, 5, 1.0, 0.0  # one row where top-k alone binds: its guard below never idles
        out = drv.step(plan, temperature=1.0, top_k=50, top_p=1.0, temperatures=T, top_ks=K.int(), top_ps=P,
                       min_ps=Q, seeds=S)
        t, k, p = op_params(T, K, P)
        want = ops.sample(out.logits, t, k, p, S, Q)
        assert torch.equal(out.output_ids.view(-1), want), f"step {step}: engine {out.output_ids.view(-1)} op {want}"
        # The test is sensitive to each parameter: dropping it changes some draws over the steps.
        dropped["top_p"] += int((ops.sample(out.logits, t, k, torch.ones(n), S, Q) != want).sum())
        dropped["min_p"] += int((ops.sample(out.logits, t, k, p, S) != want).sum())
        dropped["top_k"] += int((ops.sample(out.logits, t, torch.zeros(n, dtype=torch.long), p, S, Q) != want).sum())
        dropped["temperature"] += int((ops.sample(out.logits, torch.where(t > 0, 1.0, 0.0), k, p, S, Q) != want).sum())
        plan = [(r, 1) for r in range(n)]
    assert all(v > 0 for v in dropped.values()), f"the draws do not depend on every parameter: {dropped}"


def test_engine_ids_equal_ops_sample_scalars():
    """Scalar parameters: request r draws with seed + r (the spec's rule)."""
    model = make_hf(vocab=V)
    engine = make_engine(model, cache_config=_infinilm.StaticKVCacheConfig(3, 64))
    ids = torch.randint(0, V, (1, 9))
    seen_top_p = 0
    for step, (T, k, p) in enumerate([(1.5, 0, 0.5), (2.0, 20, 0.3), (1.0, 5, 1.0), (2.5, 0, 0.4)]):
        engine.reset_cache()
        seed = 1000 + step
        out = engine.forward(Input(input_ids=ids, temperature=T, top_k=k, top_p=p, seed=seed, return_logits=True))
        full = lambda x, dt=torch.float32: torch.full((1,), x, dtype=dt)  # noqa: E731
        S = torch.tensor([seed])
        want = ops.sample(out.logits, full(T), full(k, torch.long), full(p), S)
        assert torch.equal(out.output_ids.view(-1), want)
        seen_top_p += int((ops.sample(out.logits, full(T), full(k, torch.long), full(1.0), S) != want).sum())
    engine.reset_cache()
    # Batch of 3 static rows: row r uses seed + r.
    ids = torch.randint(0, V, (3, 5))
    seen = 0
    for seed in range(20):
        engine.reset_cache()
        out = engine.forward(Input(input_ids=ids, temperature=2.0, top_k=0, top_p=0.3, seed=seed, return_logits=True))
        S = seed + torch.arange(3)
        want = ops.sample(out.logits, torch.full((3,), 2.0), torch.zeros(3, dtype=torch.long), torch.full((3,), 0.3), S)
        assert torch.equal(out.output_ids.view(-1), want)
        seen += int((ops.sample(out.logits, torch.full((3,), 2.0), torch.zeros(3, dtype=torch.long),
                                torch.ones(3), S) != want).sum())
    assert seen_top_p + seen > 0, "top_p never changed a draw: the test cannot catch a dropped top_p"


def run_requests(engine, nb, bs, reqs, order, steps, seeds_of):
    """Prefill then decode the requests `order` (indices into reqs) together; returns their token lists."""
    drv = PagedDriver(engine, [reqs[i] for i in order], nb, bs)
    n = len(order)
    plan = [(j, len(drv.reqs[j]["tokens"])) for j in range(n)]
    for step in range(steps):
        S = torch.tensor([seeds_of(order[j], step) for j in range(n)])
        drv.step(plan, temperatures=torch.full((n,), 1.3), top_ps=torch.full((n,), 0.95), top_ks=torch.zeros(n, dtype=torch.long),
                 seeds=S)
        plan = [(j, 1) for j in range(n)]
    return {order[j]: drv.reqs[j]["tokens"] for j in range(n)}


def test_per_request_seeds_are_batch_invariant():
    engine, nb, bs = paged_engine(num_blocks=96)
    reqs = prompts(3, 4, 10)
    seeds_of = lambda r, step: (r * 7919 + 12345) * 1_000_003 + step  # noqa: E731
    alone = run_requests(engine, nb, bs, reqs, [0], 10, seeds_of)[0]
    for order in ([0, 1, 2], [1, 0, 2], [2, 1, 0]):
        engine.reset_cache()
        got = run_requests(engine, nb, bs, reqs, order, 10, seeds_of)
        assert got[0] == alone, f"order {order}: {got[0]} vs alone {alone}"
    engine.reset_cache()
    other = run_requests(engine, nb, bs, reqs, [0], 10, lambda r, step: 99 + step)[0]
    assert other != alone, "another seed drew the same 10 tokens"


def test_engine_penalties_and_logprobs_end_to_end():
    engine, nb, bs = paged_engine()
    n = 5
    drv = PagedDriver(engine, prompts(n, 5, 15), nb, bs)
    plan = [(r, len(drv.reqs[r]["tokens"])) for r in range(n)]
    changed = 0
    for step in range(6):
        T, K, P, Q, S = per_request(n, greedy_rows=False)
        pr = torch.full((n, 16), -1, dtype=torch.long)
        outs = torch.full((n, 8), -1, dtype=torch.long)
        for r in range(n):
            toks = drv.reqs[r]["tokens"]
            p_len = min(drv.reqs[r]["prompt"], 16)
            pr[r, :p_len] = torch.tensor(toks[:p_len])
            o = toks[drv.reqs[r]["prompt"]:][-8:]
            if o:
                outs[r, : len(o)] = torch.tensor(o)
        rep = torch.rand(n) * 1.5 + 0.5
        pres, freq = torch.randn(n), torch.randn(n)
        out = drv.step(plan, temperatures=T, top_ks=K, top_ps=P, min_ps=Q, seeds=S, repetition_penalties=rep,
                       presence_penalties=pres, frequency_penalties=freq, prompt_token_ids=pr, output_token_ids=outs,
                       return_logprobs=4)
        raw = out.logits
        t, k, p = op_params(T, K, P)
        pen = ref_penalties(raw, pr, outs, rep, pres, freq)
        ids = out.output_ids.view(-1)
        assert torch.equal(ids, ops.sample(pen, t, k, p, S, Q))
        changed += int((ops.sample(raw, t, k, p, S, Q) != ids).sum())
        ref = torch.log_softmax(raw.float(), -1)  # raw logits: before penalties and temperature
        torch.testing.assert_close(out.logprobs, ref.gather(1, ids.view(-1, 1)).view(-1), atol=2e-5, rtol=2e-5)
        order = torch.sort(-ref, dim=1, stable=True).indices[:, :4]
        torch.testing.assert_close(out.top_token_ids, order)
        torch.testing.assert_close(out.top_logprobs, ref.gather(1, order), atol=2e-5, rtol=2e-5)
        plan = [(r, 1) for r in range(n)]
    assert changed > 0, "penalties never changed a draw"


def test_engine_logprobs_k0_and_off():
    model = make_hf(vocab=V)
    engine = make_engine(model)
    ids = torch.randint(0, V, (1, 6))
    out = engine.forward(Input(input_ids=ids, temperature=0.0, return_logits=True, return_logprobs=0))
    assert out.top_logprobs.shape == (1, 0) and out.top_token_ids.shape == (1, 0)
    ref = torch.log_softmax(out.logits, -1)
    torch.testing.assert_close(out.logprobs, ref[0, out.output_ids[0]], atol=2e-5, rtol=2e-5)
    engine.reset_cache()
    out = engine.forward(Input(input_ids=ids, temperature=0.0))
    assert out.logprobs is None and out.top_logprobs is None


def test_engine_sampling_fields_validated():
    model = make_hf(vocab=V)
    engine = make_engine(model, cache_config=paged_config(model, 16, 8))
    n = 2
    base = dict(input_ids=torch.tensor([[1, 2, 3, 4]]), input_lengths=torch.tensor([2, 2]),
                cache_lengths=torch.tensor([0, 0]), block_tables=torch.tensor([[0], [1]]),
                slot_mapping=torch.tensor([0, 1, 8, 9]))
    ids = torch.full((n, 3), -1)

    def bad(exc, match, **kw):
        with pytest.raises(exc, match=match):
            engine.forward(Input(**base, **kw))

    bad(ValueError, r"'temperatures' must have shape \[2\]", temperatures=torch.ones(3))
    bad(TypeError, r"'temperatures' must be a float tensor", temperatures=torch.ones(2, dtype=torch.long))
    bad(ValueError, r"'temperatures'\[1\] = -1 must be finite and >= 0", temperatures=torch.tensor([1.0, -1.0]))
    bad(ValueError, r"'top_ps'\[0\] = 0 must be in \(0, 1\]", top_ps=torch.tensor([0.0, 1.0]))
    bad(ValueError, r"'top_ps'\[1\] = 1.5", top_ps=torch.tensor([1.0, 1.5]))
    bad(ValueError, r"'min_ps'\[1\] = 2 must be in \[0, 1\]", min_ps=torch.tensor([0.0, 2.0]))
    bad(ValueError, r"'top_ks'\[0\] = -2 must be >= 1, or 0 / -1", top_ks=torch.tensor([-2, 3]))
    bad(TypeError, r"'top_ks' must be int64 or int32", top_ks=torch.tensor([1.0, 2.0]))
    bad(ValueError, r"'seeds' must have shape \[2\]", seeds=torch.tensor([1]))
    bad(ValueError, r"'repetition_penalties'\[0\] = 0 must be finite and > 0",
        repetition_penalties=torch.tensor([0.0, 1.0]), prompt_token_ids=ids, output_token_ids=ids)
    bad(ValueError, r"'presence_penalties'\[1\] = nan must be finite",
        presence_penalties=torch.tensor([0.0, float("nan")]), prompt_token_ids=ids, output_token_ids=ids)
    bad(ValueError, r"penalties need 'prompt_token_ids'", frequency_penalties=torch.tensor([0.1, 0.0]),
        output_token_ids=ids)
    bad(ValueError, r"'output_token_ids' must have shape \[2, L\]", frequency_penalties=torch.tensor([0.1, 0.0]),
        prompt_token_ids=ids, output_token_ids=torch.full((3, 2), -1))
    bad(IndexError, r"'prompt_token_ids'\[1, 2\] = 256 is outside \[-1, vocab_size = 256\)",
        frequency_penalties=torch.tensor([0.1, 0.0]), prompt_token_ids=torch.tensor([[1, 2, 3], [4, 5, 256]]),
        output_token_ids=ids)
    bad(ValueError, r"'return_logprobs' must be -1 \(off\) or a top-k count in \[0, 256\], got 300",
        return_logprobs=300)
    bad(ValueError, r"'return_logprobs' .* got -2", return_logprobs=-2)
    out = engine.forward(Input(**base, temperatures=torch.tensor([0.0, 0.0])))  # the engine is still usable
    assert out.output_ids.shape == (2, 1)


def test_engine_leaves_the_callers_sampling_tensors_alone():
    """The engine maps greedy rows (top_k 1, temperature 0) onto its own copies: float32 CPU temperatures / top_ps
    / min_ps and int64 top_ks / seeds come back from forward() unchanged."""
    engine, nb, bs = paged_engine()
    drv = PagedDriver(engine, prompts(4), nb, bs)
    fields = dict(temperatures=torch.tensor([0.9, 0.0, 1.2, 0.7]), top_ks=torch.tensor([1, 5, 0, -1]),
                  top_ps=torch.tensor([0.5, 0.9, 1.0, 0.3]), min_ps=torch.tensor([0.0, 0.1, 0.0, 0.2]),
                  seeds=torch.tensor([1, 2, 3, 4]))
    before = {k: v.clone() for k, v in fields.items()}
    drv.step([(r, len(drv.reqs[r]["tokens"])) for r in range(4)], **fields)
    for k, v in fields.items():
        assert torch.equal(v, before[k]), f"{k} changed: {before[k].tolist()} -> {v.tolist()}"
