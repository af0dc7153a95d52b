"""torch.library.opcheck on every custom-op call a patched HF model makes, with the very arguments (shapes, strides,
dtypes, views) of a real generate() over a dynamic and a static cache: schemas declare each mutated input, outputs
do not alias inputs, fake kernels give the real outputs' shapes, strides and dtypes (what torch.compile and CUDA
graph trees rely on)."""
import copy

import pytest
import torch

transformers = pytest.importorskip("transformers")

import infinilm_torch  # noqa: E402
from infinilm_torch.hf import attention, layers  # noqa: E402
from test_hf_patch import GREEDY, make_model  # noqa: E402

DEV = "cuda" if torch.cuda.is_available() else "cpu"


class _Recorder:
    """Stands in for a namespace of ops: records (op name, cloned args) of each call, then calls the op."""

    def __init__(self, ns, calls):
        self._ns, self._calls = ns, calls

    def __getattr__(self, name):
        fn = getattr(self._ns, name)

        def call(*args):
            self._calls.append((name, [_copy(a) for a in args]))
            return fn(*args)
        return call


def _copy(a):
    """A copy with the same shape, strides and storage offset (views stay views of a base of their own)."""
    if not isinstance(a, torch.Tensor):
        return a
    base = a.untyped_storage()
    out = torch.empty(0, dtype=a.dtype, device=a.device)
    out.set_(base.clone(), a.storage_offset(), a.shape, a.stride())
    return out


def _recorded_calls(family, dtype, cache, monkeypatch):
    calls = []
    monkeypatch.setattr(layers, "_ops", _Recorder(torch.ops.infinilm, calls))
    monkeypatch.setattr(attention, "ops", _Recorder(infinilm_torch.ops, calls))
    model = infinilm_torch.patch(copy.deepcopy(make_model(family, head_dim=64, hidden_size=256,
                                                          intermediate_size=384)).to(DEV, dtype))
    ids = torch.randint(3, 256, (3, 7), device=DEV)
    # Eager (disable_compile): transformers compiles a static cache's forward on CUDA, and inside that trace the
    # recorder would see fake tensors, not the real arguments.
    extra = {} if cache == "dynamic" else {"cache_implementation": "static", "max_cache_len": 37,
                                           "disable_compile": True}
    with torch.no_grad():
        model.generate(ids, attention_mask=torch.ones_like(ids), **{**GREEDY, "max_new_tokens": 3,
                                                                      "min_new_tokens": 3}, **extra)
    return calls


@pytest.mark.parametrize("family", ["llama", "qwen2"])
@pytest.mark.parametrize("cache", ["dynamic", "static"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_opcheck_the_calls_of_a_patched_generate(family, cache, dtype, monkeypatch):
    calls = _recorded_calls(family, dtype, cache, monkeypatch)
    seen = {}
    for name, args in calls:  # one call of each op and argument layout
        key = (name, tuple((tuple(a.shape), a.stride(), a.dtype) if isinstance(a, torch.Tensor) else a
                           for a in args))
        seen.setdefault(key, (name, args))
    names = {name for name, _ in seen.values()}
    assert {"rms_norm", "fused_add_rms_norm", "rotary_embedding", "silu_and_mul", "paged_attention_prefill",
            "paged_attention_decode"} <= names, names
    for name, args in seen.values():
        torch.library.opcheck(getattr(torch.ops.infinilm, name).default, tuple(args))
