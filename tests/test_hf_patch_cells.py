"""Compiled cells of the HF matrix (family x cache x compile mode over batch 1, 3, 8, 32 on one model), each run in
a child process: a crash (a signal in inductor's launcher, a CUDA-graph fault) fails that cell with its signal
and stderr and leaves the other cells running. Also diagnosis variants of a crashed cell (inductor options, one
patched part at a time left unpatched, the unpatched model itself) and a CPU test of the crash reporting.

Child: ``python tests/test_hf_patch_cells.py '<json spec>'`` prints one ``CELL {json}`` line when a cell starts
and one when it ends; the parent reads them, so cells after a crash run again in a fresh child.
"""
import copy
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
SHAPE = dict(hidden_size=256, intermediate_size=384)  # 4 heads of 64 (the CUDA kernels' sizes), 2 kv heads
RECOMPILE_LIMIT = 8  # one model over 4 batch sizes: a few graphs per step kind; a recompile per step exceeds it
CELL_TIMEOUT_S = float(os.environ.get("INFINILM_HF_CELL_TIMEOUT", "240"))
# What a crashed cell is run again with, each in its own child: answers "ours or torch's" in one run.
VARIANTS = ["no_static_launcher", "no_cudagraph_trees", "no_graph_partition", "backend_cudagraphs",
            "no_part:attention", "no_part:rms_norm", "no_part:rope", "no_part:swiglu", "no_part:fused_add_norm",
            "no_part:qkv",
            "unpatched"]


def cell_model(family, device, dtype=torch.float32, **overrides):
    from test_hf_patch_matrix import family_model
    if family == "qwen3":
        overrides = {"head_dim": 64, **overrides}
    return family_model(family, torch.float32, **{**SHAPE, **overrides}).to(device=device, dtype=dtype)


def cell_prompt(batch, length=8):
    """Random ids; batches 3 and 32 have rows 1, 3, .. left-padded by 1..3 tokens, batches 1 and 8 none: every
    step kind (our kernels and the sdpa fallback of padded rows) meets two batch sizes, so a compiled forward
    recompiles with a symbolic batch for both."""
    ids = torch.randint(3, 256, (batch, length))
    mask = torch.ones_like(ids)
    for r in range(1, batch, 2) if batch in (3, 32) else ():
        mask[r, : 1 + r % 3] = 0
    ids[mask == 0] = 0
    return ids, mask


def cuda_limits_on_cpu():
    """On a CPU dry run, hold the kernels to the head sizes and layout CUDA has (as the CUDA file's fixture)."""
    from infinilm_torch.hf import attention
    attention.LAYOUT["cpu"] = attention.LAYOUT["cuda"]
    attention.HEAD_DIMS["cpu"] = attention.HEAD_DIMS["cuda"]


def generate_kwargs(model, mode, cache, device):
    """generate() kwargs of a mode; a compiled forward is installed on the model (popped by the caller).
    auto-compile: generate's own compile hook for a static cache (transformers' CompileConfig with fullgraph:
    mode "reduce-overhead", decode steps only), and torch.compile(model.forward, fullgraph=True) (mode default)
    for a dynamic one, which generate does not compile; reduce-overhead: torch.compile(model.forward,
    fullgraph=True, mode="reduce-overhead") (prefill and decode in CUDA graphs) for both caches. On the CPU:
    aot_eager, no CUDA graphs."""
    import transformers
    kw = {} if cache == "dynamic" else {"cache_implementation": "static", "max_cache_len": 48}
    if mode == "eager":
        return {**kw, "disable_compile": True}
    backend = {} if device == "cuda" else {"backend": "aot_eager"}
    graphs = device == "cuda" and _BACKEND[0] is None  # inductor's CUDA graphs (the mode) apply
    if _BACKEND[0] is not None:
        backend = {"backend": _BACKEND[0]}
    if mode == "auto-compile" and cache == "static":
        cfg = transformers.CompileConfig(fullgraph=True, mode="reduce-overhead" if graphs else "default", **backend)
        cfg._compile_all_devices = True
        return {**kw, "compile_config": cfg}
    torch_mode = {"mode": "reduce-overhead"} if mode == "reduce-overhead" and graphs else {}
    model.forward = torch.compile(model.forward, fullgraph=True, **torch_mode, **backend)
    return {**kw, "disable_compile": True}


_BACKEND = [None]  # a torch.compile backend replacing inductor (variant backend_cudagraphs)


def _apply_variant(variant):
    """Inductor options of a variant (before any compile); returns patch() parts for the no_part variants."""
    cfg = torch._inductor.config
    if variant == "backend_cudagraphs":  # CUDA graph trees over aot_eager: no Triton kernels, no launcher
        _BACKEND[0] = "cudagraphs"
    if variant == "no_static_launcher" and hasattr(cfg, "use_static_cuda_launcher"):
        cfg.use_static_cuda_launcher = False
    elif variant == "no_cudagraph_trees":
        cfg.triton.cudagraph_trees = False
    elif variant == "no_graph_partition" and hasattr(cfg, "graph_partition"):
        cfg.graph_partition = False
    if variant and variant.startswith("no_part:"):
        return {variant.split(":", 1)[1]: False}
    return {}


