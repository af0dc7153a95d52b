"""HF transformers generate unpatched, with infinilm_torch.patch and with Liger-Kernel, eager and compiled, one table.

    python benchmarks/bench_hf.py                                   # CPU, tiny random Llama
    python benchmarks/bench_hf.py --device cuda --shapes llama-3.2-1b --batch 1 32
    python benchmarks/bench_hf.py --device cuda --shapes llama-3.2-1b --modes compiled-dynamic compiled

Random weights with the model's shapes. "prefill ms" is one generate() of a single token; "decode tok/s" is
batch * (new_tokens - 1) / (time of new_tokens tokens - time of 1 token), the median over ``--repeats`` rounds
that time the models of a cell in turn; the bracketed ratio is the median of the per-round ratios. Modes: eager with transformers'
dynamic cache and with a static cache; "compiled" with a static cache is generate's own compile hook (fullgraph,
mode="reduce-overhead": CUDA graphs on CUDA, what transformers' automatic compile uses; inductor "default" on
CPU). "compiled" with a dynamic cache compiles the decode steps with inductor mode "default" (no CUDA graphs:
under "reduce-overhead" transformers' own dynamic cache reads CUDA-graph outputs that the next replay
overwrote, so the unpatched baseline cannot run there), ``torch.compile(model.forward, fullgraph=True,
dynamic=True)`` called for one-token steps only, prefill eager, as generate's hook does for static caches: one
graph per batch size instead of two, which keeps the compiled columns within one short run.
Compiled cells run cell by cell (hf, infinilm, liger in turn for each cache and batch), so a spent
``--budget-s`` leaves same-cell pairs; every cell not measured is listed at the end with the reason. Liger rows
(``apply_liger_kernel_to_llama`` with rope, rms_norm and swiglu, as Liger patches inference) run only where
``liger_kernel`` imports (Triton, CUDA); its rope patch replaces transformers' module function for every model in
the process, so a Liger copy is made only after the other models were patched. Liger 0.8.5's op dispatcher is
wrapped in ``torch.compiler.disable``, which no ``fullgraph=True`` compile traces: its compiled cells compile with
``fullgraph=False`` (graph breaks around each Liger op), the only way it runs compiled.
``--profile`` adds, per measured cell, a torch.profiler summary of one generate(): µs of GPU time per decode step
by kernel family, GPU busy share and host wall time per step.
"""
import argparse
import copy
import faulthandler
import functools
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(1, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from common import sync  # noqa: E402

import infinilm_torch  # noqa: E402

SHAPES = {
    "tiny": dict(vocab_size=32000, hidden_size=256, intermediate_size=688, num_hidden_layers=4, num_attention_heads=8,
                 num_key_value_heads=4, max_position_embeddings=2048),
    "tiny-qwen3": dict(family="qwen3", vocab_size=32000, hidden_size=256, intermediate_size=688, num_hidden_layers=4,
                       num_attention_heads=4, num_key_value_heads=2, head_dim=64, max_position_embeddings=2048),
    # meta-llama/Llama-3.2-1B
    "llama-3.2-1b": dict(vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                         num_attention_heads=32, num_key_value_heads=8, head_dim=64, max_position_embeddings=131072,
                         tie_word_embeddings=True, rms_norm_eps=1e-5,
                         rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0, "factor": 32.0,
                                          "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                          "original_max_position_embeddings": 8192}),
    # Qwen/Qwen3-0.6B (per-head q/k RMSNorms, head_dim 128 != hidden / heads)
    "qwen3-0.6b": dict(family="qwen3", vocab_size=151936, hidden_size=1024, intermediate_size=3072,
                       num_hidden_layers=28, num_attention_heads=16, num_key_value_heads=8, head_dim=128,
                       max_position_embeddings=40960, tie_word_embeddings=True, rms_norm_eps=1e-6,
                       rope_theta=1000000.0),
}
# transformers class prefix and modeling module of each family; Liger's patch function
FAMILIES = {"llama": ("Llama", "llama", "apply_liger_kernel_to_llama"),
            "qwen3": ("Qwen3", "qwen3", "apply_liger_kernel_to_qwen3")}


def family_of(shapes):
    return SHAPES[shapes].get("family", "llama")


MODES = {"eager-dynamic": ("eager", "dynamic"), "eager-static": ("eager", "static"),
         "compiled-dynamic": ("compiled", "dynamic"), "compiled": ("compiled", "static")}


def build(shapes, device, dtype):
    import transformers

    prefix = FAMILIES[family_of(shapes)][0]
    cfg = {k: v for k, v in SHAPES[shapes].items() if k != "family"}
    torch.manual_seed(0)
    with torch.device(device):
        model = getattr(transformers, prefix + "ForCausalLM")(getattr(transformers, prefix + "Config")(**cfg))
        model = model.to(dtype).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.uniform_(0.8, 1.2)
            else:
                p.normal_(0.0, 0.02)
    return model


def timed_generate(model, ids, new_tokens, mode, cache, cache_len, repeats, clock=time.perf_counter, fullgraph=True):
    from transformers import CompileConfig

    kw = dict(do_sample=False, max_new_tokens=new_tokens, min_new_tokens=new_tokens, pad_token_id=0)
    if cache == "static":
        kw.update(cache_implementation="static", max_cache_len=cache_len)
    if mode == "compiled" and cache == "static":
        cfg = CompileConfig(fullgraph=fullgraph, mode="reduce-overhead" if ids.is_cuda else "default")
        cfg._compile_all_devices = True
        kw.update(compile_config=cfg)
    else:
        kw.update(disable_compile=True)
    mask = torch.ones_like(ids)
    best = float("inf")
    with torch.no_grad():
        for _ in range(repeats):
            sync(ids.device)
            t0 = clock()
            model.generate(ids, attention_mask=mask, **kw)
            sync(ids.device)
            best = min(best, clock() - t0)
    return best


def compiled_decode(model, on: bool, fullgraph=True, backend="inductor"):
    """Install (or remove) the compiled dynamic-cache forward: torch.compile(model.forward, fullgraph=True,
    dynamic=True), inductor mode "default", for one-token steps; prefill stays eager. Kept on the model across
    its cells (the graph of a batch size is reused); backend: the one the first call compiles with (tests)."""
    if not on:
        model.__dict__.pop("forward", None)
        return
    if "_bench_compiled" not in model.__dict__:
        eager = model.forward
        model._bench_compiled = (eager, torch.compile(eager, fullgraph=fullgraph, dynamic=True, backend=backend))
    eager, compiled = model._bench_compiled

    @functools.wraps(eager)  # generate() checks its kwargs against the forward's signature
    def forward(*args, **kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        return (compiled if ids is not None and ids.shape[-1] == 1 else eager)(*args, **kwargs)

    model.forward = forward


def liger_model(base, ropes, family="llama"):
    """A copy of base patched by Liger-Kernel 0.8.5 the way it patches inference, or None where it is missing."""
    try:
        import liger_kernel.transformers as lt
        apply = getattr(lt, FAMILIES[family][2])
    except Exception as e:  # noqa: BLE001 - not installed, or no Triton/CUDA
        print(f"# liger rows skipped: liger_kernel does not import ({type(e).__name__}: {str(e)[:120]})", flush=True)
        return None
    model = copy.deepcopy(base)
    apply(rope=True, rms_norm=True, swiglu=True, cross_entropy=False, fused_linear_cross_entropy=False, model=model)
    ropes.keep("liger")
    return model


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"])
    ap.add_argument("--shapes", default="tiny", choices=sorted(SHAPES))
    ap.add_argument("--batch", type=int, nargs="+", default=None)
    ap.add_argument("--prompt-len", type=int, default=None)
    ap.add_argument("--new-tokens", type=int, default=None)
    ap.add_argument("--no-compile", action="store_true", help="same as --modes eager-dynamic eager-static")
    ap.add_argument("--modes", nargs="+", default=list(MODES), choices=list(MODES),
                    help="columns to run (compiling takes minutes on a 1B model: split runs over calls if needed)")
    ap.add_argument("--models", nargs="+", default=["hf", "infinilm", "liger"], choices=["hf", "infinilm", "liger"])
    ap.add_argument("--repeats", type=int, default=5, help="timing rounds per cell (models interleaved)")
    ap.add_argument("--budget-s", type=float, default=270.0,
                    help="skip compiled cells not started within this many seconds of the start (0: no limit)")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    ap.add_argument("--profile", action="store_true", help="CUDA: per cell, GPU time per kernel family of a decode step")
    ap.add_argument("--clock", default="wall", choices=["wall", "cpu"],
                    help="cpu: this process's CPU time, steadier than wall time on a shared CPU machine")
    args = ap.parse_args()
    faulthandler.enable(sys.stdout)  # a crash in a compiled cell leaves its stack in the log with the table
    if args.threads:
        torch.set_num_threads(args.threads)
    cuda = args.device.startswith("cuda")
    dtype = getattr(torch, args.dtype or ("bfloat16" if cuda else "float32"))
    batches = args.batch or ([1, 32] if cuda else [1, 4])
    plen = args.prompt_len or (128 if cuda else 32)
    new = args.new_tokens or (64 if cuda else 32)
    # Three models x two caches x (up to) two batch sizes of graphs share model.forward's code object.
    torch._dynamo.config.recompile_limit = 64
    torch._dynamo.config.cache_size_limit = 64

    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    base = build(args.shapes, args.device, dtype)
    models = {"hf": base}
    if "infinilm" in args.models:
        models["infinilm"] = infinilm_torch.patch(copy.deepcopy(base))
    print(f"# {args.shapes} {str(dtype).replace('torch.', '')} on {args.device}"
          f"{' (' + torch.cuda.get_device_name() + ')' if cuda else ''}, prompt {plen}, {new} new tokens,"
          f" {torch.get_num_threads()} CPU threads, {args.clock} clock, torch {torch.__version__},"
          f" transformers {__import__('transformers').__version__}", flush=True)
    # "vs hf": against the unpatched model in the same mode and cache; "vs hf eager": against unpatched eager with
    # transformers' default dynamic cache (when that row ran), the usual baseline.
    head = ("model", "mode", "cache", "batch", "prefill ms", "decode tok/s", "vs hf", "vs hf eager", "warm-up s")
    widths = [8, 8, 7, 5, 10, 12, 6, 11, 9]
    fmt = "  ".join(f"{{:<{w}}}" if i < 3 else f"{{:>{w}}}" for i, w in enumerate(widths))
    print(fmt.format(*head))
    print("  ".join("-" * w for w in widths), flush=True)
    modes = [MODES[m] for m in (["eager-dynamic", "eager-static"] if args.no_compile else args.modes)]
    prompts = {bsz: torch.randint(3, base.config.vocab_size, (bsz, plen), device=args.device) for bsz in batches}
    cache_len = plen + new
    results, missing = {}, []
    start = time.perf_counter()
    ropes = Ropes(family_of(args.shapes))
    profiles = {}

    ratios = {}  # (name, mode, cache, bsz) -> median over rounds of (rate / hf's rate in the same round)

    def prepare(name, mode, cache, bsz):
        """Select the model's rope function and compiled forward; returns its generate() timer."""
        model = models[name]
        ropes.select(name)
        fg = name != "liger"  # Liger's dispatcher is compiler.disable'd: no fullgraph trace exists
        compiled_decode(model, mode == "compiled" and cache == "dynamic", fullgraph=fg)
        return functools.partial(timed_generate, model, prompts[bsz], mode=mode, cache=cache, cache_len=cache_len,
                                 fullgraph=fg)

    def fail(name, mode, cache, bsz, why):
        missing.append((name, mode, cache, bsz, why))
        print(f"{name} {mode} {cache} batch {bsz}: {why}", flush=True)

    def run_cell(names, mode, cache, bsz):
        """Warm every model up (compiling where the mode does), then `--repeats` rounds that time each model in
        turn (the round's first model rotates): a cell's ratios compare runs seconds apart, not minutes, which
        matters where the host bounds the step (a shared CPU drifts)."""
        warm, live = {}, []
        for name in names:
            if mode == "compiled" and args.budget_s and time.perf_counter() - start > args.budget_s:
                fail(name, mode, cache, bsz, f"skipped: --budget-s {args.budget_s:.0f} spent")
                continue
            try:
                gen = prepare(name, mode, cache, bsz)
                t0 = time.perf_counter()
                gen(new, repeats=1)  # warm-up (and compile)
                gen(1, repeats=1)
                warm[name] = time.perf_counter() - t0
                live.append(name)
            except Exception as e:  # noqa: BLE001 - a cell that fails is reported, the table goes on
                fail(name, mode, cache, bsz, f"FAILED {type(e).__name__}: {str(e)[:300]}")
            finally:
                compiled_decode(models[name], False)
        rates, firsts = {n: [] for n in live}, {n: [] for n in live}
        graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
        for r in range(args.repeats):
            for name in live[r % max(len(live), 1):] + live[:r % max(len(live), 1)]:
                if name not in rates:
                    continue
                try:
                    gen = prepare(name, mode, cache, bsz)
                    t1 = gen(1, repeats=1, clock=clock)
                    tn = gen(new, repeats=1, clock=clock)
                    # A round whose n-token run was not slower than its 1-token run measured noise only.
                    rates[name].append(bsz * (new - 1) / (tn - t1) if tn > t1 else float("nan"))
                    firsts[name].append(t1)
                except Exception as e:  # noqa: BLE001
                    fail(name, mode, cache, bsz, f"FAILED while timed {type(e).__name__}: {str(e)[:300]}")
                    del rates[name]
                finally:
                    compiled_decode(models[name], False)
        if torch._dynamo.utils.counters["stats"]["unique_graphs"] != graphs:
            print(f"# {mode} {cache} batch {bsz}: compiled again while timed (a recompile per step?)")
        hf_rates = rates.get("hf")
        for name, rs in rates.items():
            key = (name, mode, cache, bsz)
            ok = [x for x in rs if x == x]
            if not ok:
                fail(name, mode, cache, bsz, "no valid round (the n-token run never took longer than the 1-token run)")
                continue
            results[key] = statistics.median(ok)
            spread = [x / h for x, h in zip(rs, hf_rates or []) if x == x and h == h]
            if spread:
                ratios[key] = statistics.median(spread)
            eager = results.get(("hf", "eager", "dynamic", bsz))
            vs = f"{ratios[key]:.2f}x" if key in ratios else "-"
            print(fmt.format(name, mode, cache, str(bsz), f"{1e3 * min(firsts[name]):.1f}", f"{results[key]:.1f}", vs,
                             f"{results[key] / eager:.2f}x" if eager else "-", f"{warm[name]:.1f}")
                  + (f"   rounds {min(spread):.2f}-{max(spread):.2f}x ({len(spread)} valid)" if spread and name != "hf"
                     else ""),
                  flush=True)
            if args.profile and cuda:
                gen = prepare(name, mode, cache, bsz)
                profiles[key] = profile_generate(lambda: gen(new, repeats=1), new)
                compiled_decode(models[name], False)

    names = [n for n in ("hf", "infinilm") if n in args.models]
    cells = [(m, c, b) for m, c in modes for b in batches]
    if "liger" in args.models:  # made after the other models were patched (see Ropes)
        liger = liger_model(base, ropes, family_of(args.shapes)) if cuda else None
        if liger is None:
            why = "liger_kernel does not import" if cuda else "Liger-Kernel needs CUDA (Triton)"
            missing += [("liger", *k, why) for k in cells]
            print(f"# liger rows skipped: {why}", flush=True)
        else:
            models["liger"] = liger
            names.append("liger")
    # Eager cells first, then compiled ones: the dynamic cache (inductor default), then the static one (CUDA graphs).
    for m, c, b in sorted(cells, key=lambda k: (k[0] == "compiled", k[0] == "compiled" and k[1] != "dynamic")):
        run_cell(names, m, c, b)
    table(results, ratios, missing, modes, batches, cuda, args, dtype, new)
    for key, prof in profiles.items():
        print_profile(" ".join(map(str, key)), prof)


def profile_generate(fn, new_tokens):
    """torch.profiler over one generate(): GPU µs per decode step by kernel family (prefill included, spread
    over the steps), GPU busy share of the span, host wall per step, the top kernels."""
    import collections
    import json
    import tempfile

    from engine_steps import family
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        t = time.perf_counter()
        fn()
        wall = time.perf_counter() - t
    path = os.path.join(tempfile.mkdtemp(), "trace.json")
    prof.export_chrome_trace(path)
    with open(path) as fh:
        gpu = [e for e in json.load(fh)["traceEvents"]
               if e.get("cat") in ("kernel", "gpu_memcpy", "gpu_memset") and "dur" in e]
    per, names = collections.Counter(), collections.Counter()
    for e in gpu:
        per[family(e["name"], e["cat"])] += e["dur"] / new_tokens
        names[e["name"][:90]] += e["dur"] / new_tokens
    span = (max(e["ts"] + e["dur"] for e in gpu) - min(e["ts"] for e in gpu)) / new_tokens if gpu else 0.0
    return dict(families=per, busy=sum(per.values()), span=span, wall=1e6 * wall / new_tokens,
                kernels=len(gpu) / new_tokens, top=names.most_common(8))


def print_profile(name, p):
    fams = ["GEMM", "attention", "norm", "rope", "silu", "cache write", "sampling", "copy", "other"]
    print(f"\nprofile {name}: per step µs of GPU time ({p['kernels']:.0f} kernels/step), under the profiler")
    print(" | ".join(f"{k:>11}" for k in fams))
    print(" | ".join(f"{p['families'].get(k, 0.0):>11.1f}" for k in fams))
    print(f"kernels {p['busy']:.1f} µs, GPU span {p['span']:.1f} µs (busy {100 * p['busy'] / max(p['span'], 1e-9):.1f}%),"
          f" host wall {p['wall']:.1f} µs/step")
    for n, us in p["top"]:
        print(f"  {us:9.1f} µs  {n}")


class Ropes:
    """transformers' module-level apply_rotary_pos_emb as each model needs it: Liger's patch replaces it for every
    model of the process; the others get back the function they were patched with (graphs guard on it)."""

    def __init__(self, family="llama"):
        import importlib
        mod = FAMILIES[family][1]
        self.ml, self.fns = importlib.import_module(f"transformers.models.{mod}.modeling_{mod}"), {}
        self.keep("hf")  # before Liger's patch: transformers' own, or our dispatcher, which serves both

    def keep(self, name):
        self.fns[name] = self.ml.apply_rotary_pos_emb

    def select(self, name):
        self.ml.apply_rotary_pos_emb = self.fns.get(name, self.fns.get("hf", self.ml.apply_rotary_pos_emb))


def table(results, ratios, missing, modes, batches, cuda, args, dtype, new):
    """One line per model, one column per (mode, cache, batch): the table of the closing note; then what was not
    measured and why."""
    cols = [(m, c, b) for m, c in modes for b in batches]
    dev = torch.cuda.get_device_name() if cuda else args.device
    print(f"\ndecode tok/s on {dev}, {args.shapes} {str(dtype).replace('torch.', '')}, {new} new tokens"
          f" (in brackets: median over rounds of the ratio to unpatched timed in the same round; compiled: dynamic cache inductor 'default' on decode"
          f" steps, static cache generate's hook 'reduce-overhead')")
    print(f"{'':<12}" + "".join(f"  {m[:4]}-{c[:3]}-b{b:<3}   " for m, c, b in cols))
    for name in ("hf", "infinilm", "liger"):
        if any((name, *k) in results for k in cols):
            row = []
            for k in cols:
                v, x = results.get((name, *k)), ratios.get((name, *k))
                row.append("-" if v is None else f"{v:.1f}" + (f" ({x:.2f}x)" if x is not None else ""))
            print(f"{name:<12}" + "".join(f"  {c:>17}" for c in row))
    for name, m, c, b, why in missing:
        print(f"not measured: {name} {m} {c} batch {b}: {why}")
    print("all cells measured" if not missing else f"{len(missing)} cells not measured", flush=True)


if __name__ == "__main__":
    main()
