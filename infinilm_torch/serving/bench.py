"""bench-throughput (nano-vllm's offline workload, optional HF generate baseline) and bench-serving (online load).

bench-throughput: N requests of random token ids, prompt and output lengths uniform in [min-len, max-*-len],
ignore_eos, all given to one LLM.generate; prints one line per system: requests, tokens, seconds, tok/s.
Baselines on the same weights, same run (``--baseline``, repeatable): ``hf-cb`` transformers' continuous batching
(generate_batch's manager, ``--hf-attn``), ``hf-generate`` its padded ``generate``; ``hf`` both.

bench-serving: requests sent at a Poisson rate to a running server's /v1/completions (streamed); prints
request throughput, output tok/s, TTFT and inter-token latency p50/p99.
"""
from __future__ import annotations

import asyncio
import json
import random
import statistics
import time
from typing import List


def add_parsers(sub, engine_args) -> None:
    from infinilm_torch.__main__ import _int_at_least

    t = sub.add_parser("bench-throughput", help="offline throughput: N random requests through LLM.generate")
    engine_args(t)
    _workload_args(t, n=256, max_in=1024, max_out=1024)
    t.add_argument("--baseline", choices=("none", "hf", "hf-cb", "hf-generate"), action="append",
                   help="also time transformers on the same weights, same run: hf-cb (continuous batching, "
                        "generate_batch), hf-generate (padded batches), hf (both); repeatable")
    t.add_argument("--hf-batch-size", type=_int_at_least(1), default=16, help="hf-generate's batch size")
    t.add_argument("--hf-attn", default="paged|sdpa", help="hf-cb's attn_implementation")
    t.add_argument("--hf-cb-blocks", type=_int_at_least(1), default=None,
                   help="hf-cb's cache pages (default: transformers sizes it from free memory)")
    t.add_argument("--scheduling", choices=("default", "async", "sync", "both"), default="default",
                   help="the engine loop's steps: overlapped (async), one at a time (sync), both in one run "
                        "(interleaved rounds, medians); default: the LLM's (INFINILM_ASYNC_SCHEDULING, else async)")
    t.add_argument("--rounds", type=_int_at_least(1), default=1, help="timed runs per scheduling mode")
    s = sub.add_parser("bench-serving", help="online load against a running server (see serve)")
    s.add_argument("--base-url", default="http://127.0.0.1:8000")
    s.add_argument("--model", default=None, help="model id to send (default: the server's first)")
    s.add_argument("--request-rate", type=float, default=float("inf"), help="requests/s (Poisson); inf: all at once")
    _workload_args(s, n=64, max_in=512, max_out=256)
    s.add_argument("--vocab-size", type=int, default=None, help="token ids drawn below this (default: 1000)")


def _workload_args(p, n, max_in, max_out) -> None:
    from infinilm_torch.__main__ import _int_at_least

    p.add_argument("--num-seqs", "--num-prompts", dest="num_seqs", type=_int_at_least(1), default=n)
    p.add_argument("--min-len", type=_int_at_least(1), default=100)
    p.add_argument("--max-input-len", type=_int_at_least(1), default=max_in)
    p.add_argument("--max-output-len", type=_int_at_least(1), default=max_out)
    p.add_argument("--seed", type=int, default=0)


def workload(args, vocab: int):
    if args.min_len > min(args.max_input_len, args.max_output_len):
        raise ValueError(f"--min-len {args.min_len} exceeds --max-input-len {args.max_input_len} or "
                         f"--max-output-len {args.max_output_len}")
    rng = random.Random(args.seed)
    prompts = [[rng.randrange(vocab) for _ in range(rng.randint(args.min_len, args.max_input_len))]
               for _ in range(args.num_seqs)]
    outs = [rng.randint(args.min_len, args.max_output_len) for _ in range(args.num_seqs)]
    return prompts, outs


def _line(name, n, tokens, seconds, extra=""):
    print(f"{name:<34} {n:>5} req {tokens:>8} tok {seconds:>8.2f} s {tokens / seconds:>10.1f} tok/s{extra}",
          flush=True)


def _run_llm(llm, prompts, params, want: int, label: str) -> float:
    """One timed LLM.generate of the workload (prefix cache emptied first); prints its row, returns tok/s."""
    core = llm._core
    # The same prompts again must not find their blocks cached; the wait also ends any step still in flight.
    core.call(core.scheduler.reset_blocks)
    t0, c0 = time.perf_counter(), (core.steps, core.step_s, core.forward_s, core.wait_s)
    res = llm.generate(prompts, params, use_tqdm=False)
    dt = time.perf_counter() - t0
    core.call(lambda: None)
    steps = max(1, core.steps - c0[0])
    step_ms, fwd_ms, wait_ms = (1e3 * (now - then) / steps for now, then in
                                zip((core.step_s, core.forward_s, core.wait_s), c0[1:]))
    got = sum(len(r.outputs[0].token_ids) for r in res)
    assert got == want, (got, want)
    pre = getattr(core.scheduler, "num_preemptions", 0)
    _line(label, len(prompts), got, dt, f"  ({steps} steps, {pre} preemptions; per step {step_ms:.2f} ms: "
          f"{fwd_ms:.2f} in forward, {wait_ms:.2f} waiting for ids, {step_ms - fwd_ms - wait_ms:.2f} host)")
    return got / dt