def _stage(what):
    """The child's last stage before a crash ends up in the parent's report."""
    if _IN_CHILD:
        print("STAGE " + what, flush=True)


_IN_CHILD = False


def run_cell(family, cache, mode, device, batches, variant=None, bf16=False):
    """fp32: the patched (compiled) model's greedy tokens equal the eager unpatched model's at every batch size
    (rows 1, 3, .. left-padded), one model across the batches, never the recompile limit. bf16 (llama in the
    compiled modes): the compiled model's first two steps' logits equal the eager patched model's to bf16
    rounding. Returns {"graphs": n}; raises on a mismatch."""
    import infinilm_torch
    from test_hf_patch import GREEDY
    parts = _apply_variant(variant)
    torch._dynamo.reset()
    counters = torch._dynamo.utils.counters
    counters.clear()
    ref = cell_model(family, device)
    model = copy.deepcopy(ref) if variant == "unpatched" else infinilm_torch.patch(copy.deepcopy(ref), **parts)
    gen = dict(GREEDY, max_new_tokens=6, min_new_tokens=6)
    with torch._dynamo.config.patch(recompile_limit=RECOMPILE_LIMIT, fail_on_recompile_limit_hit=True), \
            torch.no_grad():
        kw = generate_kwargs(model, mode, cache, device)
        for batch in batches:
            ids, mask = (t.to(device) for t in cell_prompt(batch))
            want = ref.generate(ids, attention_mask=mask, **gen, disable_compile=True)
            _stage(f"fp32 batch {batch}, {torch._dynamo.utils.counters['stats'].get('unique_graphs', 0)} graphs so far")
            got = model.generate(ids, attention_mask=mask, **gen, **kw)
            assert torch.equal(got, want), f"{family} {cache} {mode} batch {batch}: tokens differ\n{got}\n{want}"
        graphs = counters["stats"].get("unique_graphs", 0)
        assert graphs <= (0 if mode == "eager" else RECOMPILE_LIMIT), f"{graphs} graphs"
        model.__dict__.pop("forward", None)
        if bf16 and mode != "eager":
            _bf16_compiled_matches_eager(ref, mode, cache, device, parts)
    return {"graphs": graphs}


def _bf16_compiled_matches_eager(ref, mode, cache, device, parts):
    import infinilm_torch
    from test_hf_patch import GREEDY
    torch._dynamo.reset()
    ours16 = infinilm_torch.patch(copy.deepcopy(ref).to(torch.bfloat16), **parts)
    ids, mask = (t.to(device) for t in cell_prompt(3, 16))
    one = dict(GREEDY, max_new_tokens=2, min_new_tokens=2, return_dict_in_generate=True, output_logits=True)
    extra = {} if cache == "dynamic" else {"cache_implementation": "static", "max_cache_len": 48}
    eager16 = ours16.generate(ids, attention_mask=mask, **one, **extra, disable_compile=True).logits
    kw = generate_kwargs(ours16, mode, cache, device)
    _stage("bf16 batch 3")
    out = ours16.generate(ids, attention_mask=mask, **one, **kw).logits
    ours16.__dict__.pop("forward", None)
    for got, want in zip(out, eager16):
        assert torch.isfinite(got).all()
        want = want.float()
        torch.testing.assert_close(got.float(), want, atol=0.05 * want.abs().max().item(), rtol=0.05)


# ---- parent side ---------------------------------------------------------------------------------------------


def _signal_name(rc):
    if rc is not None and rc < 0:
        try:
            return signal.Signals(-rc).name
        except ValueError:
            return f"signal {-rc}"
    return None


def _crash_excerpt(stderr, limit=3000):
    """The faulthandler dump's current thread (where the crash is), else the end of stderr."""
    at = stderr.find("Fatal Python error")
    if at >= 0:
        cur = stderr.find("Current thread", at)
        head = stderr[at:at + 200].split("\n", 1)[0]
        return (head + "\n" + stderr[cur:cur + limit]) if cur >= 0 else stderr[at:at + limit]
    return stderr[-limit:]


