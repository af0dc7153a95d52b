"""Sampling benchmark cases: ops.sample against PyTorch's sort-based top-k/top-p + multinomial, and argmax.

    python benchmarks/cases_sampling.py [--device cpu|cuda]

Vocab 128256 (Llama 3), fp32 logits (what the engine's lm_head produces after the fp32 upcast).
"""
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(1, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from common import bench_us  # noqa: E402

from infinilm_torch import ops  # noqa: E402

VOCAB = 128256


def torch_sample(logits, temperature, top_k, top_p):
    """The usual PyTorch recipe (HF / vLLM fallback): sort, mask past k and past mass p, softmax, multinomial."""
    x = logits.float() / temperature[:, None]
    srt, idx = torch.sort(x, dim=-1, descending=True)
    pos = torch.arange(x.shape[1], device=x.device)
    srt = srt.masked_fill((top_k[:, None] > 0) & (pos[None] >= top_k[:, None]), float("-inf"))
    probs = srt.softmax(-1)
    cum = probs.cumsum(-1)
    srt = srt.masked_fill(cum - probs > top_p[:, None], float("-inf"))  # keeps the token that crosses p
    choice = torch.multinomial(srt.softmax(-1), 1)
    return idx.gather(1, choice).squeeze(1)


def bench_sampling(device, batches=(1, 32), dtype=torch.float32):
    """Rows (name, ours µs, baseline µs) for greedy, top-k 50 + top-p 0.95, top-p 0.95 alone, temperature alone."""
    rows = []
    configs = [  # name, temperature, top_k, top_p
        ("greedy", 0.0, 0, 1.0),
        ("T=0.8 top-k 50 top-p 0.95", 0.8, 50, 0.95),
        ("T=0.8 top-p 0.95", 0.8, 0, 0.95),
        ("T=1.0 (no filter)", 1.0, 0, 1.0),
    ]
    for B in batches:
        logits = (torch.randn(B, VOCAB, device=device) * 3).to(dtype)
        seeds = torch.randint(0, 2**62, (B,), device=device)
        for name, t, k, p in configs:
            T = torch.full((B,), t, device=device)
            K = torch.full((B,), k, dtype=torch.int64, device=device)
            P = torch.full((B,), p, device=device)
            ours = bench_us(lambda: ops.sample(logits, T, K, P, seeds), device)
            if t == 0.0:
                base = bench_us(lambda: torch.argmax(logits, -1), device)
            else:
                base = bench_us(lambda: torch_sample(logits, T, K, P), device)
            rows.append((f"sample {name} B={B} V={VOCAB}", ours, base))
    return rows


def rows(device, quick=False):
    """Table.add keyword rows for benchmarks/bench_ops.py (bytes = the logits read once)."""
    for name, ours, base in bench_sampling(device, batches=(1,) if quick else (1, 32)):
        B = int(name.split("B=")[1].split()[0])
        yield dict(op="sample", config=name[len("sample "):], ours_us=ours, nbytes=B * VOCAB * 4, torch_us=base)


if __name__ == "__main__":
    dev = sys.argv[sys.argv.index("--device") + 1] if "--device" in sys.argv else "cpu"
    print(f"{'case':<48} {'ours µs':>10} {'torch µs':>10} {'speedup':>8}   ({torch.get_num_threads()} threads)")
    for name, ours, base in bench_sampling(dev):
        print(f"{name:<48} {ours:>10.1f} {base:>10.1f} {base / ours:>7.2f}x")