def bench_throughput(args) -> int:
    from infinilm_torch import SamplingParams
    from infinilm_torch.__main__ import make_llm

    model, llm = make_llm(args)
    vocab = llm.fields["vocab_size"]
    prompts, outs = workload(args, vocab)
    params = [SamplingParams(temperature=0.6, max_tokens=n, ignore_eos=True, seed=i) for i, n in enumerate(outs)]
    llm.generate([[1, 2, 3]], SamplingParams(max_tokens=2), use_tqdm=False)  # warm-up
    print(f"model {model}: {len(prompts)} requests, prompts {args.min_len}..{args.max_input_len}, outputs "
          f"{args.min_len}..{args.max_output_len} tokens, {args.cache} cache on {llm.device}")
    modes = {"default": [llm.async_scheduling], "async": [True], "sync": [False], "both": [False, True]}
    modes = modes[args.scheduling]
    rates = {m: [] for m in modes}
    for r in range(args.rounds):
        for mode in modes if r % 2 == 0 else modes[::-1]:  # alternate the order: drift hits both alike
            llm.async_scheduling = mode
            label = "infinilm_torch LLM" + (f" ({'async' if mode else 'sync'})" if len(modes) > 1 else "")
            rates[mode].append(_run_llm(llm, prompts, params, sum(outs), label))
    if len(modes) > 1:
        med = {m: statistics.median(v) for m, v in rates.items()}
        print(f"{'median tok/s':<34} sync {med[False]:.1f}, async {med[True]:.1f}: async/sync "
              f"{med[True] / med[False]:.3f}x over {args.rounds} round(s)", flush=True)
    wanted = set(args.baseline or ())
    if not wanted - {"none"}:
        return 0
    from infinilm_torch.serving import bench_hf

    device, dtype = llm.device, llm.dtype
    del llm
    bench_hf.free()  # the engine's cache leaves the device before transformers sizes its own
    runs = []
    if wanted & {"hf", "hf-cb"}:
        runs.append(("HF generate_batch", lambda: bench_hf.continuous_batching(
            model, dtype, device, prompts, outs, args.hf_attn, _line, args.hf_cb_blocks)))
    if wanted & {"hf", "hf-generate"}:
        runs.append(("HF generate", lambda: bench_hf.padded_generate(
            model, dtype, device, prompts, outs, args.hf_batch_size, _line)))
    failed = 0
    for name, fn in runs:
        try:
            fn()
        except Exception as e:  # noqa: BLE001  (one baseline failing must not hide the others)
            failed += 1
            print(f"{name:<34} failed: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}", flush=True)
            bench_hf.free()
    return 1 if failed else 0


def _pct(xs: List[float], q: float) -> float:
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))]


async def _one(client, url, model, prompt, n, stats):
    body = {"model": model, "prompt": prompt, "max_tokens": n, "ignore_eos": True, "stream": True,
            "temperature": 0}
    t0 = time.perf_counter()
    times = []
    async with client.stream("POST", url + "/v1/completions", json=body) as r:
        if r.status_code != 200:
            stats["errors"] += 1
            await r.aread()
            return
        async for line in r.aiter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                if json.loads(line[6:]).get("choices"):
                    times.append(time.perf_counter())
    if times:
        stats["ttft"].append(times[0] - t0)
        stats["itl"] += [b - a for a, b in zip(times, times[1:])]
        stats["tokens"] += n
        stats["done"] += 1


async def _serving(args) -> None:
    import httpx

    async with httpx.AsyncClient(timeout=None, limits=httpx.Limits(max_connections=None)) as client:
        model = args.model or (await client.get(args.base_url + "/v1/models")).json()["data"][0]["id"]
        prompts, outs = workload(args, args.vocab_size or 1000)
        rng = random.Random(args.seed + 1)
        stats = {"ttft": [], "itl": [], "tokens": 0, "done": 0, "errors": 0}
        t0 = time.perf_counter()
        tasks = []
        for p, n in zip(prompts, outs):
            tasks.append(asyncio.create_task(_one(client, args.base_url, model, p, n, stats)))
            if args.request_rate != float("inf"):
                await asyncio.sleep(rng.expovariate(args.request_rate))
        await asyncio.gather(*tasks)
        dt = time.perf_counter() - t0
    ms = 1e3
    print(f"rate {args.request_rate} req/s: {stats['done']} ok, {stats['errors']} errors in {dt:.2f} s; "
          f"{stats['done'] / dt:.2f} req/s, {stats['tokens'] / dt:.1f} output tok/s; "
          f"TTFT p50 {ms * _pct(stats['ttft'], .5):.1f} ms p99 {ms * _pct(stats['ttft'], .99):.1f} ms; "
          f"ITL p50 {ms * _pct(stats['itl'], .5):.1f} ms p99 {ms * _pct(stats['itl'], .99):.1f} ms", flush=True)


def bench_serving(args) -> int:
    asyncio.run(_serving(args))
    return 0


COMMANDS = {"bench-throughput": bench_throughput, "bench-serving": bench_serving}
