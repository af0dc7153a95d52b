"""HF transformers generate unpatched, with infinilm_torch.patch and with Liger-Kernel, eager and compiled, one table.

    python benchmarks/bench_hf.py                                   # CPU, tiny random Llama
    python benchmarks/bench_hf.py --device cuda --shapes llama-3.2-1b --batch 1 32

Random weights with the model's shapes. "prefill ms" is one generate() of a single token; "decode tok/s" is
batch * (new_tokens - 1) / (time of new_tokens tokens - time of 1 token). Modes: eager with transformers'
dynamic cache and with a static cache; "compiled" with a static cache is generate's own compile hook (fullgraph,
mode="reduce-overhead": CUDA graphs, on CUDA; inductor "default" on CPU), with a dynamic cache
``torch.compile(model.forward, fullgraph=True, mode="reduce-overhead", dynamic=True)`` (dynamic=True: one graph
for both batch sizes, so compiling stays within the time budget). Liger rows (``apply_liger_kernel_to_llama`` with
rope, rms_norm and swiglu, as Liger patches inference) run only where ``liger_kernel`` imports (Triton, CUDA),
after the other rows: its rope patch replaces transformers' module function for every model in the process.
``--budget-s``: compiled cells not started by then are skipped with a note (compiling a 1B model takes a while).
"""
import argparse
import copy
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


def compiled_forward(model, on: bool, cuda: bool):
    """Install (or remove) torch.compile(model.forward) for the compiled dynamic-cache rows."""
    model.__dict__.pop("forward", None)
    if on:
        mode = "reduce-overhead" if cuda else "default"
        model.forward = torch.compile(model.forward, fullgraph=True, mode=mode, dynamic=True)


