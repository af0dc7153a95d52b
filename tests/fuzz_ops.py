"""Hypothesis properties of every torch.ops.infinilm op: a plain-PyTorch fp32 match or a clean, named error."""
import math

import torch
from hypothesis import given
from hypothesis import strategies as st

from test_attention import reference as attention_reference

OPS = torch.ops.infinilm
CLEAN = (ValueError, TypeError, IndexError, RuntimeError)
FLOATS = [torch.float32, torch.float16, torch.bfloat16]
ATOL = {torch.float32: 2e-5, torch.float16: 4e-3, torch.bfloat16: 3e-2}


def expect(call, ok, names):
    """ok True: the call must succeed; False: it must raise cleanly; None: either. A raise names an argument
    quoted ('x') or with its value (x=...)."""
    try:
        out = call()
    except CLEAN as e:
        msg = str(e)
        assert ok is not True, f"valid call refused: {msg}"
        assert any(f"'{n}'" in msg or f"{n}=" in msg for n in names), f"error names none of {names}: {msg}"
        return None, False
    assert ok is not False, "invalid call accepted"
    return out, True


@st.composite
def tensor(draw, shape, dtype=torch.float32, layout=None, poison=True):
    """A random tensor of `shape` as one of several memory layouts (views), sometimes holding NaN / +-inf."""
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    layout = layout or draw(st.sampled_from(["dense", "row_strided", "offset", "step", "permuted"]))
    n = math.prod(shape)
    if layout == "row_strided" and len(shape) >= 2:
        t = torch.randn(*shape[:-1], shape[-1] + 3, generator=g)[..., : shape[-1]]
    elif layout == "offset":
        t = torch.randn(n + 5, generator=g)[5:].view(shape)
    elif layout == "step" and shape:
        t = torch.randn(*shape[:-1], 2 * shape[-1], generator=g)[..., ::2]
    elif layout == "permuted" and len(shape) >= 2:
        t = torch.randn(*reversed(shape), generator=g).permute(*reversed(range(len(shape))))
    else:
        t = torch.randn(*shape, generator=g)
    t = t.to(dtype) if dtype.is_floating_point else (t.abs() * 10).to(dtype)
    if poison and n and draw(st.integers(0, 9)) == 0:
        flat = t.reshape(-1).clone()
        flat[draw(st.integers(0, n - 1))] = draw(st.sampled_from([math.nan, math.inf, -math.inf]))
        t = t.copy_(flat.view(shape))
    return t


def finite_rows(x):
    """Rows (last dim) free of NaN/inf: only those are compared, the others just must not leak."""
    return torch.isfinite(x.float()).all(-1)


dims = st.integers(0, 5)
hidden = st.sampled_from([1, 2, 7, 16, 33, 64, 130])


@given(st.data())
def prop_rms_norm(data):
    lead = data.draw(st.lists(dims, min_size=0, max_size=3))
    H = data.draw(hidden)
    dt = data.draw(st.sampled_from(FLOATS))
    x = data.draw(tensor(tuple(lead) + (H,), dt))
    wshape = data.draw(st.sampled_from([(H,), (H,), (H + 1,), (1, H)]))
    w = data.draw(tensor(wshape, data.draw(st.sampled_from(FLOATS)), poison=False))
    eps = data.draw(st.sampled_from([1e-6, 1e-5, 0.0, 1.0, -1e-3]))
    ok = wshape == (H,) and eps >= 0
    out, ran = expect(lambda: OPS.rms_norm(x, w, eps), ok, ["input", "weight", "eps"])
    if ran:
        xf = x.float()
        ref = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps) * w.float()
        keep = finite_rows(x) & (xf.pow(2).mean(-1) + eps > 1e-30)
        assert out.shape == x.shape and out.dtype == dt
        torch.testing.assert_close(out.float()[keep], ref[keep], atol=ATOL[dt] * 4, rtol=ATOL[dt] * 4)


