"""patch/unpatch one HF model instance, and class-level apply_infinilm_to_{llama,qwen2,qwen3,mistral} with reverts.

Instance patching binds the replacement forwards on that model's modules only (so a patched and an unpatched
model can run side by side); class patching replaces the forwards on the modeling classes, like Liger's
``apply_liger_kernel_to_llama``. Both use the same replacement functions (``layers.py``) and the "infinilm"
attention implementation (``attention.py``). Qwen3's per-head q/k RMSNorms are Qwen3RMSNorm modules, so the
rms_norm part covers them. The "qkv" part (instance patching only) gives q/k/v_proj one weight tensor and one
product per attention (:class:`layers.FusedQKV`). Inference only: our ops have no autograd formulas.
"""
from __future__ import annotations

import importlib
import inspect
import weakref

import torch

from infinilm_torch.hf import attention, layers
from infinilm_torch.hf.hooks import MISSING as _MISSING, bind as _bind
from infinilm_torch.hf.hooks import hook_generate_inputs, prepare_inputs_for_generation, round_static_cache

FAMILIES = {
    "llama": ("transformers.models.llama.modeling_llama", "Llama"),
    "qwen2": ("transformers.models.qwen2.modeling_qwen2", "Qwen2"),
    "mistral": ("transformers.models.mistral.modeling_mistral", "Mistral"),
    "qwen3": ("transformers.models.qwen3.modeling_qwen3", "Qwen3"),
}
PARTS = ("rms_norm", "rope", "swiglu", "fused_add_norm", "attention", "qkv")
_CLASS_SUFFIX = {"rms_norm": "RMSNorm", "rope": "RotaryEmbedding", "swiglu": "MLP", "fused_add_norm": "DecoderLayer"}
_FORWARDS = {
    "rms_norm": layers.rms_norm_forward,
    "rope": layers.rotary_forward,
    "swiglu": layers.mlp_forward,
    "fused_add_norm": layers.decoder_layer_forward,
}

_class_saved: dict = {}  # (cls, attr) -> the class's own attribute before patching (or a sentinel)
_class_state: dict = {}  # family -> parts patched at class level
_rope_users: dict = {}  # family -> users of the rope dispatcher: "class" and patched model objects (weakly)


def _module(family: str):
    return importlib.import_module(FAMILIES[family][0])



def _classes(family: str) -> dict:
    mod, prefix = _module(family), FAMILIES[family][1]
    return {part: getattr(mod, prefix + suffix, None) for part, suffix in _CLASS_SUFFIX.items()}


def _causal_lm_class(family: str):
    return getattr(_module(family), FAMILIES[family][1] + "ForCausalLM", None)


def _original(cls, attr: str):
    saved = _class_saved.get((cls, attr))
    return getattr(cls, attr) if saved is None else (getattr(super(cls, cls), attr) if saved is _MISSING else saved)


def _layer_meta(cls) -> tuple[list, bool]:
    """Positional parameter names of the original decoder-layer forward after hidden_states, and whether it
    returns a tuple (transformers < 4.54) or a tensor."""
    sig = inspect.signature(_original(cls, "forward"))
    names = [p.name for p in sig.parameters.values() if p.kind is p.POSITIONAL_OR_KEYWORD][2:]
    return names, "tuple" in str(sig.return_annotation).lower()


def _rope_acquire(family: str, user) -> None:
    mod = _module(family)
    users = _rope_users.setdefault(family, weakref.WeakSet())
    fn = getattr(mod, "apply_rotary_pos_emb", None)
    if fn is not None and not hasattr(fn, "_infinilm_orig"):
        mod.apply_rotary_pos_emb = layers.make_rope_dispatch(fn)
    users.add(user)


def _rope_release(family: str, user) -> None:
    """Put the module's apply_rotary_pos_emb back once no class patch and no patched model uses it (a patched
    model copied with deepcopy is not counted; its rotary forward sees the restored function and falls back)."""
    users = _rope_users.setdefault(family, weakref.WeakSet())
    users.discard(user)
    mod = _module(family)
    fn = getattr(mod, "apply_rotary_pos_emb", None)
    if len(users) == 0 and hasattr(fn, "_infinilm_orig"):
        mod.apply_rotary_pos_emb = fn._infinilm_orig


