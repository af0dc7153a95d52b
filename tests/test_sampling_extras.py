"""Sampling extras: min_p in sample and apply_penalties against plain PyTorch references (vLLM semantics),
draw frequencies with min_p (chi-square); opcheck, torch.compile(fullgraph=True) and bad input of all three
extras (min_p, apply_penalties, logprobs; logprobs values: test_sampling_logprobs.py)."""
import math

import pytest
import torch
from scipy.stats import chisquare

from infinilm_torch import ops

from test_sampling import P_SLACK, params, uniform

DTYPES = [torch.float32, torch.float16, torch.bfloat16]


# ---- references -------------------------------------------------------------------------------------------


def min_p_bound(q: float) -> float:
    """kernels/common/min_p.h log_bound: the smallest float32 >= ln(q) (fp64 log)."""
    lg = math.log(q)
    zf = torch.tensor(lg, dtype=torch.float32)
    if float(zf) < lg:
        zf = torch.nextafter(zf, torch.tensor(math.inf))
    return float(zf)


def ref_filter(row, T, k, p, q=0.0, p_slack=0.0):
    """(allowed [V], fp64 weights) by sorting: min-p and top-k on the temperature-scaled row, then top-p over
    what is left, renormalised (vLLM's order)."""
    l = row.float().cpu()
    V = l.numel()
    if T == 0 or k == 1:
        keep = torch.zeros(V, dtype=torch.bool)
        keep[(l == l.max()).nonzero()[0]] = True
        return keep, keep.double()
    z = (l - l.max()) / torch.tensor(T, dtype=torch.float32)
    w = torch.where(z < -87.33654, 0.0, torch.exp(z))
    keep = torch.ones(V, dtype=torch.bool)
    if q > 0:
        keep &= z >= min_p_bound(min(q, 1.0))
    if 0 < k < V:
        keep &= l >= torch.sort(l, descending=True).values[k - 1]
    if p < 1:
        order = torch.sort(torch.where(keep, l, float("-inf")), descending=True, stable=True).indices
        cum = torch.where(keep, w, 0.0).double()[order].cumsum(0)
        target = min(1.0, p * (1 + p_slack)) * cum[-1]
        j = min(int(torch.searchsorted(cum, target)), V - 1)
        keep &= l >= l[order[j]]
    return keep, torch.where(keep, w.double(), 0.0)


def ref_penalties(logits, prompt, output, rep, pres, freq):
    """vLLM's apply_penalties in fp32 (vllm/model_executor/layers/utils.py), -1 as padding."""
    x = logits.float().cpu().clone()
    B, V = x.shape
    for b in range(B):
        pr = prompt[b][prompt[b] >= 0].cpu()
        out = output[b][output[b] >= 0].cpu()
        counts = torch.bincount(out, minlength=V).float()
        seen = torch.zeros(V, dtype=torch.bool)
        seen[pr] = True
        seen |= counts > 0
        r = torch.where(seen, torch.tensor(float(rep[b])), torch.tensor(1.0))
        x[b] = torch.where(x[b] > 0, x[b] / r, x[b] * r)
        x[b] = x[b] - float(freq[b]) * counts
        x[b] = x[b] - float(pres[b]) * (counts > 0).float()
    return x


