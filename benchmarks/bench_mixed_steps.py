"""Time of one mixed engine step (k requests decoding beside one new prompt chunk of p tokens, a paged cache):
eager vs replayed from a CUDA graph (INFINILM_CUDA_GRAPHS_MIXED=1), same engine, same inputs, same run.

    python benchmarks/bench_mixed_steps.py --device cuda --model-shape llama-3.2-1b
    python benchmarks/bench_mixed_steps.py          # CPU, small random Llama: the padded static inputs
                                                    # (INFINILM_EAGER_STATIC_STEPS=1) vs the plain step

Every timed step is the same Input: the decoding requests sit at context `--context` and the chunk starts at
token 0, so each step rewrites the slots the previous one wrote (the engine allows rewinds) and the cache never
grows. ms/step is wall time of engine.forward plus reading the ids on the host (synchronous steps), the median
of `--iters` steps after a warm-up; "padded" is the token count the graph runs (powers of two).
"""
import argparse
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_engine import SHAPES, build_random  # noqa: E402
from common import sync  # noqa: E402

from infinilm_torch.lib import _infinilm  # noqa: E402

Input = _infinilm.InferEngine.Input


def step_input(k, p, context, block_size, vocab, gen, kmax):
    """k decode requests at `context` cached tokens, then one request with a chunk of p prompt tokens (in the
    blocks after all kmax decoding requests' blocks)."""
    per = -(-(context + 1) // block_size)
    chunk_blocks = -(-p // block_size)
    tables = torch.zeros(k + 1, max(per, chunk_blocks), dtype=torch.long)
    slots = []
    for r in range(k):
        tables[r, :per] = torch.arange(r * per, (r + 1) * per)
        slots.append(r * per * block_size + context)
    base = kmax * per
    tables[k, :chunk_blocks] = torch.arange(base, base + chunk_blocks)
    slots += [base * block_size + t for t in range(p)]
    n_blocks = base + chunk_blocks
    ids = torch.randint(0, vocab, (1, k + p), generator=gen)
    inp = dict(input_ids=ids, input_lengths=torch.tensor([1] * k + [p]),
               cache_lengths=torch.tensor([context] * k + [0]), block_tables=tables,
               slot_mapping=torch.tensor(slots), temperature=0.0)
    return inp, n_blocks, per


def fill(engine, k, context, per, block_size, vocab, gen):
    """Prefill the k decoding requests' first `context` tokens (chunks of 512)."""
    for r in range(k):
        for s in range(0, context, 512):
            n = min(512, context - s)
            tables = torch.arange(r * per, (r + 1) * per).view(1, -1)
            slots = torch.arange(r * per * block_size + s, r * per * block_size + s + n)
            engine.forward(Input(input_ids=torch.randint(0, vocab, (1, n), generator=gen),
                                 input_lengths=torch.tensor([n]), cache_lengths=torch.tensor([s]),
                                 block_tables=tables, slot_mapping=slots, temperature=0.0))


def timed(engine, inp, iters, env):
    for name, value in env.items():
        os.environ[name] = value
    try:
        for _ in range(3):
            engine.forward(Input(**inp)).output_ids.tolist()
        ts = []
        for _ in range(iters):
            t0 = time.perf_counter()
            engine.forward(Input(**inp)).output_ids.tolist()
            ts.append(time.perf_counter() - t0)
        return statistics.median(ts) * 1e3
    finally:
        for name in env:
            os.environ.pop(name, None)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default=None, help="default: bfloat16 (CUDA), float32 (CPU)")
    ap.add_argument("--model-shape", default=None, choices=sorted(SHAPES))
    ap.add_argument("--decodes", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--chunks", type=int, nargs="+", default=[16, 100, 400])
    ap.add_argument("--context", type=int, default=256)
    ap.add_argument("--block-size", type=int, default=16)
    ap.add_argument("--iters", type=int, default=30)
    a = ap.parse_args()
    cuda = a.device.startswith("cuda")
    a.dtype = a.dtype or ("bfloat16" if cuda else "float32")
    shape = SHAPES[a.model_shape] if a.model_shape else dict(hidden=256, layers=4, heads=8, kv_heads=4,
                                                             intermediate=688, vocab=32000, tied=False)
    for key, v in shape.items():
        setattr(a, key, v)
    model, ec, nbytes = build_random(a, a.device, max_pos=4096)
    dtype = getattr(torch, a.dtype)
    kmax, pmax = max(a.decodes), max(a.chunks)
    blocks = kmax * -(-(a.context + 1) // a.block_size) + -(-pmax // a.block_size) + 1
    per_block = 2 * ec.head_dim * ec.num_key_value_heads * a.block_size * ec.num_hidden_layers * dtype.itemsize
    engine = _infinilm.InferEngine(ec, device_type="cuda" if cuda else "cpu",
                                   cache_config=_infinilm.PagedKVCacheConfig(blocks * per_block, a.block_size))
    for name, t in model.state_dict().items():
        engine.load_param(name, t)
    del model
    gen = torch.Generator().manual_seed(0)
    fill(engine, kmax, a.context, -(-(a.context + 1) // a.block_size), a.block_size, ec.vocab_size, gen)
    if cuda:
        base_name, base_env = "eager", {"INFINILM_CUDA_GRAPHS_MIXED": "0"}
        new_name, new_env = "graph", {"INFINILM_CUDA_GRAPHS_MIXED": "1"}
    else:
        base_name, base_env = "plain", {}
        new_name, new_env = "padded", {"INFINILM_EAGER_STATIC_STEPS": "1"}
    dev = torch.cuda.get_device_name() if cuda else "cpu"
    print(f"# mixed steps on {dev}, {a.model_shape or 'small random Llama'} {a.dtype}, torch {torch.__version__}; "
          f"decoding requests at context {a.context}, block {a.block_size}, median of {a.iters} synchronous steps")
    print(f"{'decodes':>7} {'chunk':>5} {'tokens':>6} {'padded':>6} | {base_name + ' ms':>9} {new_name + ' ms':>9} "
          f"{'speedup':>7}")
    for k in a.decodes:
        for p in a.chunks:
            inp, _, _ = step_input(k, p, a.context, a.block_size, ec.vocab_size, gen, kmax)
            T = k + p
            padded = 16
            while padded < T:
                padded *= 2
            base = timed(engine, inp, a.iters, base_env)
            new = timed(engine, inp, a.iters, new_env)
            pad = str(padded) if T <= 512 else "-"
            print(f"{k:>7} {p:>5} {T:>6} {pad:>6} | {base:>9.3f} {new:>9.3f} {base / new:>6.2f}x")
            sync(a.device)
    if cuda:
        print(f"# graphs captured {engine._num_cuda_graphs}, replays {engine._cuda_graph_replays}")


if __name__ == "__main__":
    main()