# ---- class level ----------------------------------------------------------------------------------------------


def _set_class_attr(cls, attr: str, value) -> None:
    if (cls, attr) not in _class_saved:
        _class_saved[(cls, attr)] = cls.__dict__.get(attr, _MISSING)
    setattr(cls, attr, value)


def _restore_class(cls) -> None:
    for (c, attr), saved in list(_class_saved.items()):
        if c is cls:
            if saved is _MISSING:
                delattr(cls, attr)
            else:
                setattr(cls, attr, saved)
            del _class_saved[(c, attr)]


def apply_infinilm_to(family: str, model=None, **parts) -> None:
    """Patch the modeling classes of ``family``; parts default to all of PARTS (pass e.g. ``rope=False``)."""
    unknown = set(parts) - set(PARTS)
    if unknown:
        raise ValueError(f"apply_infinilm_to_{family}: unknown parts {sorted(unknown)}; choose from {PARTS}")
    on = {p: parts.get(p, True) for p in PARTS}
    attention.register()
    active = _class_state.setdefault(family, set())
    for part, cls in _classes(family).items():
        if not on[part] or cls is None or part in active:
            continue
        _set_class_attr(cls, "_infinilm_orig_forward", cls.forward)
        if part == "fused_add_norm":
            names, returns_tuple = _layer_meta(cls)
            _set_class_attr(cls, "_infinilm_arg_names", names)
            _set_class_attr(cls, "_infinilm_returns_tuple", returns_tuple)
        if part == "swiglu":
            _set_class_attr(cls, "_apply", layers.mlp_apply)
        if part == "rope":
            _rope_acquire(family, cls)
        _set_class_attr(cls, "forward", _FORWARDS[part])
        active.add(part)
    lm = _causal_lm_class(family)
    if on["attention"] and lm is not None and "attention" not in active:
        # Same per-step all-ones mask drop as patch(): without it a compiled forward hands every step to sdpa.
        _set_class_attr(lm, "_infinilm_orig_prepare", lm.prepare_inputs_for_generation)
        _set_class_attr(lm, "prepare_inputs_for_generation", prepare_inputs_for_generation)
        active.add("attention")
    if model is not None:
        patch(model, **parts)


def revert_infinilm_to(family: str) -> None:
    """Undo :func:`apply_infinilm_to` for ``family``: the classes get back their exact original attributes."""
    active = _class_state.pop(family, set())
    for part, cls in _classes(family).items():
        if part in active and cls is not None:
            _restore_class(cls)
            if part == "rope":
                _rope_release(family, cls)
    lm = _causal_lm_class(family)
    if "attention" in active and lm is not None:
        _restore_class(lm)



def apply_infinilm_to_llama(model=None, **parts) -> None:
    """Make LlamaForCausalLM (all instances) use torch.ops.infinilm; see :func:`apply_infinilm_to`."""
    apply_infinilm_to("llama", model, **parts)


def apply_infinilm_to_qwen2(model=None, **parts) -> None:
    """Make Qwen2ForCausalLM (all instances) use torch.ops.infinilm; see :func:`apply_infinilm_to`."""
    apply_infinilm_to("qwen2", model, **parts)


def apply_infinilm_to_mistral(model=None, **parts) -> None:
    """Make MistralForCausalLM (all instances) use torch.ops.infinilm; see :func:`apply_infinilm_to`."""
    apply_infinilm_to("mistral", model, **parts)


def apply_infinilm_to_qwen3(model=None, **parts) -> None:
    """Make Qwen3ForCausalLM (all instances, q/k norms included) use torch.ops.infinilm; see :func:`apply_infinilm_to`."""
    apply_infinilm_to("qwen3", model, **parts)


def revert_infinilm_to_llama() -> None:
    revert_infinilm_to("llama")


def revert_infinilm_to_qwen2() -> None:
    revert_infinilm_to("qwen2")