def token_lists(B, L, V, device, dup=True):
    """[B, L] int64 ids with repeats and -1 padding of random length per row."""
    ids = torch.randint(0, max(1, V // 4) if dup else V, (B, L))
    for b in range(B):
        ids[b, torch.randint(0, L + 1, ()).item():] = -1
    return ids.to(device)


# ---- min_p --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("V", [7, 769, 5000])
def test_sample_min_p_draws_inside_allowed_set(device, dtype, V):
    B = 48 if V < 5000 else 16
    logits = (torch.randn(B, V, device=device) * 3).to(dtype)
    logits[torch.rand(B, V, device=device) < 0.1] = float("-inf")
    logits[:, 0] = 0.0
    T, K, P, S = params(B, V, device, greedy_ok=True)
    Q = torch.tensor([0.0, 0.05, 0.3, 0.9, 1.0])[torch.randint(0, 5, (B,))].to(device)
    out = ops.sample(logits, T, K, P, S, Q).cpu()
    for b in range(B):
        args = (logits[b], float(T[b]), int(K[b]), float(P[b]), float(Q[b]))
        allowed, w = ref_filter(*args, p_slack=P_SLACK)
        assert allowed[out[b]], f"row {b} {args[1:]}: drew {int(out[b])} outside the allowed set"
        keep, w = ref_filter(*args)
        if args[1] > 0 and args[2] != 1:  # the reference draw, unless u * W lies within rounding of a step
            cum = w.cumsum(0)
            target = uniform(int(S[b]) % (1 << 64)) * float(cum[-1])
            if float((cum - target).abs().min() / cum[-1]) > 1e-5:
                assert int(out[b]) == int(torch.searchsorted(cum, torch.tensor(target, dtype=torch.float64),
                                                             right=True))


def test_sample_min_p_zero_and_none_agree(device):
    B, V = 33, 1000
    logits = torch.randn(B, V, device=device) * 2
    T, K, P, S = params(B, V, device)
    torch.testing.assert_close(ops.sample(logits, T, K, P, S), ops.sample(logits, T, K, P, S, torch.zeros(B, device=device)))


def test_sample_min_p_one_keeps_the_max(device):
    B, V = 20, 300
    logits = torch.randn(B, V, device=device)
    logits[:, 7] = 10.0
    T, K, P, S = torch.ones(B, device=device), torch.zeros(B, dtype=torch.long, device=device), \
        torch.ones(B, device=device), torch.randint(0, 2**62, (B,), device=device)
    assert (ops.sample(logits, T, K, P, S, torch.ones(B, device=device)) == 7).all()


MINP_CHI = [  # (temperature, top_k, top_p, min_p)
    (1.0, 0, 1.0, 0.2),
    (0.7, 0, 0.9, 0.25),
    (1.5, 6, 1.0, 0.3),
    (1.0, 0, 0.95, 0.2),
]


@pytest.mark.parametrize("case", MINP_CHI)
def test_sample_min_p_frequencies_chisquare(device, case):
    """Frequencies over many seeds match the reference distribution, so a dropped min_p (or top_p) fails."""
    T, k, p, q = case
    V, N = 16, 20000
    # Evenly spread logits (0.4 apart, shuffled): each case's min-p cut lies above its top-k / top-p cuts.
    row = torch.linspace(-3, 3, V)[torch.randperm(V)] + 0.02 * torch.randn(V)
    logits = row.to(device).expand(N, V)
    seeds = (torch.randint(0, 2**62, (1,)) + torch.arange(N)).to(device)
    full = lambda x, dt=None: torch.full((N,), x, device=device, dtype=dt)  # noqa: E731
    out = ops.sample(logits, full(T), full(k, torch.int64), full(p), seeds, full(q)).cpu()
    allowed, _ = ref_filter(row, T, k, p, q, p_slack=P_SLACK)
    counts = torch.bincount(out, minlength=V).double()
    assert counts[~allowed].sum() == 0, f"drew outside the allowed set: {counts}"
    keep, w = ref_filter(row, T, k, p, q)
    unfiltered = ref_filter(row, T, k, p)[0]
    assert (keep != unfiltered).any(), "the case must exercise min_p"
    expected, observed = N * w[keep] / w.sum(), counts[keep]
    small = expected < 5
    if small.any():
        expected = torch.cat([expected[~small], expected[small].sum().view(1)])
        observed = torch.cat([observed[~small], observed[small].sum().view(1)])
    pval = chisquare(observed.numpy(), expected.numpy() * observed.sum().item() / expected.sum().item()).pvalue
    assert pval > 1e-4, f"chi-square p = {pval}: observed {observed.tolist()} expected {expected.tolist()}"


# ---- apply_penalties ----------------------------------------------------------------------------------------

PEN_TOL = {torch.float32: (1e-5, 1e-5), torch.float16: (2e-3, 2e-3), torch.bfloat16: (2e-2, 1.6e-2)}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("B,V,Lp,Lo", [(1, 50, 7, 3), (9, 769, 40, 25), (4, 20000, 300, 100), (3, 128, 0, 0)])
def test_apply_penalties_matches_reference(device, dtype, B, V, Lp, Lo):
    logits = (torch.randn(B, V, device=device) * 3).to(dtype)
    prompt, output = token_lists(B, Lp, V, device), token_lists(B, Lo, V, device)
    rep = (torch.rand(B, device=device) * 1.5 + 0.5)
    pres = torch.randn(B, device=device)
    freq = torch.randn(B, device=device) * 0.5
    want = ref_penalties(logits, prompt, output, rep, pres, freq)
    x = logits.clone()
    ops.apply_penalties(x, prompt, output, rep, pres, freq)
    atol, rtol = PEN_TOL[dtype]
    torch.testing.assert_close(x.float().cpu(), want.to(dtype).float(), atol=atol, rtol=rtol)
    touched = (x != logits).any(1).cpu()
    expect_touched = ((prompt >= 0).any(1) | (output >= 0).any(1)).cpu()
    assert not (touched & ~expect_touched).any(), "a row without tokens changed"


def test_apply_penalties_each_kind_alone(device):
    """Each penalty moves exactly the tokens it should, by the documented amount (fp32)."""
    V = 10
    logits = torch.tensor([[2.0, -2.0, 1.0, -1.0, 0.5, 3.0, 0.0, 1.5, -0.5, 4.0]] * 3, device=device)
    prompt = torch.tensor([[0, 1, -1], [0, 1, -1], [0, 1, -1]], device=device)
    output = torch.tensor([[2, 2, 3, -1], [2, 2, 3, -1], [2, 2, 3, -1]], device=device)
    rep, pres, freq = [torch.tensor(v, device=device) for v in ([2.0, 1.0, 1.0], [0.0, 0.5, 0.0], [0.0, 0.0, 0.25])]
    x = logits.clone()
    ops.apply_penalties(x, prompt, output, rep, pres, freq)
    want = logits.clone().cpu()
    want[0, [0, 2]] /= 2.0
    want[0, [1, 3]] *= 2.0  # negative logits are multiplied: always less likely
    want[1, [2, 3]] -= 0.5  # presence: once per token present in the output
    want[2, 2] -= 0.5  # frequency: 0.25 per occurrence (2 for token 2)
    want[2, 3] -= 0.25
    torch.testing.assert_close(x.cpu(), want)
    assert ((x - logits)[:, 4:] == 0).all()


def test_apply_penalties_strided_and_int32(device):
    B, V = 5, 300
    big = torch.randn(B, 2 * V, device=device)
    view = big[:, 3 : 3 + V]
    prompt, output = token_lists(B, 20, V, device), token_lists(B, 10, V, device)
    rep, pres, freq = torch.full((B,), 1.3, device=device), torch.full((B,), 0.2, device=device), \
        torch.full((B,), 0.1, device=device)
    rep, freq = rep.half(), freq.bfloat16()  # other accepted float dtypes; the reference reads the same values
    want = ref_penalties(view, prompt, output, rep.float(), pres, freq.float())
    before = big.clone()
    ops.apply_penalties(view, prompt.int(), output.int(), rep, pres, freq)
    torch.testing.assert_close(view.cpu(), want, atol=1e-5, rtol=1e-5)
    assert torch.equal(big[:, :3], before[:, :3]) and torch.equal(big[:, 3 + V :], before[:, 3 + V :])


# ---- opcheck, compile, bad input ---------------------------------------------------------------------------


def test_extras_opcheck(device):
    B, V = 5, 100
    T, K, P, S = params(B, V, device)
    Q = torch.rand(B, device=device) * 0.5
    for dtype in (torch.float32, torch.bfloat16):
        x = torch.randn(B, V, device=device, dtype=dtype)
        torch.library.opcheck(torch.ops.infinilm.sample.default, (x, T, K, P, S, Q))
        torch.library.opcheck(torch.ops.infinilm.sample.default, (x, T, K, P, S))
        pen = (token_lists(B, 8, V, device), token_lists(B, 5, V, device), torch.rand(B, device=device) + 0.5,
               torch.randn(B, device=device), torch.randn(B, device=device))
        torch.library.opcheck(torch.ops.infinilm.apply_penalties.default, (x.clone(), *pen))
        for k in (0, 4):
            torch.library.opcheck(torch.ops.infinilm.logprobs.default, (x, torch.randint(0, V, (B,), device=device), k))


def test_extras_compile_fullgraph_matches_eager(device):
    torch._dynamo.reset()
    B, V = 6, 333
    logits = torch.randn(B, V, device=device)
    T, K, P, S = params(B, V, device, greedy_ok=False)
    Q = torch.rand(B, device=device) * 0.3
    prompt, output = token_lists(B, 9, V, device), token_lists(B, 4, V, device)
    rep, pres, freq = torch.rand(B, device=device) + 0.5, torch.randn(B, device=device), torch.randn(B, device=device)

    def fn(x):
        y = x * 1.5
        ops.apply_penalties(y, prompt, output, rep, pres, freq)
        ids = ops.sample(y, T, K, P, S, Q)
        lp, top, top_ids = ops.logprobs(x, ids, 3)
        return ids, lp, top, top_ids, y

    got = torch.compile(fn, fullgraph=True, backend="inductor")(logits)
    for a, b in zip(got, fn(logits)):
        torch.testing.assert_close(a, b)


def test_extras_bad_input(device):
    B, V = 3, 10
    x = torch.randn(B, V, device=device)
    T, K, P, S = torch.ones(B, device=device), torch.zeros(B, dtype=torch.long, device=device), \
        torch.ones(B, device=device), torch.arange(B, device=device)
    with pytest.raises(TypeError, match="'min_p' must be float32"):
        ops.sample(x, T, K, P, S, torch.zeros(B, dtype=torch.long, device=device))
    with pytest.raises(ValueError, match=r"'min_p' must be 1-D .* \[3\]"):
        ops.sample(x, T, K, P, S, torch.zeros(2, device=device))
    ids = torch.full((B, 2), -1, device=device)
    one, zero = torch.ones(B, device=device), torch.zeros(B, device=device)
    with pytest.raises(ValueError, match=r"'prompt_token_ids' must have shape \[3, L\]"):
        ops.apply_penalties(x, ids[:2], ids, one, zero, zero)
    with pytest.raises(TypeError, match="'output_token_ids' must be int32 or int64"):
        ops.apply_penalties(x, ids, ids.float(), one, zero, zero)
    with pytest.raises(ValueError, match=r"'frequency_penalty' must be 1-D"):
        ops.apply_penalties(x, ids, ids, one, zero, zero[:1])
    with pytest.raises(ValueError, match=r"logprobs 'k' = 11 must lie in \[0, 10\]"):
        ops.logprobs(x, torch.zeros(B, dtype=torch.long, device=device), 11)
    with pytest.raises(ValueError, match=r"'token_ids' must be 1-D"):
        ops.logprobs(x, torch.zeros(B, 1, dtype=torch.long, device=device), 1)
    if device != "cpu":  # value checks read host data; the CUDA glue never synchronises
        return
    with pytest.raises(ValueError, match=r"'min_p'\[1\] = 1.5 must be in \[0, 1\]"):
        ops.sample(x, T, K, P, S, torch.tensor([0.0, 1.5, 0.0]))
    with pytest.raises(ValueError, match=r"'min_p'\[0\] = nan"):
        ops.sample(x, T, K, P, S, torch.tensor([float("nan"), 0.0, 0.0]))
    with pytest.raises(IndexError, match=r"'output_token_ids'\[1, 0\] = 10 is outside \[-1, 10\)"):
        ops.apply_penalties(x, ids, torch.tensor([[-1, -1], [10, -1], [0, 0]]), one, zero, zero)
    with pytest.raises(IndexError, match=r"'prompt_token_ids'\[0, 1\] = -2"):
        ops.apply_penalties(x, torch.tensor([[0, -2], [0, 0], [0, 0]]), ids, one, zero, zero)
    with pytest.raises(ValueError, match=r"'repetition_penalty'\[2\] = 0 must be finite and > 0"):
        ops.apply_penalties(x, ids, ids, torch.tensor([1.0, 1.0, 0.0]), zero, zero)
    with pytest.raises(ValueError, match=r"'presence_penalty'\[0\] = inf must be finite"):
        ops.apply_penalties(x, ids, ids, one, torch.tensor([float("inf"), 0, 0]), zero)
    with pytest.raises(IndexError, match=r"'token_ids'\[2\] = 10 is outside \[0, 10\)"):
        ops.logprobs(x, torch.tensor([0, 1, 10]), 2)