@given(st.data())
def prop_fused_add_rms_norm(data):
    lead = data.draw(st.lists(dims, min_size=1, max_size=2))
    H = data.draw(hidden)
    dt = data.draw(st.sampled_from(FLOATS))
    x = data.draw(tensor(tuple(lead) + (H,), dt))
    rshape = data.draw(st.sampled_from([tuple(lead) + (H,)] * 3 + [tuple(lead) + (H + 1,)]))
    rdt = data.draw(st.sampled_from([dt, dt, torch.float32]))
    r = data.draw(tensor(rshape, rdt))
    w = data.draw(tensor((H,), dt, poison=False))
    x0, r0 = x.float().clone(), r.float().clone()
    ok = None if rshape == x.shape and rdt == dt else False
    _, ran = expect(lambda: OPS.fused_add_rms_norm(x, r, w, 1e-5), ok, ["input", "residual", "weight"])
    if not ran:  # refused before any write
        torch.testing.assert_close(x.float(), x0, atol=0, rtol=0, equal_nan=True)
        torch.testing.assert_close(r.float(), r0, atol=0, rtol=0, equal_nan=True)
        return
    s = (x0 + r0).to(dt).float()
    ref = s * torch.rsqrt(s.pow(2).mean(-1, keepdim=True) + 1e-5) * w.float()
    keep = finite_rows(s)
    torch.testing.assert_close(r.float()[keep], s[keep], atol=ATOL[dt], rtol=ATOL[dt])
    torch.testing.assert_close(x.float()[keep], ref[keep], atol=ATOL[dt] * 4, rtol=ATOL[dt] * 4)


