"""HF transformers generate unpatched, with infinilm_torch.patch and with Liger-Kernel, eager and compiled, one table.

    python benchmarks/bench_hf.py                                   # CPU, tiny random Llama
    python benchmarks/bench_hf.py --device cuda --shapes llama-3.2-1b --batch 1 32
    python benchmarks/bench_hf.py --device cuda --shapes llama-3.2-1b --modes compiled-dynamic compiled

Random weights with the model's shapes. "prefill ms" is one generate() of a single token; "decode tok/s" is
batch * (new_tokens - 1) / (time of new_tokens tokens - time of 1 token). Modes: eager with transformers'
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
the process, so a Liger copy is made only after the other models were patched.
"""
import argparse
import copy
import faulthandler
import functools
import os
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
    # meta-llama/Llama-3.2-1B
    "llama-3.2-1b": dict(vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                         num_attention_heads=32, num_key_value_heads=8, head_dim=64, max_position_embeddings=131072,
                         tie_word_embeddings=True, rms_norm_eps=1e-5,
                         rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0, "factor": 32.0,
                                          "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                          "original_max_position_embeddings": 8192}),
}


MODES = {"eager-dynamic": ("eager", "dynamic"), "eager-static": ("eager", "static"),
         "compiled-dynamic": ("compiled", "dynamic"), "compiled": ("compiled", "static")}


def build(shapes, device, dtype):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    with torch.device(device):
        model = LlamaForCausalLM(LlamaConfig(**SHAPES[shapes])).to(dtype).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.uniform_(0.8, 1.2)
            else:
                p.normal_(0.0, 0.02)
    return model


def timed_generate(model, ids, new_tokens, mode, cache, cache_len, repeats, clock=time.perf_counter):
    from transformers import CompileConfig

    kw = dict(do_sample=False, max_new_tokens=new_tokens, min_new_tokens=new_tokens, pad_token_id=0)
    if cache == "static":
        kw.update(cache_implementation="static", max_cache_len=cache_len)
    if mode == "compiled" and cache == "static":
        cfg = CompileConfig(fullgraph=True, mode="reduce-overhead" if ids.is_cuda else "default")
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


