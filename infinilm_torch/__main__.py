"""`python -m infinilm_torch [generate ...|ops-demo]`: the main job (generation with the C++ engine) and the op tour.

With no arguments it builds the small demo checkpoint (once, cached) and generates from it on the CPU.
"""
from __future__ import annotations

import argparse
import sys
from typing import List, Optional

DEFAULT_PROMPTS = ["Once upon a time", "The engine reads the prompt, then"]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m infinilm_torch", description=__doc__)
    sub = p.add_subparsers(dest="command")
    g = sub.add_parser("generate", help="generate text with the C++ engine (default command)")
    g.add_argument("--model", help="HF model directory (config.json + weights [+ tokenizer]); default: the demo model")
    g.add_argument("--prompt", action="append", help="a text prompt (repeat for a batch)")
    g.add_argument("--prompt-ids", action="append", help="a prompt as comma-separated token ids (repeatable)")
    g.add_argument("--max-new-tokens", type=int, default=48)
    g.add_argument("--cache", choices=("static", "paged"), default="static")
    g.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, nvidia, ...")
    g.add_argument("--dtype", choices=("float32", "float16", "bfloat16"), help="default: the checkpoint's")
    g.add_argument("--temperature", type=float, default=0.8, help="0 = greedy")
    g.add_argument("--top-k", type=int, default=50)
    g.add_argument("--top-p", type=float, default=0.95)
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--ignore-eos", action="store_true", help="always generate max-new-tokens tokens")
    g.add_argument("--block-size", type=int, default=16, help="paged cache: tokens per block")
    g.add_argument("--max-batch-size", type=int, default=8)
    g.add_argument("--demo-dir", help="where the demo checkpoint is cached (default ~/.cache/infinilm_torch/...)")
    sub.add_parser("ops-demo", help="a short tour of the torch.ops.infinilm operators")
    return p


def _generate(args) -> int:
    from infinilm_torch.demo_model import ensure_demo_model
    from infinilm_torch import LLM, SamplingParams

    model = args.model or ensure_demo_model(args.demo_dir)
    prompts: List = [[int(t) for t in s.split(",") if t.strip()] for s in args.prompt_ids or []]
    prompts += args.prompt or []
    if not prompts:
        prompts = list(DEFAULT_PROMPTS)
    llm = LLM(model, device=args.device, dtype=args.dtype, cache=args.cache, block_size=args.block_size,
              max_batch_size=args.max_batch_size)
    sp = SamplingParams(max_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
                        top_p=args.top_p, seed=args.seed, ignore_eos=args.ignore_eos)
    outs = llm.generate(prompts, sp)
    print(f"model {model} ({llm.fields['model_type']}, {llm.fields['num_hidden_layers']} layers, "
          f"{llm.fields['dtype'] if args.dtype is None else args.dtype}) on {llm.device}, {args.cache} cache")
    for i, prompt in enumerate(prompts):
        shown = prompt if isinstance(prompt, str) else str(prompt)
        o = outs[i].outputs[0]
        gen = o.text if llm.tokenizer is not None else str(o.token_ids)
        print(f"--- [{i}] {shown!r} -> ({len(o.token_ids)} tokens, {o.finish_reason})\n{gen}")
    s = llm.last_stats
    print(f"{s.requests} requests, {s.prompt_tokens} prompt tokens, {s.generated_tokens} new tokens in "
          f"{s.total_s:.3f} s: {s.tokens_per_s:.1f} tokens/s (first step {1e3 * s.first_step_s:.1f} ms, "
          f"then {s.decode_tokens_per_s:.1f} tokens/s)")
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0].startswith("-") and argv[0] not in ("-h", "--help"):
        argv = ["generate"] + argv
    args = _parser().parse_args(argv)
    if args.command == "ops-demo":
        from infinilm_torch import demo_ops

        return demo_ops.main([])
    return _generate(args)


if __name__ == "__main__":
    sys.exit(main())
