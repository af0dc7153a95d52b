"""CUDA cases for bench_ops.py: sampling against PyTorch's sort-based filtering + multinomial, greedy against
argmax, and CUDA-graph replays of the small-T elementwise ops (launch latency without Python in the way).

GB/s for sampling counts one read of the logits. Baselines are measured in the same run.
"""
import torch

from common import bench_us
from infinilm_torch import ops

V = 128256


def torch_top_k_top_p(logits, k, p):
    """Sort-based filtering as vLLM / HF do it, then softmax + multinomial (k None: top-p only)."""
    srt, idx = logits.sort(dim=-1, descending=False)
    if k is not None:
        kth = srt.gather(1, (srt.size(1) - k.long()).unsqueeze(1))
        srt.masked_fill_(srt < kth, float("-inf"))
    probs = srt.softmax(-1)
    cum = probs.cumsum(-1)
    mask = cum <= 1 - p.unsqueeze(1)
    mask[:, -1] = False
    srt.masked_fill_(mask, float("-inf"))
    filtered = torch.empty_like(srt).scatter_(-1, idx, srt)
    return torch.multinomial(filtered.softmax(-1), 1).squeeze(1)


def graph_us(fn):
    """Median µs of replaying fn captured in a CUDA graph (device time of the launches, no Python)."""
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(2):
            fn()
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        fn()
    return bench_us(g.replay, "cuda")


def sampling_rows(quick):
    dev = "cuda"
    for B in ([1, 32, 256] if quick else [1, 8, 32, 64, 256]):
        logits = torch.randn(B, V, device=dev) * 4
        T = torch.full((B,), 0.8, device=dev)
        K = torch.full((B,), 50, dtype=torch.int64, device=dev)
        off_k = torch.zeros(B, dtype=torch.int64, device=dev)
        P = torch.full((B,), 0.95, device=dev)
        S = torch.randint(0, 2**62, (B,), device=dev)
        nbytes = B * V * 4
        scaled = lambda: logits / T[:, None]  # noqa: E731 - the baseline applies temperature too
        yield dict(op="sample top-k50 top-p.95", config=f"B={B} V={V} fp32",
                   ours_us=bench_us(lambda: ops.sample(logits, T, K, P, S), dev), nbytes=nbytes,
                   torch_us=bench_us(lambda: torch_top_k_top_p(scaled(), K, P), dev))
        yield dict(op="sample top-p.95", config=f"B={B} V={V} fp32",
                   ours_us=bench_us(lambda: ops.sample(logits, T, off_k, P, S), dev), nbytes=nbytes,
                   torch_us=bench_us(lambda: torch_top_k_top_p(scaled(), None, P), dev))
        zero = torch.zeros(B, device=dev)
        yield dict(op="sample greedy", config=f"B={B} V={V} fp32",
                   ours_us=bench_us(lambda: ops.sample(logits, zero, off_k, P, S), dev), nbytes=nbytes,
                   torch_us=bench_us(lambda: logits.argmax(-1), dev))
        if B in (1, 32):
            yield dict(op="sample greedy (graph)", config=f"B={B} V={V} fp32",
                       ours_us=graph_us(lambda: ops.sample(logits, zero, off_k, P, S)), nbytes=nbytes,
                       torch_us=graph_us(lambda: logits.argmax(-1)))
            yield dict(op="sample top-k top-p (graph)", config=f"B={B} V={V} fp32",
                       ours_us=graph_us(lambda: ops.sample(logits, T, K, P, S)), nbytes=nbytes,
                       torch_us=graph_us(lambda: torch_top_k_top_p(scaled(), K, P)))
        lb = logits.bfloat16()
        if B in (1, 256):
            yield dict(op="sample top-k50 top-p.95", config=f"B={B} V={V} bf16",
                       ours_us=bench_us(lambda: ops.sample(lb, T, K, P, S), dev), nbytes=nbytes // 2,
                       torch_us=bench_us(lambda: torch_top_k_top_p(lb.float() / T[:, None], K, P), dev))


def small_graph_rows():
    """rms_norm / fused_add_rms_norm / silu_and_mul at small T, replayed from graphs, against torch eager math."""
    dev, dt = "cuda", torch.bfloat16
    for T in (1, 16, 128):
        for H in (4096, 8192):
            x, r = torch.randn(T, H, device=dev, dtype=dt), torch.randn(T, H, device=dev, dtype=dt)
            w = torch.randn(H, device=dev, dtype=dt)

            def ref_add():
                s = r + x
                sf = s.float()
                return (sf * torch.rsqrt(sf.pow(2).mean(-1, keepdim=True) + 1e-5) * w.float()).to(dt), s

            yield dict(op="fused_add_rms_norm (graph)", config=f"T={T} H={H}",
                       ours_us=graph_us(lambda: ops.fused_add_rms_norm(x, r, w, 1e-5)), nbytes=4 * T * H * 2,
                       torch_us=graph_us(ref_add))
            yield dict(op="rms_norm (graph)", config=f"T={T} H={H}",
                       ours_us=graph_us(lambda: ops.rms_norm(x, w, 1e-5)), nbytes=2 * T * H * 2,
                       torch_us=graph_us(lambda: torch.nn.functional.rms_norm(x, (H,), w, 1e-5)))


def rows(device, quick=False):
    if not str(device).startswith("cuda"):
        return
    yield from small_graph_rows()
    yield from sampling_rows(quick)