def run_cells(cells, device, seed, variant=None, bf16_families=(), batches=(1, 3, 8, 32), script=None):
    """Run cells [(family, cache, mode)] in child processes, in order, a fresh child after any crash or timeout.
    Returns {cell: {"status": "ok"|"fail"|"crash"|"timeout", ...}}."""
    cells = [tuple(c) for c in cells]
    results, remaining = {}, list(cells)
    # tests/ and the repository root (an in-place build is imported from there, as `python -m pytest` does)
    path = (HERE, os.path.dirname(HERE), os.environ.get("PYTHONPATH"))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in path if p)}
    env.setdefault("TORCHINDUCTOR_COMPILE_THREADS", "4")  # four pytest workers share the host's cores
    while remaining:
        spec = dict(cells=remaining, device=device, seed=seed, variant=variant, bf16_families=list(bf16_families),
                    batches=list(batches))
        cmd = [sys.executable, "-X", "faulthandler", script or os.path.abspath(__file__), json.dumps(spec)]
        proc = subprocess.Popen(cmd, env=env, cwd=os.path.dirname(HERE), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        timed_out = False
        try:
            out, err = proc.communicate(timeout=CELL_TIMEOUT_S * len(remaining))
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
            timed_out = True
        started, stage = None, None
        for line in out.splitlines():
            if line.startswith("STAGE "):
                stage = line[6:]
            if not line.startswith("CELL "):
                continue
            rec = json.loads(line[5:])
            cell = tuple(rec.pop("cell"))
            if rec["status"] == "start":
                started = cell
            else:
                results[cell], started = rec, None
        if started is None and not any(c in results for c in remaining):
            started = remaining[0]  # the child died before its first cell (import, CUDA init)
        if started is not None:
            results[started] = {"status": "timeout" if timed_out else "crash", "rc": proc.returncode,
                                "signal": _signal_name(proc.returncode), "stage": stage,
                                "stderr": _crash_excerpt(err)}
        remaining = [c for c in remaining if c not in results]
    return results


def summary(results):
    lines = []
    for cell, r in results.items():
        what = r["status"]
        if what in ("crash", "timeout"):
            what += f" rc={r['rc']} {r['signal'] or ''} at: {r.get('stage')}"
        elif what == "fail":
            what += ": " + r["error"].splitlines()[0][:300]
        lines.append(f"{'/'.join(cell)}: {what}"
                     f"{' (%.0f s)' % r['seconds'] if 'seconds' in r else ''}")
    return "\n".join(lines)


def diagnose(cell, device, seed, batches=(1, 3, 8, 32), jobs=4, script=None):
    """A crashed cell once per variant, `jobs` children at a time; {variant: result}."""
    from concurrent.futures import ThreadPoolExecutor
    out = {}
    with ThreadPoolExecutor(jobs) as pool:
        futs = {v: pool.submit(run_cells, [cell], device, seed, v, (), batches, script) for v in VARIANTS}
        for v, f in futs.items():
            r = f.result()[tuple(cell)]
            out[v] = {**r, "variant": v}
    return out


def _child(spec):
    import random
    global _IN_CHILD
    _IN_CHILD = True
    if spec["device"] == "cpu":
        cuda_limits_on_cpu()
    for family, cache, mode in spec["cells"]:
        torch.manual_seed(spec["seed"])
        random.seed(spec["seed"])
        print("CELL " + json.dumps({"cell": [family, cache, mode], "status": "start"}), flush=True)
        t0 = time.perf_counter()
        rec = {"cell": [family, cache, mode], "variant": spec.get("variant")}
        try:
            rec.update(run_cell(family, cache, mode, spec["device"], spec["batches"],
                                spec.get("variant"), family in spec.get("bf16_families", ())), status="ok")
        except Exception as e:  # noqa: BLE001 - reported to the parent, which fails the test
            import traceback
            rec.update(status="fail", error=f"{type(e).__name__}: {e}\n{traceback.format_exc()[-3000:]}")
        rec["seconds"] = time.perf_counter() - t0
        print("CELL " + json.dumps(rec), flush=True)


# ---- the reporting itself, on the CPU ------------------------------------------------------------------------

_CRASHER = """
import json, os, signal, sys
spec = json.loads(sys.argv[1])
for cell in spec["cells"]:
    print("CELL " + json.dumps({"cell": cell, "status": "start"}), flush=True)
    if cell[0] == "crash" and spec["variant"] != "no_static_launcher":
        print("STAGE batch 8", flush=True)
        os.kill(os.getpid(), signal.SIGSEGV)
    print("CELL " + json.dumps({"cell": cell, "status": "ok"}), flush=True)
"""


def test_a_crashing_cell_is_reported_and_the_rest_run(tmp_path):
    script = tmp_path / "crasher.py"
    script.write_text(_CRASHER)
    cells = [("a", "x", "y"), ("crash", "x", "y"), ("b", "x", "y")]
    res = run_cells(cells, "cpu", 0, script=str(script))
    assert res[("a", "x", "y")]["status"] == "ok" and res[("b", "x", "y")]["status"] == "ok"
    crash = res[("crash", "x", "y")]
    assert crash["status"] == "crash" and crash["signal"] == "SIGSEGV", crash
    assert "Fatal Python error: Segmentation fault" in crash["stderr"], crash["stderr"]
    assert "crash/x/y: crash rc=-11 SIGSEGV at: batch 8" in summary(res)
    diag = diagnose(("crash", "x", "y"), "cpu", 0, script=str(script))
    assert set(diag) == set(VARIANTS) and diag["no_static_launcher"]["status"] == "ok", diag
    assert all(d["status"] == "crash" for v, d in diag.items() if v != "no_static_launcher"), diag


if __name__ == "__main__":
    sys.path.insert(0, HERE)
    _child(json.loads(sys.argv[1]))
