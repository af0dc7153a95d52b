"""Host (Python) time per engine step of the serving loop, apart from the engine's forward, at a given batch.

Drives EngineCore._step on the calling thread over a tiny random Llama (so the forward is cheap) with N requests
(prompts --prompt-len tokens, temperature 0.6 seeded, ignore_eos, long outputs); once every request is decoding,
times --steps steps and reports per step: whole step ms, forward ms, host ms (the difference). --profile prints a
cProfile of those steps. --stream marks the requests streamed (the server's case: an output per step each);
--smollm2-tokenizer gives them a real tokenizer's text to build.

    PYTHONPATH=. python benchmarks/bench_serving_host.py --running 64 256
"""
from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import statistics
import sys
import tempfile
import time

import torch



def make_model(path: str, vocab: int) -> str:
    import transformers

    if not os.path.exists(os.path.join(path, "config.json")):
        cfg = transformers.LlamaConfig(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                       num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                                       max_position_embeddings=4096, bos_token_id=1, eos_token_id=2)
        torch.manual_seed(0)
        transformers.LlamaForCausalLM(cfg).save_pretrained(path)
    return path


class TimedEngine:
    """The engine with its forward timed (host time = step time - forward time)."""

    def __init__(self, engine):
        self.engine, self.fwd = engine, 0.0

    def forward(self, inp):
        t = time.perf_counter()
        out = self.engine.forward(inp)
        self.fwd += time.perf_counter() - t
        return out

    def __getattr__(self, name):
        return getattr(self.engine, name)


def _sink(out, err) -> None:
    if err is not None:
        raise err


def run(path: str, running: int, args) -> dict:
    from infinilm_torch import LLM, SamplingParams
    from infinilm_torch.serving.engine_core import Request

    block = 16
    blocks = running * (-(-(args.prompt_len + args.warm + args.steps + 8) // block)) + 8
    kv = blocks * block * 2 * 2 * 2 * 16 * 4  # k+v, layers, kv heads, head_dim, fp32
    llm = LLM(path, cache="paged", block_size=block, max_kv_memory_bytes=kv, max_num_seqs=running,
              max_step_tokens=max(8192, running), progress=False, tokenizer=args.tok)
    core = llm._core
    timed = TimedEngine(llm.engine)
    llm.engine = timed
    g = torch.Generator().manual_seed(running)
    for i in range(running):
        ids = torch.randint(3, args.vocab, (args.prompt_len,), generator=g).tolist()
        p = SamplingParams(temperature=args.temperature, max_tokens=args.warm + args.steps + 4, ignore_eos=True, seed=i)
        core._add(Request(str(i), None, ids, p, _sink, stream=args.stream))
    while len(core.scheduler.running) < running or any(s.num_computed < len(s.prompt) for s in core.scheduler.running):
        core._step()
    for _ in range(args.warm):
        core._step()
    prof = cProfile.Profile() if args.profile else None
    steps, fwds = [], []
    for _ in range(args.steps):
        f0, t0 = timed.fwd, time.perf_counter()
        if prof:
            prof.enable()
        core._step()
        if prof:
            prof.disable()
        steps.append(time.perf_counter() - t0)
        fwds.append(timed.fwd - f0)
    if prof:
        pstats.Stats(prof).sort_stats(os.environ.get("PROFILE_SORT", "cumulative")).print_stats(args.profile)
    host = [s - f for s, f in zip(steps, fwds)]
    ms = 1e3
    return dict(running=running, step=ms * statistics.median(steps), fwd=ms * statistics.median(fwds),
                host=ms * statistics.median(host))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--running", type=int, nargs="+", default=[64, 256])
    ap.add_argument("--prompt-len", type=int, default=512)
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--warm", type=int, default=3)
    ap.add_argument("--temperature", type=float, default=0.6, help="0: greedy (the engine's argmax)")
    ap.add_argument("--stream", action="store_true")
    ap.add_argument("--smollm2-tokenizer", action="store_true",
                    help="decode with SmolLM2's tokenizer (vocab 49152; streamed requests are decoded every step)")
    ap.add_argument("--profile", type=int, default=0, help="print the top N cProfile entries")
    ap.add_argument("--model-dir", default=os.path.join(tempfile.gettempdir(), "infinilm_host_bench_model"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    args.tok = None
    if args.smollm2_tokenizer:
        from infinilm_torch.loaders import default_model
        from infinilm_torch.tokenizer import load_tokenizer

        args.tok, args.vocab = load_tokenizer(default_model()), 49152
    path = make_model(args.model_dir + f"_{args.vocab}", args.vocab)
    for n in args.running:
        r = run(path, n, args)
        print(f"running {r['running']:>4}: step {r['step']:7.2f} ms  forward {r['fwd']:7.2f} ms  "
              f"host {r['host']:7.2f} ms (median of {args.steps})", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
