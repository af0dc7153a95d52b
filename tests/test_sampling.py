"""sample: greedy, top-k/top-p allowed sets, draw frequencies (chi-square), seeding, opcheck, compile, bad input.

The reference below follows the documented semantics (kernels/cpu/sampling.h) with sorting and cumsum in
plain PyTorch, independently of the threshold search the kernels use.
"""
import pytest
import torch
from scipy.stats import chisquare

from infinilm_torch import ops

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
P_SLACK = 1e-5  # allowed-set checks widen top_p by this much: fp32 exp/sum rounding may differ at the pivot
MASK64 = (1 << 64) - 1


def uniform(seed: int) -> float:
    """kernels/common/counter_rng.h uniform_double(seed, 0): splitmix64 output 0 of state `seed`, 53 bits."""
    z = (seed + 0x9E3779B97F4A7C15) & MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
    return ((z ^ (z >> 31)) >> 11) / 2.0**53


def ref_filter(row, T, k, p, p_slack=0.0):
    """(allowed bool [V], fp64 weights over the allowed set) for one row, by sorting."""
    l = row.float().cpu()
    V = l.numel()
    if T == 0 or k == 1:
        keep = torch.zeros(V, dtype=torch.bool)
        keep[(l == l.max()).nonzero()[0]] = True
        return keep, keep.double()
    z = (l - l.max()) / torch.tensor(T, dtype=torch.float32)  # fp32, as documented
    w = torch.where(z < -87.33654, 0.0, torch.exp(z))  # flushed below the normal range
    keep = torch.ones(V, dtype=torch.bool)
    if 0 < k < V:
        keep &= l >= torch.sort(l, descending=True).values[k - 1]
    if p < 1:
        order = torch.sort(torch.where(keep, l, float("-inf")), descending=True, stable=True).indices
        cum = torch.where(keep, w, 0.0).double()[order].cumsum(0)
        target = min(1.0, p * (1 + p_slack)) * cum[-1]
        j = min(int(torch.searchsorted(cum, target)), V - 1)
        keep &= l >= l[order[j]]
    return keep, torch.where(keep, w.double(), 0.0)


def ref_draw(row, T, k, p, seed):
    """(token, margin): inverse CDF over the allowed set in index order; margin = distance of u*W to a step."""
    keep, w = ref_filter(row, T, k, p)
    if T == 0 or k == 1:
        return int(keep.nonzero()[0]), 1.0
    cum = w.cumsum(0)
    target = uniform(seed % (1 << 64)) * float(cum[-1])
    tok = int(torch.searchsorted(cum, torch.tensor(target, dtype=torch.float64), right=True))
    return tok, float((cum - target).abs().min() / cum[-1])


def params(B, V, device, greedy_ok=True):
    T = torch.tensor([0.0, 0.5, 1.0, 2.0] if greedy_ok else [0.5, 1.0, 2.0])[torch.randint(0, 4 - (not greedy_ok), (B,))]
    K = torch.tensor([0, 1, 5, 50, V + 10])[torch.randint(0, 5, (B,))]
    P = torch.tensor([1.0, 0.9, 0.5, 0.1])[torch.randint(0, 4, (B,))]
    S = torch.randint(-(2**62), 2**62, (B,))
    return [t.to(device) for t in (T, K, P, S)]


def test_uniform_is_splitmix64():
    # Published splitmix64 stream seeded with 0 starts 0xe220a8397b1dcdaf.
    assert uniform(0) == (0xE220A8397B1DCDAF >> 11) / 2.0**53