def rope_reference(pos, q, cache, neox):
    rot = cache.shape[1]
    cos, sin = cache[pos.long()].float().chunk(2, -1)  # [T, rot/2]
    out = q.float().clone()
    x = out[..., :rot]
    if neox:
        x1, x2 = x[..., : rot // 2].clone(), x[..., rot // 2 :].clone()
        out[..., : rot // 2] = x1 * cos[:, None] - x2 * sin[:, None]
        out[..., rot // 2 : rot] = x2 * cos[:, None] + x1 * sin[:, None]
    else:
        x1, x2 = x[..., 0::2].clone(), x[..., 1::2].clone()
        out[..., 0:rot:2] = x1 * cos[:, None] - x2 * sin[:, None]
        out[..., 1:rot:2] = x2 * cos[:, None] + x1 * sin[:, None]
    return out


@given(st.data())
def prop_rotary_embedding(data):
    T, hq, hk = data.draw(st.integers(0, 6)), data.draw(st.integers(1, 4)), data.draw(st.integers(1, 3))
    D = data.draw(st.sampled_from([2, 8, 16, 34]))
    rot = data.draw(st.sampled_from([D, D, D, D // 2 if D % 4 == 0 else D, D + 2, 3]))
    max_pos = data.draw(st.integers(1, 40))
    dt = data.draw(st.sampled_from(FLOATS))
    layouts = st.sampled_from(["dense", "row_strided", "offset", "dense", "row_strided", "step", "permuted"])
    q = data.draw(tensor((T, hq, D), dt, layout=data.draw(layouts), poison=False))
    k = data.draw(tensor((T, hk, D), dt, layout=data.draw(layouts), poison=False))
    pdt = data.draw(st.sampled_from([torch.int64, torch.int32] * 3 + [torch.float32]))
    hi = data.draw(st.sampled_from([max_pos] * 4 + [max_pos + 3]))
    pos = torch.randint(-1 if data.draw(st.booleans()) and hi > max_pos else 0, hi, (2 * T,))[:: data.draw(
        st.sampled_from([1, 2]))][:T].to(pdt)
    neox = data.draw(st.booleans())
    cache = OPS.rope_cos_sin_cache(max_pos, rot, 10000.0) if rot % 2 == 0 and rot > 0 else torch.randn(max_pos, rot)
    in_range = T == 0 or (pos.long().min() >= 0 and pos.long().max() < max_pos)
    ok = None if (pdt != torch.float32 and rot % 2 == 0 and rot <= D and in_range) else False
    q0, k0 = q.clone(), k.clone()
    _, ran = expect(lambda: OPS.rotary_embedding(pos, q, k, cache, neox), ok,
                    ["positions", "query", "key", "cos_sin_cache"])
    if ran:
        tol = ATOL[dt] * 8
        torch.testing.assert_close(q.float(), rope_reference(pos, q0, cache, neox), atol=tol, rtol=tol)
        torch.testing.assert_close(k.float(), rope_reference(pos, k0, cache, neox), atol=tol, rtol=tol)
    else:
        assert torch.equal(q, q0) and torch.equal(k, k0), "a refused call wrote its outputs"


@given(st.integers(-2, 50), st.integers(-2, 20), st.sampled_from(["default", "linear", "llama3", "yarn?"]),
       st.sampled_from([1.0, 2.0, 0.0, -1.0]))
def prop_rope_cos_sin_cache(max_pos, rot, rope_type, factor):
    ok = None if max_pos >= 1 and rot >= 2 and rot % 2 == 0 and rope_type != "yarn?" and factor > 0 else False
    if rope_type != "yarn?" and factor <= 0:
        ok = None  # may be refused as a bad factor; when accepted, the table must still be finite
    out, ran = expect(lambda: OPS.rope_cos_sin_cache(max_pos, rot, 10000.0, rope_type, factor),
                      ok, ["max_position", "rotary_dim", "rope_type", "factor", "base"])
    if not ran:
        return
    assert out.shape == (max_pos, rot) and out.dtype == torch.float32
    if rope_type in ("default", "linear") and factor > 0:
        inv = 10000.0 ** (-torch.arange(0, rot, 2, dtype=torch.float64) / rot)
        p = torch.arange(max_pos, dtype=torch.float64) / (factor if rope_type == "linear" else 1.0)
        ang = p[:, None] * inv[None]
        torch.testing.assert_close(out.double(), torch.cat([ang.cos(), ang.sin()], -1), atol=1e-5, rtol=0)


@given(st.data())
def prop_silu_and_mul(data):
    lead = data.draw(st.lists(dims, min_size=0, max_size=3))
    last = data.draw(st.sampled_from([0, 1, 2, 6, 7, 64, 130]))
    dt = data.draw(st.sampled_from(FLOATS))
    x = data.draw(tensor(tuple(lead) + (last,), dt))
    out, ran = expect(lambda: OPS.silu_and_mul(x), None if last % 2 == 0 else False, ["input"])
    if ran:
        a, b = x.float().chunk(2, -1) if last else (x.float(), x.float())
        ref = torch.nn.functional.silu(a) * b
        assert out.shape == (*lead, last // 2)
        keep = finite_rows(x)
        torch.testing.assert_close(out.float()[keep], ref[keep], atol=ATOL[dt] * 4, rtol=ATOL[dt] * 4)


def index_vector(values, dtype, stride):
    """An index tensor holding `values`, as a dense tensor or a strided view."""
    t = torch.tensor(values, dtype=torch.int64)
    if stride > 1:
        base = torch.full((max(len(values), 1) * stride,), 10**9, dtype=torch.int64)
        base[::stride][: len(values)] = t
        t = base[::stride][: len(values)]
    return t.to(dtype)


@given(st.data())
def prop_reshape_and_cache(data):
    nb, hk, D = data.draw(st.integers(1, 4)), data.draw(st.integers(1, 3)), 8
    bs = data.draw(st.sampled_from([1, 4, 16]))
    T = data.draw(st.integers(0, min(8, nb * bs)))
    dt = data.draw(st.sampled_from(FLOATS))
    key, value = data.draw(tensor((T, hk, D), dt)), data.draw(tensor((T, hk, D), dt))
    slots = data.draw(st.lists(st.integers(-1, nb * bs - 1), min_size=T, max_size=T, unique=True))
    bad = data.draw(st.sampled_from([None] * 6 + ["range", "neg", "len", "dtype", "cache_shape"]))
    if bad == "range" and T:
        slots[-1] = nb * bs + data.draw(st.integers(0, 3))
    elif bad == "neg" and T:
        slots[0] = -2
    elif bad == "len":
        slots = slots + [-1]
    sm = index_vector(slots, data.draw(st.sampled_from([torch.int64, torch.int32])), data.draw(st.sampled_from([1, 2])))
    if bad == "dtype":
        sm = sm.float()
    kc = torch.randn(nb, hk, bs + (bad == "cache_shape"), D).to(dt)
    vc = torch.randn(nb, hk, bs, D).to(dt)
    k0, v0 = kc.clone(), vc.clone()
    ok = None if key.stride(-1) != 1 or value.stride(-1) != 1 else (bad is None or (bad in ("range", "neg") and T == 0))
    _, ran = expect(lambda: OPS.reshape_and_cache(key, value, kc, vc, sm), ok,
                    ["slot_mapping", "key", "value", "key_cache", "value_cache"])
    if not ran:
        assert torch.equal(kc, k0) and torch.equal(vc, v0), "a refused call wrote the cache"
        return
    kref, vref = k0.transpose(1, 2).reshape(-1, hk, D).clone(), v0.transpose(1, 2).reshape(-1, hk, D).clone()
    for t, s_ in enumerate(slots):
        if s_ >= 0:
            kref[s_], vref[s_] = key[t], value[t]
    to_cache = lambda x: x.view(nb, bs, hk, D).transpose(1, 2)  # noqa: E731
    torch.testing.assert_close(kc, to_cache(kref), atol=0, rtol=0, equal_nan=True)
    torch.testing.assert_close(vc, to_cache(vref), atol=0, rtol=0, equal_nan=True)


@st.composite
def attention_case(draw, prefill):
    """A paged cache with random scattered blocks and requests, then at most one named corruption."""
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    hk, group = draw(st.integers(1, 2)), draw(st.sampled_from([1, 2, 3]))
    D, bs = draw(st.sampled_from([8, 16])), draw(st.sampled_from([1, 4, 16]))
    n = draw(st.integers(1 if not prefill else 0, 4))
    seq = [draw(st.integers(1 if not prefill else 0, 40)) for _ in range(n)]
    qlen = [1] * n if not prefill else [draw(st.integers(0, s)) for s in seq]
    need = [math.ceil(s / bs) for s in seq]
    nb = sum(need) + draw(st.integers(1, 3))
    mb = max(need + [0]) + draw(st.integers(0, 2))
    perm = torch.randperm(nb, generator=g).tolist()
    bt = torch.full((n, max(mb, 1)), -1, dtype=torch.int64)
    for r, k in enumerate(need):
        bt[r, :k] = torch.tensor(perm[:k], dtype=torch.int64)
        perm = perm[k:]
    dt = draw(st.sampled_from(FLOATS))
    kc = (torch.randn(nb, hk, bs, D, generator=g)).to(dt)
    vc = (torch.randn(nb, hk, bs, D, generator=g)).to(dt)
    q = draw(tensor((sum(qlen), hk * group, D), dt, poison=False))
    idt, stride = draw(st.sampled_from([torch.int64, torch.int32])), draw(st.sampled_from([1, 2]))
    bad = draw(st.sampled_from([None] * 5 + ["seq_big", "seq_neg", "block_id", "qsl", "heads", "bt_dtype"]))
    if bad == "seq_big" and n:
        seq[-1] = bt.shape[1] * bs + draw(st.integers(1, 5))
    elif bad == "seq_neg" and n:
        seq[0] = -1
    elif bad == "block_id" and n and need[0]:
        bt[0, 0] = draw(st.sampled_from([-1, nb, nb + 7]))
    elif bad == "heads" and hk > 1:
        q = q[:, : hk * group - 1]  # one head short: not a multiple of the kv heads
    elif bad == "bt_dtype":
        bt = bt.float()
    elif not (bad == "qsl" and prefill and n):
        bad = None
    qsl = [0] + torch.tensor(qlen, dtype=torch.int64).cumsum(0).tolist()
    if bad == "qsl":
        qsl[-1] += 1
    case = dict(query=q, key_cache=kc, value_cache=vc, block_tables=bt if bad == "bt_dtype" else bt.to(idt),
                query_start_loc=index_vector(qsl, idt, stride), seq_lens=index_vector(seq, idt, stride),
                scale=D ** -0.5)
    return case, bad


def _attention(data, prefill):
    case, bad = data.draw(attention_case(prefill))
    names = ["seq_lens", "block_tables", "query_start_loc", "query", "key_cache", "max_seq_len"]
    ok = None if case["query"].stride(-1) != 1 else bad is None
    if prefill:
        out, ran = expect(lambda: OPS.paged_attention_prefill(**case), ok, names)
    else:
        args = {k: v for k, v in case.items() if k != "query_start_loc"}
        out, ran = expect(lambda: OPS.paged_attention_decode(**args), ok, names)
    if ran:
        ref = attention_reference(**case)
        dt = case["query"].dtype
        lp = 0.0
        if dt != torch.float32 and ref.numel():  # plain PyTorch's own error at this precision
            lp = (attention_reference(**case, dtype=dt).float() - ref).abs().max().item()
        err = (out.float() - ref).abs().max().item() if out.numel() else 0.0
        assert err <= 2 * lp + ATOL[dt] * 4, f"max error {err} vs plain PyTorch {dt} error {lp}"


@given(st.data())
def prop_paged_attention_decode(data):
    _attention(data, prefill=False)


@given(st.data())
def prop_paged_attention_prefill(data):
    _attention(data, prefill=True)


@given(st.data())
def prop_sample(data):
    B, V = data.draw(st.integers(0, 5)), data.draw(st.sampled_from([1, 2, 17, 300]))
    dt = data.draw(st.sampled_from(FLOATS))
    logits = data.draw(tensor((B, V), dt, layout=data.draw(st.sampled_from(["dense", "row_strided", "step"]))))
    row = lambda vals: st.lists(st.sampled_from(vals), min_size=B, max_size=B)  # noqa: E731
    temp, top_k, top_p = data.draw(row([0.0, 0.7, 1.0, 2.0])), data.draw(row([0, 1, 3, V + 5])), \
        data.draw(row([1.0, 0.9, 0.3]))
    if B and data.draw(st.integers(0, 3)) == 0:  # one bad parameter
        which, b = data.draw(st.integers(0, 2)), data.draw(st.integers(0, B - 1))
        bad_values = [[-1.0, math.inf, math.nan], [-2], [0.0, 1.5]][which]
        (temp, top_k, top_p)[which][b] = data.draw(st.sampled_from(bad_values))
    seeds = torch.arange(B, dtype=torch.int64) + data.draw(st.integers(0, 2**40))
    good_params = all(t >= 0 and math.isfinite(t) for t in temp) and all(k >= 0 for k in top_k) and \
        all(0 < p <= 1 for p in top_p)
    lf = logits.float()
    good_logits = not (torch.isnan(lf).any() or torch.isposinf(lf).any() or torch.isneginf(lf).all(1).any())
    extra = data.draw(st.sampled_from([None] * 4 + ["len", "dtype"]))
    tt = torch.tensor(temp + ([1.0] if extra == "len" else []))
    kk = torch.tensor(top_k, dtype=torch.int64 if extra != "dtype" else torch.float32)
    ok = None if logits.stride(-1) != 1 else (good_params and good_logits and extra is None)
    out, ran = expect(lambda: OPS.sample(logits, tt, kk, torch.tensor(top_p), seeds), ok,
                      ["logits", "temperature", "top_k", "top_p", "seeds"])
    if not ran:
        return
    assert out.shape == (B,) and out.dtype == torch.int64
    for b in range(B):
        tok = int(out[b])
        row = lf[b]
        assert 0 <= tok < V and row[tok] > -math.inf, f"row {b} drew {tok}"
        if temp[b] == 0 or top_k[b] == 1:
            assert row[tok] == row.max(), f"greedy row {b} drew {tok} (logit {row[tok]}, max {row.max()})"
        elif 0 < top_k[b] < V:
            assert (row > row[tok]).sum() < top_k[b], f"row {b} drew {tok} outside its top-{top_k[b]}"


def penalties_reference(logits, prompt, output, rep, pres, freq):
    """vLLM's penalties in fp32: repetition over prompt + output tokens, then frequency and presence over output."""
    x = logits.float().clone()
    for b in range(x.shape[0]):
        seen = {int(t) for t in prompt[b].tolist() + output[b].tolist() if t >= 0}
        for t in seen:
            x[b, t] = x[b, t] / rep[b] if x[b, t] > 0 else x[b, t] * rep[b]
        counts = torch.bincount(output[b][output[b] >= 0].long(), minlength=x.shape[1]).float()
        x[b] -= freq[b] * counts + pres[b] * (counts > 0).float()
    return x


@given(st.data())
def prop_apply_penalties(data):
    B, V = data.draw(st.integers(0, 4)), data.draw(st.sampled_from([1, 5, 33, 300]))
    dt = data.draw(st.sampled_from(FLOATS))
    logits = data.draw(tensor((B, V), dt, layout="dense", poison=False))
    Lp, Lo = data.draw(st.integers(0, 6)), data.draw(st.integers(0, 6))
    ids = lambda L: torch.tensor(data.draw(st.lists(st.lists(st.integers(-1, V - 1), min_size=L, max_size=L),  # noqa
                                                    min_size=B, max_size=B)), dtype=torch.int64).view(B, L)
    prompt, output = ids(Lp), ids(Lo)
    rep = torch.tensor(data.draw(st.lists(st.sampled_from([1.0, 0.5, 1.3, 2.0]), min_size=B, max_size=B)))
    pres = torch.tensor(data.draw(st.lists(st.sampled_from([0.0, 0.5, -1.0]), min_size=B, max_size=B)))
    freq = torch.tensor(data.draw(st.lists(st.sampled_from([0.0, 0.25, 1.5]), min_size=B, max_size=B)))
    bad = data.draw(st.sampled_from([None] * 5 + ["id", "rep", "shape", "dtype"])) if B else None
    if bad == "id" and (Lp or Lo):
        (prompt if Lp else output)[0, 0] = data.draw(st.sampled_from([V, V + 7, -2]))
    elif bad == "rep":
        rep[0] = data.draw(st.sampled_from([0.0, -1.0, math.inf, math.nan]))
    elif bad == "shape":
        freq = torch.zeros(B + 1)
    elif bad == "dtype":
        output = output.float()
    else:
        bad = None
    want = penalties_reference(logits, prompt, output, rep, pres, freq) if bad is None else None
    before = logits.clone()
    _, ran = expect(lambda: OPS.apply_penalties(logits, prompt, output, rep, pres, freq), bad is None,
                    ["logits", "prompt_token_ids", "output_token_ids", "repetition_penalty", "presence_penalty",
                     "frequency_penalty"])
    if not ran:
        assert torch.equal(logits, before), "a refused call changed the logits"
        return
    torch.testing.assert_close(logits.float(), want.to(dt).float(), atol=ATOL[dt], rtol=ATOL[dt])


@given(st.data())
def prop_logprobs(data):
    B, V = data.draw(st.integers(0, 4)), data.draw(st.sampled_from([1, 7, 64, 1000]))
    dt = data.draw(st.sampled_from(FLOATS))
    logits = data.draw(tensor((B, V), dt, layout=data.draw(st.sampled_from(["dense", "row_strided", "step"])),
                              poison=False))
    k = data.draw(st.sampled_from([0, 1, min(V, 5), V, V + 1, -1, 2000]))
    ids = torch.tensor(data.draw(st.lists(st.integers(0, V - 1), min_size=B, max_size=B)), dtype=torch.int64)
    bad_id = B and data.draw(st.integers(0, 5)) == 0
    if bad_id:
        ids[0] = data.draw(st.sampled_from([V, -1, V + 100]))
    ok = None if logits.stride(-1) != 1 else (0 <= k <= min(V, 1024) and not bad_id)
    out, ran = expect(lambda: OPS.logprobs(logits, ids, k), ok, ["logits", "token_ids", "k"])
    if not ran:
        return
    lp, top, top_ids = out
    ref = torch.log_softmax(logits.float(), -1)
    tol = 1e-4 if dt == torch.float32 else 1e-3
    torch.testing.assert_close(lp, ref.gather(1, ids.view(-1, 1)).view(-1), atol=tol, rtol=tol)
    assert top.shape == (B, k) and top_ids.shape == (B, k)
    torch.testing.assert_close(top, ref.gather(1, top_ids), atol=tol, rtol=tol)
    if k:  # the k largest, decreasing
        torch.testing.assert_close(top, ref.topk(k, dim=1).values, atol=tol, rtol=tol)


OP_PROPS = {f.__name__[5:]: f for f in (prop_rms_norm, prop_fused_add_rms_norm, prop_rotary_embedding,
                                         prop_rope_cos_sin_cache, prop_silu_and_mul, prop_reshape_and_cache,
                                         prop_paged_attention_decode, prop_paged_attention_prefill, prop_sample,
                                         prop_apply_penalties, prop_logprobs)}

from fuzz_ops_fused import FUSED_PROPS  # noqa: E402  (its properties reuse the helpers above)

OP_PROPS.update(FUSED_PROPS)
