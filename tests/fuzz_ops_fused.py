"""Hypothesis properties of the fused decode ops (linear, silu_and_mul_linear, rotary_embedding_and_cache)."""
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

from fuzz_ops import ATOL, FLOATS, OPS, expect, index_vector, rope_reference, tensor

LAYOUTS = st.sampled_from(["dense", "row_strided", "offset", "dense", "step", "permuted"])


def _bias(data, n, dt):
    kind = data.draw(st.sampled_from([None, None, "ok", "len", "dtype"]))
    if kind is None:
        return None, True
    other = torch.float16 if dt != torch.float16 else torch.float32
    b = torch.randn(n + (kind == "len")).to(other if kind == "dtype" else dt)
    return b, kind == "ok"


@given(st.data())
def prop_linear(data):
    m, n, k = data.draw(st.integers(0, 10)), data.draw(st.integers(1, 40)), data.draw(st.integers(1, 70))
    dt = data.draw(st.sampled_from(FLOATS))
    x = data.draw(tensor((m, k), dt, layout=data.draw(LAYOUTS), poison=False))
    kw = k + data.draw(st.sampled_from([0, 0, 0, 1]))
    w = torch.randn(n, kw).to(dt if data.draw(st.integers(0, 5)) else torch.float16 if dt != torch.float16 else torch.float32)
    b, b_ok = _bias(data, n, dt)
    ok = kw == k and w.dtype == dt and b_ok
    out, ran = expect(lambda: OPS.linear(x, w, b), ok, ["input", "weight", "bias"])
    if ran:
        ref = x.float() @ w.float().T + (b.float() if b is not None else 0)
        tol = ATOL[dt] * (1 + k ** 0.5)
        torch.testing.assert_close(out.float(), ref, atol=tol, rtol=tol)


@given(st.data())
def prop_silu_and_mul_linear(data):
    m, n, k = data.draw(st.integers(0, 10)), data.draw(st.integers(1, 40)), data.draw(st.integers(1, 40))
    dt = data.draw(st.sampled_from(FLOATS))
    width = 2 * k + data.draw(st.sampled_from([0, 0, 0, 1]))
    x = data.draw(tensor((m, width), dt, layout=data.draw(LAYOUTS), poison=False))
    w = torch.randn(n, k).to(dt)
    b, b_ok = _bias(data, n, dt)
    out, ran = expect(lambda: OPS.silu_and_mul_linear(x, w, b), width == 2 * k and b_ok, ["input", "weight", "bias"])
    if ran:
        g, u = x.float().chunk(2, -1)
        ref = (F.silu(g) * u) @ w.float().T + (b.float() if b is not None else 0)
        tol = ATOL[dt] * 4 * (1 + k ** 0.5)
        torch.testing.assert_close(out.float(), ref, atol=tol, rtol=tol)


@given(st.data())
def prop_rotary_embedding_and_cache(data):
    T, hq, hk = data.draw(st.integers(0, 6)), data.draw(st.integers(1, 4)), data.draw(st.integers(1, 3))
    D = data.draw(st.sampled_from([2, 8, 16]))
    rot = data.draw(st.sampled_from([D, D, D // 2 if D % 4 == 0 else D]))
    nb, bs, max_pos = data.draw(st.integers(1, 3)), data.draw(st.sampled_from([1, 4, 16])), data.draw(st.integers(1, 40))
    T = min(T, nb * bs)
    dt = data.draw(st.sampled_from(FLOATS))
    layouts = st.sampled_from(["dense", "row_strided", "offset"])
    q = data.draw(tensor((T, hq, D), dt, layout=data.draw(layouts), poison=False))
    k = data.draw(tensor((T, hk, D), dt, layout=data.draw(layouts), poison=False))
    v = data.draw(tensor((T, hk, D), dt, layout=data.draw(layouts), poison=False))
    bad = data.draw(st.sampled_from([None] * 6 + ["slot", "pos", "one_norm", "norm_shape", "cache_heads"]))
    slots = data.draw(st.lists(st.integers(-1, nb * bs - 1), min_size=T, max_size=T, unique=True))
    if bad == "slot" and T:
        slots[0] = nb * bs
    pos = torch.randint(0, max_pos, (T,))
    if bad == "pos" and T:
        pos[-1] = max_pos
    norm = data.draw(st.booleans()) or bad in ("one_norm", "norm_shape")
    qw = torch.randn(D + (bad == "norm_shape")).to(dt) if norm else None
    kw = (torch.randn(D + (bad == "norm_shape")).to(dt) if bad != "one_norm" else None) if norm else None
    idt = data.draw(st.sampled_from([torch.int64, torch.int32]))
    sm, pos = index_vector(slots, idt, data.draw(st.sampled_from([1, 2]))), pos.to(idt)
    kc = torch.randn(nb, hk + (bad == "cache_heads"), bs, D).to(dt)
    vc = torch.randn_like(kc)
    cache = OPS.rope_cos_sin_cache(max_pos, rot, 10000.0)
    neox = data.draw(st.booleans())
    before = [t.clone() for t in (q, k, kc, vc)]
    ok = bad is None or (bad in ("slot", "pos") and T == 0)
    _, ran = expect(lambda: OPS.rotary_embedding_and_cache(pos, q, k, v, kc, vc, sm, cache, neox, qw, kw, 1e-6), ok,
                    ["positions", "query", "key", "value", "key_cache", "value_cache", "slot_mapping",
                     "q_norm_weight", "k_norm_weight"])
    if not ran:
        for t, b in zip((q, k, kc, vc), before):
            assert torch.equal(t, b), "a refused call wrote its outputs"
        return
    q0, k0 = before[0], before[1]
    if norm:
        def nrm(x, w):
            xf = x.float()
            return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + 1e-6) * w.float()).to(dt)
        q0, k0 = nrm(q0, qw), nrm(k0, kw)
    tol = ATOL[dt] * 8
    kref = rope_reference(pos, k0, cache, neox)
    torch.testing.assert_close(q.float(), rope_reference(pos, q0, cache, neox), atol=tol, rtol=tol)
    torch.testing.assert_close(k.float(), kref, atol=tol, rtol=tol)
    rk, rv = before[2].float().clone(), before[3].clone()
    for t, s_ in enumerate(slots):
        if s_ >= 0:
            rk[s_ // bs, :, s_ % bs], rv[s_ // bs, :, s_ % bs] = kref[t], v[t]
    torch.testing.assert_close(kc.float(), rk, atol=tol, rtol=tol)
    torch.testing.assert_close(vc, rv, atol=0, rtol=0)


FUSED_PROPS = {f.__name__[5:]: f for f in (prop_linear, prop_silu_and_mul_linear, prop_rotary_embedding_and_cache)}