def liger_model(base):
    """A copy of base patched by Liger-Kernel 0.8.5 the way it patches inference, or None where it is missing."""
    try:
        from liger_kernel.transformers import apply_liger_kernel_to_llama
    except Exception as e:  # noqa: BLE001 - not installed, or no Triton/CUDA
        print(f"# liger rows skipped: liger_kernel does not import ({type(e).__name__}: {str(e)[:120]})", flush=True)
        return None
    model = copy.deepcopy(base)
    apply_liger_kernel_to_llama(rope=True, rms_norm=True, swiglu=True, cross_entropy=False,
                                fused_linear_cross_entropy=False, model=model)
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
                    help="rows to run (compiling takes minutes on a 1B model: split runs over calls if needed)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--budget-s", type=float, default=270.0,
                    help="skip compiled cells not started within this many seconds of the start (0: no limit)")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    ap.add_argument("--clock", default="wall", choices=["wall", "cpu"],
                    help="cpu: this process's CPU time, steadier than wall time on a shared CPU machine")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    cuda = args.device.startswith("cuda")
    dtype = getattr(torch, args.dtype or ("bfloat16" if cuda else "float32"))
    batches = args.batch or ([1, 32] if cuda else [1, 4])
    plen = args.prompt_len or (128 if cuda else 32)
    new = args.new_tokens or (64 if cuda else 32)

    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    base = build(args.shapes, args.device, dtype)
    patched = infinilm_torch.patch(copy.deepcopy(base))
    print(f"# {args.shapes} {str(dtype).replace('torch.', '')} on {args.device}"
          f"{' (' + torch.cuda.get_device_name() + ')' if cuda else ''}, prompt {plen}, {new} new tokens,"
          f" {torch.get_num_threads()} CPU threads, {args.clock} clock, torch {torch.__version__}, transformers {__import__('transformers').__version__}")
    # "vs hf": against the unpatched model in the same mode and cache; "vs hf eager": against unpatched eager with
    # transformers' default dynamic cache (when that row ran), the usual baseline.
    head = ("model", "mode", "cache", "batch", "prefill ms", "decode tok/s", "vs hf", "vs hf eager")
    widths = [8, 8, 7, 5, 10, 12, 6, 11]
    fmt = "  ".join(f"{{:<{w}}}" if i < 3 else f"{{:>{w}}}" for i, w in enumerate(widths))
    print(fmt.format(*head))
    print("  ".join("-" * w for w in widths), flush=True)
    modes = [MODES[m] for m in (["eager-dynamic", "eager-static"] if args.no_compile else args.modes)]
    prompts = {bsz: torch.randint(3, base.config.vocab_size, (bsz, plen), device=args.device) for bsz in batches}
    cache_len = plen + new
    results = {}
    start = time.perf_counter()

    def run(name, model, cells):
        torch._dynamo.reset()  # compiled graphs are kept across one model's cells (recompiles per batch size)
        for mode, cache in cells:
            for bsz in batches:
                ids = prompts[bsz]
                if mode == "compiled" and args.budget_s and time.perf_counter() - start > args.budget_s:
                    print(f"{name} {mode} {cache} batch {bsz}: skipped (--budget-s {args.budget_s:.0f} spent)", flush=True)
                    continue
                compiled_forward(model, mode == "compiled" and cache == "dynamic", cuda)
                try:
                    timed_generate(model, ids, new, mode, cache, cache_len, 1)  # warm-up (and compile)
                    t1 = timed_generate(model, ids, 1, mode, cache, cache_len, args.repeats, clock)
                    tn = timed_generate(model, ids, new, mode, cache, cache_len, args.repeats, clock)
                except Exception as e:  # noqa: BLE001 - a row that fails is reported, the table goes on
                    print(f"{name} {mode} {cache} batch {bsz}: FAILED {type(e).__name__}: {str(e)[:300]}", flush=True)
                    continue
                finally:
                    compiled_forward(model, False, cuda)
                decode = bsz * (new - 1) / max(tn - t1, 1e-9)
                results[(name, mode, cache, bsz)] = decode
                ref = results.get(("hf", mode, cache, bsz), decode)
                eager = results.get(("hf", "eager", "dynamic", bsz))
                print(fmt.format(name, mode, cache, str(bsz), f"{1e3 * t1:.1f}", f"{decode:.1f}",
                                 f"{decode / ref:.2f}x", f"{decode / eager:.2f}x" if eager else "-"), flush=True)

    # Eager cells of both models first, then compiled ones, so that a spent --budget-s leaves same-cell pairs.
    eager_cells = [mc for mc in modes if mc[0] == "eager"]
    compiled_cells = [mc for mc in modes if mc[0] == "compiled"]
    for cells in (eager_cells, compiled_cells):
        run("hf", base, cells)
        run("infinilm", patched, cells)
    del patched
    liger = liger_model(base) if cuda else print("# liger rows skipped: Liger-Kernel needs CUDA (Triton)")
    if liger is not None:  # last: its rope patch is module-wide
        run("liger", liger, eager_cells + compiled_cells)
    # One line per model, one column per (mode, cache, batch): the table of the closing note.
    cols = [(m, c, b) for m, c in modes for b in batches]
    dev = torch.cuda.get_device_name() if cuda else args.device
    print(f"\ndecode tok/s on {dev}, {args.shapes} {str(dtype).replace('torch.', '')}, {new} new tokens"
          f" (ratio to unpatched in the same cell in brackets)")
    print(f"{'':<12}" + "".join(f"  {m[:4]}-{c[:3]}-b{b:<3}   " for m, c, b in cols))
    for name in ("hf", "infinilm", "liger"):
        if any((name, *k) in results for k in cols):
            cells = []
            for k in cols:
                v, hf = results.get((name, *k)), results.get(("hf", *k))
                cells.append("-" if v is None else f"{v:.1f}" + (f" ({v / hf:.2f}x)" if hf else ""))
            print(f"{name:<12}" + "".join(f"  {c:>17}" for c in cells))


if __name__ == "__main__":
    main()