@pytest.mark.parametrize("dtype", DTYPES)
def test_sample_greedy_is_argmax(device, dtype):
    B, V = 37, 1000
    logits = torch.randint(-20, 20, (B, V), device=device).to(dtype)  # many ties: the first max must win
    logits[3, :-1] = float("-inf")
    first_max = (logits == logits.max(-1, keepdim=True).values).int().argmax(-1)
    seeds = torch.randint(0, 2**62, (B,), device=device)
    zeros = torch.zeros(B, device=device)
    ones_p = torch.ones(B, device=device)
    k = torch.randint(0, 100, (B,), device=device)
    out_t0 = ops.sample(logits, zeros, k, torch.rand(B, device=device) * 0.9 + 0.1, seeds)
    out_k1 = ops.sample(logits, torch.rand(B, device=device) + 0.1, torch.ones(B, dtype=torch.int32, device=device),
                        ones_p, seeds)
    assert out_t0.dtype == torch.int64 and out_t0.shape == (B,)
    torch.testing.assert_close(out_t0, first_max)
    torch.testing.assert_close(out_k1, first_max)
    torch.testing.assert_close(out_t0, logits.float().argmax(-1))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("V", [7, 769, 5000])  # 5000: top-p tail pruning (> 4096 tokens)
def test_sample_draws_inside_allowed_set(device, dtype, V):
    """Mixed per-row parameters; every draw lies in the sort-based allowed set and matches the reference draw."""
    B, rounds = (64, 4) if V < 5000 else (16, 2)
    for rnd in range(rounds):
        logits = (torch.randn(B, V, device=device) * 3).to(dtype)
        logits[torch.rand(B, V, device=device) < 0.1] = float("-inf")
        logits[:, 0] = 0.0  # no row is all -inf
        T, K, P, S = params(B, V, device)
        if rnd % 2:  # the other accepted parameter dtypes; the reference reads the converted values
            T, K, P, S = T.half(), K.int(), P.bfloat16(), S.int()
        out = ops.sample(logits, T, K, P, S).cpu()
        for b in range(B):
            args = (logits[b], float(T[b]), int(K[b]), float(P[b]))
            allowed, _ = ref_filter(*args, p_slack=P_SLACK)
            assert allowed[out[b]], f"row {b} {args[1:]}: drew {int(out[b])} outside the allowed set"
            tok, margin = ref_draw(*args, int(S[b]))
            if margin > 1e-5:  # not within rounding of a CDF step
                assert int(out[b]) == tok, f"row {b} {args[1:]}: drew {int(out[b])}, reference {tok}"


def test_sample_large_vocab_and_ties(device):
    V = 128256
    logits = torch.randn(7, V, device=device) * 4
    logits[1] = 0.5  # every token tied: top-k and top-p keep all of them
    logits[2, 1000:] = float("-inf")
    logits[3] = torch.randint(-5, 6, (V,), device=device).float()  # heavy ties at every boundary
    logits[6] = torch.randn(V, device=device) * 2  # peaked like real logits: a few tokens far above the rest
    logits[6, torch.randperm(V, device=device)[:20]] = 15 + torch.rand(20, device=device)
    T = torch.tensor([1.0, 1.0, 0.7, 1.0, 1e-4, 30.0, 0.8], device=device)
    K = torch.tensor([50, 5, 0, 2000, 0, 0, 0], device=device)
    P = torch.tensor([0.95, 0.5, 0.8, 0.6, 1.0, 0.3, 0.9], device=device)
    for rnd in range(3):
        S = torch.randint(0, 2**62, (7,), device=device)
        out = ops.sample(logits, T, K, P, S).cpu()
        for b in range(7):
            allowed, _ = ref_filter(logits[b], float(T[b]), int(K[b]), float(P[b]), p_slack=P_SLACK)
            assert allowed[out[b]], f"row {b}: drew {int(out[b])} outside the allowed set"
    assert ref_filter(logits[1], 1.0, 5, 0.5)[0].all()


CHI_CASES = [  # (temperature, top_k, top_p, tied logits)
    (1.0, 0, 1.0, False),
    (0.6, 5, 1.0, False),
    (1.5, 0, 0.7, False),
    (1.0, 10, 0.85, False),
    (1.0, 4, 1.0, True),
    (0.8, 0, 0.6, True),
]