def revert_infinilm_to_mistral() -> None:
    revert_infinilm_to("mistral")


def revert_infinilm_to_qwen3() -> None:
    revert_infinilm_to("qwen3")


# ---- instance level -------------------------------------------------------------------------------------------


def _family_of(model) -> str:
    modules = {modname: family for family, (modname, _) in FAMILIES.items()}
    for m in model.modules():
        family = modules.get(type(m).__module__)
        if family is not None:
            return family
    raise TypeError(
        f"infinilm_torch.patch: {type(model).__name__} is not a Llama, Qwen2, Qwen3 or Mistral transformers model"
    )


def _set_attn_implementation(model, name: str) -> None:
    if hasattr(model, "set_attn_implementation"):
        try:
            model.set_attn_implementation(name)
            return
        except Exception:  # noqa: BLE001 - some versions validate more strictly; the config attribute suffices
            pass
    model.config._attn_implementation = name


def patch(model, **parts):
    """Make this transformers Llama/Qwen2/Qwen3/Mistral causal LM run on torch.ops.infinilm (in place; returns it).

    parts: rms_norm, rope, swiglu, fused_add_norm, attention, qkv (all True by default). Patch after loading the
    weights and before torch.compile; ``unpatch(model)`` restores the original forwards, weights layout and
    attention implementation.
    """
    if getattr(model, "_infinilm_patched", None) is not None:
        return model
    unknown = set(parts) - set(PARTS)
    if unknown:
        raise ValueError(f"infinilm_torch.patch: unknown parts {sorted(unknown)}; choose from {PARTS}")
    on = {p: parts.get(p, True) for p in PARTS}
    family = _family_of(model)
    classes = _classes(family)
    attention.register()
    state = {"family": family, "rope": False, "attn": None}
    attn_cls = getattr(_module(family), FAMILIES[family][1] + "Attention", None)
    for m in model.modules():
        if on["qkv"] and attn_cls is not None and type(m) is attn_cls:
            layers.fuse_qkv(m)
            _bind(m, "_apply", layers.qkv_apply)
        for part, cls in classes.items():
            if not on[part] or cls is None or type(m) is not cls:
                continue
            if part == "rope":
                if not layers.rope_supported(m.config):
                    continue
                layers.attach_rope_table(m, m.config)
                state["rope"] = True
            if part == "swiglu":
                layers.fuse_gate_up(m)
                _bind(m, "_apply", layers.mlp_apply)
            if part == "fused_add_norm":
                names, returns_tuple = _layer_meta(cls)
                _bind(m, "_infinilm_arg_names", names)
                _bind(m, "_infinilm_returns_tuple", returns_tuple)
            _bind(m, "_infinilm_orig_forward", _original(cls, "forward"))
            _bind(m, "forward", _FORWARDS[part])
    if state["rope"]:
        _rope_acquire(family, model)
    if on["attention"]:
        state["attn"] = getattr(model.config, "_attn_implementation", None)
        _set_attn_implementation(model, attention.NAME)
        round_static_cache(model)
        hook_generate_inputs(model)
    model._infinilm_patched = state
    return model


def unpatch(model):
    """Undo :func:`patch`: original bound forwards, separate gate/up weights, previous attention implementation."""
    state = getattr(model, "_infinilm_patched", None)
    if state is None:
        return model
    for m in model.modules():  # the model itself included (its static-cache hook)
        saved = m.__dict__.pop("_infinilm_saved", None)
        if saved is None:
            continue
        layers.unfuse_gate_up(m)
        layers.unfuse_qkv(m)
        if "_infinilm_cos_sin" in m._buffers:
            del m._buffers["_infinilm_cos_sin"]
            m._non_persistent_buffers_set.discard("_infinilm_cos_sin")
        for name, value in saved.items():
            if value is _MISSING:
                m.__dict__.pop(name, None)
            else:
                setattr(m, name, value)
    if state["rope"]:
        _rope_release(state["family"], model)
    if state["attn"] is not None:
        _set_attn_implementation(model, state["attn"])
    del model._infinilm_patched
    return model
