"""Host work of a patched model's compiled decode steps: no recompiles or graph breaks across steps, and no more
Python per step outside the compiled graph than the unpatched model, per layer (CUDA graphs replay the graph
itself for free; what is left on the host each step is this Python: guards, side effects the compiled frame
replays, generate's hooks). Counts Python calls, never times."""
import copy
import os
import sys

import pytest
import torch

transformers = pytest.importorskip("transformers")

import infinilm_torch  # noqa: E402
from test_hf_patch import make_model  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))
import bench_hf  # noqa: E402

_inside = [0]  # > 0 while a compiled graph runs: its own Python (an FX forward here) is not host overhead


def _backend(gm, example_inputs, **_):
    """A dynamo backend that runs the traced graph as is and marks when it runs: guards, the frame's side-effect
    replay and the bytecode around the graph are dynamo's, whichever backend compiles the graph."""
    def run(*args):
        _inside[0] += 1
        try:
            return gm.forward(*args)
        finally:
            _inside[0] -= 1
    return run


class _Calls:
    """Python function calls made outside compiled graphs while active (sys.setprofile)."""

    def __init__(self):
        self.n = 0

    def _prof(self, frame, event, arg):
        if event == "call" and not _inside[0]:
            self.n += 1

    def __enter__(self):
        sys.setprofile(self._prof)
        return self

    def __exit__(self, *exc):
        sys.setprofile(None)


def _static(model, ids, n):
    cfg = transformers.CompileConfig(fullgraph=True, backend=_backend, mode=None)
    cfg._compile_all_devices = True  # generate's own compile hook on CPU too
    model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=n, min_new_tokens=n,
                   pad_token_id=0, cache_implementation="static", max_cache_len=32, compile_config=cfg)


def _dynamic(model, ids, n):
    """Dynamic cache, decode steps compiled and the prefill eager: benchmarks/bench_hf.py's own switch
    (compiled_decode), on the marking backend."""
    bench_hf.compiled_decode(model, True, backend=_backend)
    try:
        model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=n,
                       min_new_tokens=n, pad_token_id=0, disable_compile=True)
    finally:
        bench_hf.compiled_decode(model, False)


def _per_step(run, model, ids, steps=8):
    """(Python calls per decode step outside the graph, graphs compiled, graph breaks) over a warmed-up generate."""
    counters = torch._dynamo.utils.counters
    run(model, ids, 3)  # compile (and, with a symbolic batch, recompile) before counting
    graphs, breaks = counters["stats"]["unique_graphs"], sum(counters["graph_break"].values())
    with torch.no_grad():
        with _Calls() as one:
            run(model, ids, 1)
        with _Calls() as many:
            run(model, ids, 1 + steps)
    return ((many.n - one.n) / steps, counters["stats"]["unique_graphs"] - graphs,
            sum(counters["graph_break"].values()) - breaks)


@pytest.mark.parametrize("run", [_static, _dynamic], ids=["static-cache-generate-hook", "dynamic-cache-decode"])
def test_compiled_decode_steps_cost_no_more_python_than_unpatched(run):
    """Batch 1 then 3 on one model (as the benchmark reuses it). Per decode step: no new graph, no graph break, and
    the Python calls outside the graph grow with the layer count no faster than the unpatched model's (a per-layer
    cost such as the q/k/v stash replayed as three setattrs per layer, or a failed module attribute lookup
    re-raised per norm, added 5 calls a layer) and exceed them by at most a few (generate's mask hook)."""
    torch._dynamo.reset()
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 32)
    calls = {}
    for layers in (2, 4):
        ref = make_model("llama", num_hidden_layers=layers)
        model = infinilm_torch.patch(copy.deepcopy(ref))
        for bsz in (1, 3):
            ids = torch.randint(3, 256, (bsz, 6))
            for name, m in (("hf", ref), ("infinilm", model)):
                n, graphs, breaks = _per_step(run, m, ids)
                assert (graphs, breaks) == (0, 0), (name, layers, bsz, graphs, breaks)
                calls[name, layers, bsz] = n
    for bsz in (1, 3):
        per_layer = {k: (calls[k, 4, bsz] - calls[k, 2, bsz]) / 2 for k in ("hf", "infinilm")}
        assert per_layer["infinilm"] <= per_layer["hf"], (bsz, calls)
        assert calls["infinilm", 4, bsz] <= calls["hf", 4, bsz] + 16, (bsz, calls)


def test_fused_qkv_leaves_no_side_effect_to_replay():
    """The q/k/v hand-out lives on the graph's own intermediate: a compiled forward writes nothing to the
    modules (dynamo would replay such writes in Python after every call) and k/v still come from one product."""
    ref = make_model("llama", num_hidden_layers=2)
    model = infinilm_torch.patch(copy.deepcopy(ref))
    seen = []

    def backend(gm, example_inputs):
        seen.append(sum(1 for n in gm.graph.nodes if n.op == "call_function" and "linear" in str(n.target)))
        return gm.forward

    torch._dynamo.reset()
    ids = torch.randint(3, 256, (2, 5))
    with torch.no_grad():
        got = torch.compile(model.forward, fullgraph=True, backend=backend)(ids).logits
        want = ref(ids).logits
    torch.testing.assert_close(got, want, atol=1e-4 * want.abs().max().item(), rtol=1e-4)
    assert seen == [2 * 4 + 1], seen
    attn = model.model.layers[0].self_attn
    assert set(vars(attn._infinilm_qkv)) == {"w", "b", "sizes", "key"}
    for lin in (attn.q_proj, attn.k_proj, attn.v_proj):
        assert not any(isinstance(v, torch.Tensor) for v in vars(lin).values() if v is not lin.weight)
