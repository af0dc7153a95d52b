"""Instance binding helpers and the generate() hooks a patched model gets: static caches sized for the kernels
(and allocated up front when the forward is compiled), all-ones step masks dropped, and a dynamic cache's sizes
marked dynamic for compiled forwards."""
from __future__ import annotations

import inspect
import types

import torch

from infinilm_torch.hf import attention

MISSING = object()  # "the module had no attribute of its own": restore by deleting


def bind(module, name: str, fn) -> None:
    saved = module.__dict__.setdefault("_infinilm_saved", {})
    if name not in saved:
        saved[name] = module.__dict__.get(name, MISSING)
    setattr(module, name, types.MethodType(fn, module) if isinstance(fn, types.FunctionType) else fn)


# The generate() hook that sizes static caches: ``_prepare_static_cache`` (transformers 5.x), ``_get_cache`` (4.x).
_STATIC_CACHE_HOOKS = ("_prepare_static_cache", "_get_cache")


def _forward_compiled(model) -> bool:
    """``model.forward`` was replaced by ``torch.compile(model.forward, ...)`` (the prefill then runs compiled)."""
    return getattr(model.__dict__.get("forward"), "_torchdynamo_orig_callable", None) is not None


def _head_shape(model):
    """(kv heads, head dim) of the decoder's attention for Cache.early_initialization, or None."""
    shape = getattr(model, "_get_static_cache_init_shape", None)
    if shape is not None:
        return shape()
    cfg = model.config.get_text_config(decoder=True) if hasattr(model.config, "get_text_config") else model.config
    heads = getattr(cfg, "num_key_value_heads", None) or getattr(cfg, "num_attention_heads", None)
    if not heads:
        return None
    return heads, getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads


def allocate_up_front(model, cache, batch_size) -> None:
    """Allocate a fresh static cache's tensors now when the forward is compiled: transformers allocates them
    lazily on the first update, which is then inside the compiled prefill, so under ``mode="reduce-overhead"``
    the cache lives in CUDA-graph outputs that the next replay overwrites (and stock transformers 5.17 with torch
    2.11 crashes there). Done eagerly they are marked static addresses, as generate's own compile path has them.
    Skipped under autocast (the cache takes the projections' dtype, unknown here) and for caches without
    ``early_initialization``."""
    init = getattr(cache, "early_initialization", None)
    layers_ = getattr(cache, "layers", None)
    if init is None or not layers_ or not isinstance(batch_size, int) or not _forward_compiled(model):
        return
    dev = model.device
    if torch.is_autocast_enabled(dev.type) or all(getattr(l, "is_initialized", True) for l in layers_):
        return
    shape = _head_shape(model)
    if shape is not None:
        init(batch_size=batch_size, num_heads=shape[0], head_dim=shape[1], dtype=model.dtype, device=dev)


def round_static_cache(model) -> None:
    """Round the static caches that ``generate`` builds for this model up to a multiple of
    ``attention.STATIC_CACHE_MULTIPLE`` tokens on devices whose kernels take power-of-two blocks (CUDA), so
    that every step runs on our kernels instead of falling back to sdpa. Extra slots are never attended to.
    With a compiled forward the cache is allocated up front (:func:`allocate_up_front`)."""
    for name in _STATIC_CACHE_HOOKS:
        orig = getattr(type(model), name, None)
        sig = inspect.signature(orig) if orig is not None else None
        if sig is None or "max_cache_len" not in sig.parameters:
            continue

        def sized(self, *args, _orig=orig, _sig=sig, **kwargs):
            bound = _sig.bind(self, *args, **kwargs)
            n = bound.arguments.get("max_cache_len")
            if isinstance(n, int) and attention.LAYOUT.get(self.device.type) == "head":
                m = attention.STATIC_CACHE_MULTIPLE
                bound.arguments["max_cache_len"] = -(-n // m) * m
            cache = _orig(*bound.args, **bound.kwargs)
            allocate_up_front(self, cache, bound.arguments.get("batch_size"))
            return cache

        bind(model, name, sized)
        return


def prepare_inputs_for_generation(self, *args, **kwargs):
    """generate()'s per-step inputs with an all-ones 2D attention mask dropped (checked here, outside any
    compiled forward): no padding means the kernels' causal pattern, which a compiled forward cannot prove from
    a mask tensor whose values it does not know, and then hands to sdpa. A dynamic cache's sizes are marked
    dynamic when the forward is compiled (see _mark_dynamic_cache_inputs). Runs every decode step: a static
    cache's step (its mask already 4D) costs two dict lookups and one attribute check here."""
    inputs = self._infinilm_orig_prepare(*args, **kwargs)
    if not isinstance(inputs, dict):
        return inputs
    mask = inputs.get("attention_mask")
    if (
        isinstance(mask, torch.Tensor) and mask.dim() == 2 and not torch.compiler.is_compiling()
        and getattr(self.config, "_attn_implementation", None) == attention.NAME and bool(mask.all())
    ):
        inputs["attention_mask"] = None
    if _forward_compiled(self) and not torch.compiler.is_compiling():
        _mark_dynamic_cache_inputs(inputs)  # only for torch.compile(model.forward): a few µs per layer
    return inputs


def _mark_dynamic_cache_inputs(inputs: dict) -> None:
    """With a dynamic cache every step has new batch/length sizes: mark them dynamic up front so a compiled forward
    (``torch.compile(model.forward)`` with ``dynamic=None``) builds one symbolic graph per kind of step instead of
    a static graph first and a dynamic one on the next size (twice the graphs: over torch's default recompile
    limit of 8 for a model reused across batch sizes with padded and unpadded batches)."""
    cache = inputs.get("past_key_values", inputs.get("cache"))
    layers_ = getattr(cache, "layers", None)
    if not layers_ or not any(c.__name__ == "DynamicLayer" for c in type(layers_[0]).__mro__):  # sliding ones too
        return
    mark = torch._dynamo.maybe_mark_dynamic
    for name in ("input_ids", "attention_mask", "position_ids"):
        t = inputs.get(name)
        if isinstance(t, torch.Tensor):
            for d in range(t.dim()):
                mark(t, d)
    for layer in layers_:
        for name in ("keys", "values"):
            t = getattr(layer, name, None)
            if isinstance(t, torch.Tensor) and t.dim() == 4:
                if not t.is_contiguous():
                    # A compiled prefill may leave the projection's transposed layout in the cache; later steps
                    # hold cat's contiguous output. One layout: no extra graph for the first decode step.
                    t = t.contiguous()
                    setattr(layer, name, t)
                mark(t, 0)
                mark(t, 2)


def hook_generate_inputs(model) -> None:
    orig = getattr(model, "prepare_inputs_for_generation", None)
    if getattr(type(model), "prepare_inputs_for_generation", None) is prepare_inputs_for_generation:
        return  # the class is patched (apply_infinilm_to_*): its hook serves this model already
    if orig is not None:
        bind(model, "_infinilm_orig_prepare", orig)
        bind(model, "prepare_inputs_for_generation", prepare_inputs_for_generation)