@pytest.mark.parametrize("case", CHI_CASES)
def test_sample_frequencies_chisquare(device, case):
    """Draw frequencies over many seeds match the filtered, renormalised distribution (p-value > 1e-4)."""
    T, k, p, tied = case
    V, N = 16, 20000
    if tied:  # one 2.0, four 1.0 (tied across the top-k 4 and the top-p boundaries), the rest in [-3, 0]
        row = torch.randint(-3, 1, (V,)).float()
        perm = torch.randperm(V)
        row[perm[0]], row[perm[1:5]] = 2.0, 1.0
    else:
        row = torch.randn(V) * 1.5
    logits = row.to(device).expand(N, V)
    seeds = torch.randint(0, 2**62, (1,)) + torch.arange(N)
    full = lambda x, dt=None: torch.full((N,), x, device=device, dtype=dt)  # noqa: E731
    out = ops.sample(logits, full(T), full(k, torch.int64), full(p), seeds.to(device)).cpu()
    allowed, w = ref_filter(row, T, k, p, p_slack=P_SLACK)
    counts = torch.bincount(out, minlength=V).double()
    assert counts[~allowed].sum() == 0, f"drew outside the allowed set: {counts}"
    keep, w = ref_filter(row, T, k, p)
    expected = N * w[keep] / w.sum()
    observed = counts[keep]
    small = expected < 5  # merge sparse bins so the chi-square approximation holds
    if small.any():
        expected = torch.cat([expected[~small], expected[small].sum().view(1)])
        observed = torch.cat([observed[~small], observed[small].sum().view(1)])
    if expected.numel() > 1:
        pval = chisquare(observed.numpy(), expected.numpy() * observed.sum().item() / expected.sum().item()).pvalue
        assert pval > 1e-4, f"chi-square p = {pval}: observed {observed.tolist()} expected {expected.tolist()}"


def test_sample_seeding(device):
    B, V = 64, 50
    logits = torch.zeros(B, V, device=device)  # uniform: any draw is possible
    T, K, P = torch.ones(B, device=device), torch.zeros(B, dtype=torch.int32, device=device), torch.ones(B, device=device)
    seeds = torch.randint(0, 2**62, (B,), device=device)
    a = ops.sample(logits, T, K, P, seeds)
    torch.testing.assert_close(a, ops.sample(logits, T, K, P, seeds))
    assert a.unique().numel() > 1, "different seeds all drew the same token"
    same = ops.sample(logits, T, K, P, seeds[:1].expand(B).contiguous())
    assert (same == same[0]).all(), "one seed drew different tokens in different rows"
    torch.testing.assert_close(ops.sample(logits, T, K, P, seeds.int()), ops.sample(logits, T, K, P, seeds.int().long()))
    assert ops.sample(logits[:0], T[:0], K[:0], P[:0], seeds[:0]).shape == (0,)


def test_sample_strided_logits(device):
    B, V = 9, 300
    big = torch.randn(B, 2 * V, device=device)
    view = big[:, 5 : 5 + V]
    T, K, P, S = params(B, V, device)
    torch.testing.assert_close(ops.sample(view, T, K, P, S), ops.sample(view.contiguous(), T, K, P, S))


def test_sample_opcheck(device):
    B, V = 5, 100
    T, K, P, S = params(B, V, device)
    for dtype in (torch.float32, torch.bfloat16):
        torch.library.opcheck(torch.ops.infinilm.sample.default,
                              (torch.randn(B, V, device=device, dtype=dtype), T, K, P, S))


def test_sample_compile_fullgraph_matches_eager(device):
    torch._dynamo.reset()
    B, V = 8, 333
    logits = torch.randn(B, V, device=device)
    T, K, P, S = params(B, V, device)

    def fn(x, t, k, p, s):
        return ops.sample(x * 2.0, t, k, p, s) + 1

    torch.testing.assert_close(torch.compile(fn, fullgraph=True, backend="inductor")(logits, T, K, P, S),
                               fn(logits, T, K, P, S))