def compiled_decode(model, on: bool):
    """Install (or remove) the compiled dynamic-cache forward: torch.compile(model.forward, fullgraph=True,
    dynamic=True), inductor mode "default", for one-token steps; prefill stays eager. Kept on the model across
    its cells (the graph of a batch size is reused)."""
    if not on:
        model.__dict__.pop("forward", None)
        return
    if "_bench_compiled" not in model.__dict__:
        eager = model.forward
        model._bench_compiled = (eager, torch.compile(eager, fullgraph=True, dynamic=True))
    eager, compiled = model._bench_compiled

    @functools.wraps(eager)  # generate() checks its kwargs against the forward's signature
    def forward(*args, **kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        return (compiled if ids is not None and ids.shape[-1] == 1 else eager)(*args, **kwargs)

    model.forward = forward


def liger_model(base, ropes):
    """A copy of base patched by Liger-Kernel 0.8.5 the way it patches inference, or None where it is missing."""
    try:
        from liger_kernel.transformers import apply_liger_kernel_to_llama
    except Exception as e:  # noqa: BLE001 - not installed, or no Triton/CUDA
        print(f"# liger rows skipped: liger_kernel does not import ({type(e).__name__}: {str(e)[:120]})", flush=True)
        return None
    model = copy.deepcopy(base)
    apply_liger_kernel_to_llama(rope=True, rms_norm=True, swiglu=True, cross_entropy=False,
                                fused_linear_cross_entropy=False, model=model)
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
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--budget-s", type=float, default=270.0,
                    help="skip compiled cells not started within this many seconds of the start (0: no limit)")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
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
    ropes = Ropes()

    def run(name, mode, cache, bsz):
        model, ids = models[name], prompts[bsz]
        if mode == "compiled" and args.budget_s and time.perf_counter() - start > args.budget_s:
            missing.append((name, mode, cache, bsz, f"skipped: --budget-s {args.budget_s:.0f} spent"))
            print(f"{name} {mode} {cache} batch {bsz}: {missing[-1][-1]}", flush=True)
            return
        ropes.select(name)
        compiled_decode(model, mode == "compiled" and cache == "dynamic")
        try:
            t0 = time.perf_counter()
            timed_generate(model, ids, new, mode, cache, cache_len, 1)  # warm-up (and compile)
            warm = time.perf_counter() - t0
            graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
            t1 = timed_generate(model, ids, 1, mode, cache, cache_len, args.repeats, clock)
            tn = timed_generate(model, ids, new, mode, cache, cache_len, args.repeats, clock)
            if torch._dynamo.utils.counters["stats"]["unique_graphs"] != graphs:
                print(f"# {name} {mode} {cache} batch {bsz}: compiled again while timed (a recompile per step?)")
        except Exception as e:  # noqa: BLE001 - a cell that fails is reported, the table goes on
            missing.append((name, mode, cache, bsz, f"FAILED {type(e).__name__}: {str(e)[:300]}"))
            print(f"{name} {mode} {cache} batch {bsz}: {missing[-1][-1]}", flush=True)
            return
        finally:
            compiled_decode(model, False)
        decode = bsz * (new - 1) / max(tn - t1, 1e-9)
        results[(name, mode, cache, bsz)] = decode
        ref = results.get(("hf", mode, cache, bsz), decode)
        eager = results.get(("hf", "eager", "dynamic", bsz))
        print(fmt.format(name, mode, cache, str(bsz), f"{1e3 * t1:.1f}", f"{decode:.1f}", f"{decode / ref:.2f}x",
                         f"{decode / eager:.2f}x" if eager else "-", f"{warm:.1f}"), flush=True)

    names = [n for n in ("hf", "infinilm") if n in args.models]
    cells = [(m, c, b) for m, c in modes for b in batches]
    for m, c, b in [k for k in cells if k[0] == "eager"]:  # eager: model by model, Liger's after the others
        for name in names:
            run(name, m, c, b)
    if "liger" in args.models:
        liger = liger_model(base, ropes) if cuda else None
        if liger is None:
            why = "liger_kernel does not import" if cuda else "Liger-Kernel needs CUDA (Triton)"
            missing += [("liger", *k, why) for k in cells]
            print(f"# liger rows skipped: {why}", flush=True)
        else:
            models["liger"] = liger
            names.append("liger")
            for m, c, b in [k for k in cells if k[0] == "eager"]:
                run("liger", m, c, b)
    # Compiled: cell by cell, the dynamic cache first (inductor default), then the static one (CUDA graphs).
    for m, c, b in sorted((k for k in cells if k[0] == "compiled"), key=lambda k: k[1] != "dynamic"):
        for name in names:
            run(name, m, c, b)
    table(results, missing, modes, batches, cuda, args, dtype, new)


class Ropes:
    """transformers' module-level apply_rotary_pos_emb as each model needs it: Liger's patch replaces it for every
    model of the process; the others get back the function they were patched with (graphs guard on it)."""

    def __init__(self):
        from transformers.models.llama import modeling_llama as ml
        self.ml, self.fns = ml, {}
        self.keep("hf")  # before Liger's patch: transformers' own, or our dispatcher, which serves both

    def keep(self, name):
        self.fns[name] = self.ml.apply_rotary_pos_emb

    def select(self, name):
        self.ml.apply_rotary_pos_emb = self.fns.get(name, self.fns.get("hf", self.ml.apply_rotary_pos_emb))


def table(results, missing, modes, batches, cuda, args, dtype, new):
    """One line per model, one column per (mode, cache, batch): the table of the closing note; then what was not
    measured and why."""
    cols = [(m, c, b) for m, c in modes for b in batches]
    dev = torch.cuda.get_device_name() if cuda else args.device
    print(f"\ndecode tok/s on {dev}, {args.shapes} {str(dtype).replace('torch.', '')}, {new} new tokens"
          f" (ratio to unpatched in the same cell in brackets; compiled: dynamic cache inductor 'default' on decode"
          f" steps, static cache generate's hook 'reduce-overhead')")
    print(f"{'':<12}" + "".join(f"  {m[:4]}-{c[:3]}-b{b:<3}   " for m, c, b in cols))
    for name in ("hf", "infinilm", "liger"):
        if any((name, *k) in results for k in cols):
            row = []
            for k in cols:
                v, hf = results.get((name, *k)), results.get(("hf", *k))
                row.append("-" if v is None else f"{v:.1f}" + (f" ({v / hf:.2f}x)" if hf else ""))
            print(f"{name:<12}" + "".join(f"  {c:>17}" for c in row))
    for name, m, c, b, why in missing:
        print(f"not measured: {name} {m} {c} batch {b}: {why}")
    print("all cells measured" if not missing else f"{len(missing)} cells not measured", flush=True)


if __name__ == "__main__":
    main()
