"""torch.library.opcheck on the elementwise ops, and torch.compile(fullgraph=True) of a decoder-layer slice."""
import pytest
import torch

from infinilm_torch import ops

OPS = torch.ops.infinilm


def sample_inputs(device, dtype):
    T, H, hq, hk, d, bs, nb = 7, 96, 4, 2, 64, 16, 5
    table = ops.rope_cos_sin_cache(64, d, 10000.0).to(device)
    mk = lambda *s: torch.randn(*s, device=device, dtype=dtype)  # noqa: E731
    return [
        (OPS.rms_norm, (mk(T, H), mk(H), 1e-6)),
        (OPS.fused_add_rms_norm, (mk(T, H), mk(T, H), mk(H), 1e-6)),
        (OPS.rotary_embedding, (torch.randint(0, 64, (T,), device=device), mk(T, hq, d), mk(T, hk, d), table, True)),
        (OPS.rotary_embedding, (torch.randint(0, 64, (T,), device=device), mk(T, hq, d), mk(T, hk, d), table, False)),
        (OPS.silu_and_mul, (mk(T, 2 * H),)),
        (OPS.reshape_and_cache, (mk(T, hk, d), mk(T, hk, d), mk(nb, hk, bs, d), mk(nb, hk, bs, d),
                                 torch.randperm(nb * bs, device=device)[:T])),
    ] + _attention_inputs(device, mk, hq, hk, d, bs, nb)


def _attention_inputs(device, mk, hq, hk, d, bs, nb):
    """Paged attention with the defaults, with a sliding window, with a soft-cap, with both."""
    kc, vc = mk(nb, hk, bs, d), mk(nb, hk, bs, d)
    bt = torch.randperm(nb, device=device)[:4].view(2, 2).int()
    sl = torch.tensor([29, 7], device=device, dtype=torch.int32)
    qsl = torch.tensor([0, 5, 7], device=device, dtype=torch.int32)
    out = []
    for extra in ((), (None, 6), (None, -1, 20.0), (None, 3, 8.0)):
        out.append((OPS.paged_attention_decode, (mk(2, hq, d), kc, vc, bt, sl, d**-0.5) + extra))
        out.append((OPS.paged_attention_prefill, (mk(7, hq, d), kc, vc, bt, qsl, sl, d**-0.5) +
                    ((None,) + extra if extra else ())))
    return out


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_opcheck(device, dtype):
    for op, args in sample_inputs(device, dtype):
        torch.library.opcheck(op, args)


def _layer_slice(x, res, w, gate_up, qkv, pos, table, kc, vc, slots, hq, hk, d):
    ops.fused_add_rms_norm(x, res, w, 1e-6)
    h = ops.rms_norm(res, w, 1e-6)
    T = qkv.shape[0]
    q = qkv[:, : hq * d].view(T, hq, d)
    k = qkv[:, hq * d : (hq + hk) * d].view(T, hk, d)
    v = qkv[:, (hq + hk) * d :].view(T, hk, d)
    ops.rotary_embedding(pos, q, k, table, True)
    ops.reshape_and_cache(k, v, kc, vc, slots)
    return h + x, ops.silu_and_mul(gate_up), q * 2


@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
def test_compile_fullgraph_matches_eager(device, backend):
    torch._dynamo.reset()
    T, H, hq, hk, d, bs, nb = 5, 64, 4, 2, 32, 16, 4
    table = ops.rope_cos_sin_cache(64, d, 10000.0).to(device)
    args = [torch.randn(T, H, device=device), torch.randn(T, H, device=device), torch.randn(H, device=device),
            torch.randn(T, 2 * H, device=device), torch.randn(T, (hq + 2 * hk) * d, device=device),
            torch.randint(0, 64, (T,), device=device), table,
            torch.zeros(nb, hk, bs, d, device=device), torch.zeros(nb, hk, bs, d, device=device),
            torch.randperm(nb * bs, device=device)[:T]]
    eager_args = [a.clone() for a in args]
    compiled = torch.compile(_layer_slice, fullgraph=True, backend=backend)
    out_c = compiled(*args, hq, hk, d)
    out_e = _layer_slice(*eager_args, hq, hk, d)
    for a, b in zip(out_c, out_e):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    for a, b in zip(args, eager_args):  # in-place mutations happened identically
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