def test_sample_bad_input(device):
    B, V = 3, 10
    x = torch.randn(B, V, device=device)
    T, K, P, S = torch.ones(B, device=device), torch.zeros(B, dtype=torch.long, device=device), \
        torch.ones(B, device=device), torch.arange(B, device=device)

    def bad(exc, match, x=x, T=T, K=K, P=P, S=S):
        with pytest.raises(exc, match=match):
            ops.sample(x, T, K, P, S)

    bad(TypeError, "'logits' must be float32", x=x.long())
    bad(ValueError, "'logits' must have 2 dimensions", x=x[0])
    bad(ValueError, "'logits' must have a non-empty vocab", x=x[:, :0])
    bad(TypeError, "'temperature' must be float32", T=T.long())
    bad(TypeError, "'top_k' must be int32 or int64", K=K.float())
    bad(TypeError, "'top_p' must be float32", P=P.long())
    bad(TypeError, "'seeds' must be int32 or int64", S=S.float())
    bad(ValueError, r"'temperature' must be 1-D .* \[3\], got shape \[2\]", T=T[:2])
    bad(ValueError, r"'seeds' must be 1-D", S=S.view(B, 1))
    if device != "cpu":  # value checks read the data on the host; the CUDA path never synchronises
        return
    bad(ValueError, r"'temperature'\[1\] = -0.5 must be finite and >= 0", T=torch.tensor([1, -0.5, 1], device=device))
    bad(ValueError, r"'temperature'\[2\] = inf", T=torch.tensor([1, 1, float("inf")], device=device))
    bad(ValueError, r"'top_k'\[0\] = -1 must be >= 0", K=torch.tensor([-1, 0, 0], device=device))
    bad(ValueError, r"'top_p'\[1\] = 0 must lie in \(0, 1\]", P=torch.tensor([1, 0.0, 1], device=device))
    bad(ValueError, r"'top_p'\[2\] = 1.5", P=torch.tensor([1, 1, 1.5], device=device))
    bad(ValueError, r"'top_p'\[0\] = nan", P=torch.tensor([float("nan"), 1, 1], device=device))
    for val, pos in ((float("nan"), (1, 4)), (float("inf"), (2, 9))):
        y = x.clone()
        y[pos] = val
        bad(ValueError, rf"'logits' contain NaN or \+inf, first at \[{pos[0]}, {pos[1]}\]", x=y)
        bad(ValueError, r"'logits' contain NaN", x=y, T=torch.zeros(B, device=device))  # greedy rows too
    y = x.clone()
    y[1] = float("-inf")
    bad(ValueError, "'logits' row 1 is -inf everywhere", x=y)


def test_sample_min_p_is_optional_and_backward_compatible(device):
    """The five-argument schema still works; min_p=None and min_p=0 are the same draw; min_p filters."""
    B, V = 16, 400
    logits = torch.randn(B, V, device=device) * 2
    T, K, P, S = params(B, V, device, greedy_ok=False)
    base = torch.ops.infinilm.sample(logits, T, K, P, S)
    torch.testing.assert_close(base, torch.ops.infinilm.sample(logits, T, K, P, S, min_p=None))
    torch.testing.assert_close(base, ops.sample(logits, T, K, P, S, torch.zeros(B, device=device)))
    strict = ops.sample(logits, T, K, P, S, torch.full((B,), 0.9, device=device)).cpu()
    for b in range(B):  # p >= 0.9 p_max after temperature: the token's logit within -T ln 0.9 of the max
        row = logits[b].float().cpu()
        assert (row[strict[b]] - row.max()) / float(T[b]) >= torch.log(torch.tensor(0.9)) - 1e-6
