"""Replacement forwards for HF Llama-family modules (RMSNorm, RoPE, SiLU-and-mul MLP, decoder layer) on torch.ops.infinilm.

Each ``*_forward`` has the signature of the module's own ``forward`` and is installed either on the class
(``apply_infinilm_to_*``) or on one instance (``patch(model)``). Every one falls back to plain PyTorch where
our op cannot express the case (mixed dtypes, unsupported rope types, unfused weights), so patching never
changes what a model computes, only how.
"""
from __future__ import annotations

import itertools
import sys

import torch
import torch.nn.functional as F

_ops = torch.ops.infinilm
_FLOATS = (torch.float32, torch.float16, torch.bfloat16)


def _kernels(op: str) -> dict:
    has = torch._C._dispatch_has_kernel_for_dispatch_key
    return {"cpu": has(f"infinilm::{op}", "CPU"), "cuda": has(f"infinilm::{op}", "CUDA")}


# Which devices each op has a kernel for, looked up once (torch.compile cannot trace the dispatcher query);
# a module on a device without the kernel keeps its transformers forward.
KERNELS = {op: _kernels(op) for op in ("rms_norm", "fused_add_rms_norm", "rotary_embedding", "silu_and_mul")}


def has_kernel(op: str, t: torch.Tensor) -> bool:
    return KERNELS[op].get(t.device.type, False)


# ---- RMSNorm -------------------------------------------------------------------------------------------------


def _eps(norm) -> float:
    # "eps" is looked up only where "variance_epsilon" is missing: under torch.compile a failed module attribute
    # lookup becomes a guard that re-runs Module.__getattr__ (and raises inside it) on every call, per norm.
    eps = getattr(norm, "variance_epsilon", None)
    return float(getattr(norm, "eps", 1e-6) if eps is None else eps)


def _norm_ok(norm, x: torch.Tensor) -> bool:
    w = getattr(norm, "weight", None)
    # HF multiplies in the weight's dtype; with mixed dtypes the output dtype differs from ours, so leave it to HF.
    return (
        isinstance(w, torch.Tensor) and w.dtype == x.dtype and x.dtype in _FLOATS and w.dim() == 1
        and has_kernel("rms_norm", x)
    )


def rms_norm_forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
    if not _norm_ok(self, hidden_states):
        return self._infinilm_orig_forward(hidden_states)
    return _ops.rms_norm(hidden_states, self.weight, _eps(self))


# ---- SiLU-and-mul MLP with a fused gate_up weight ------------------------------------------------------------


def _plain_linear(m) -> bool:
    return type(m) is torch.nn.Linear and m.weight.dtype in _FLOATS and type(m.weight) is torch.nn.Parameter


def fuse_rows(linears):
    """Concatenate plain Linear modules' weights (and biases) along the output dim into one tensor and make each
    module's parameters views of its row block, so one GEMM computes all of them. In-place updates of the
    parameters (load_state_dict, copy_) keep the fused tensor in sync. Returns ``(w, b)``, or None where the
    modules cannot share a product (not plain Linears, in_features / dtype / device differ, biases on some only,
    meta tensors)."""
    if any(m is None or not _plain_linear(m) for m in linears):
        return None
    ws = [m.weight for m in linears]
    if len({(w.shape[1], w.dtype, w.device) for w in ws}) != 1 or ws[0].device.type == "meta":
        return None
    if len({m.bias is None for m in linears}) != 1:
        return None
    with torch.no_grad():
        w = torch.cat(ws, 0)
        b = torch.cat([m.bias for m in linears], 0) if linears[0].bias is not None else None
        off = 0
        for m in linears:
            n = m.weight.shape[0]
            m.weight.data = w[off:off + n]
            if b is not None:
                m.bias.data = b[off:off + n]
            off += n
    return w, b


def unfuse_rows(linears) -> None:
    """Give the modules of :func:`fuse_rows` storage of their own again."""
    with torch.no_grad():
        for lin in linears:
            lin.weight.data = lin.weight.data.clone()
            if lin.bias is not None:
                lin.bias.data = lin.bias.data.clone()


def fuse_gate_up(mlp) -> bool:
    """Store gate_proj/up_proj as two halves of one ``[2I, H]`` tensor (:func:`fuse_rows`), so one GEMM feeds
    silu_and_mul; ``.to()``/``.half()`` re-fuse through the patched ``_apply``."""
    mlp._infinilm_gate_up = None  # requested; _apply retries after every dtype/device move
    g, u = getattr(mlp, "gate_proj", None), getattr(mlp, "up_proj", None)
    if g is None or u is None or g.weight.shape != u.weight.shape:  # silu_and_mul splits the product in halves
        return False
    mlp._infinilm_gate_up = fuse_rows([g, u])
    return mlp._infinilm_gate_up is not None


def unfuse_gate_up(mlp) -> None:
    """Give gate_proj/up_proj back storage of their own (undoes :func:`fuse_gate_up`)."""
    if "_infinilm_gate_up" not in mlp.__dict__:
        return
    if mlp._infinilm_gate_up is not None:
        unfuse_rows([mlp.gate_proj, mlp.up_proj])
    del mlp._infinilm_gate_up


def _views_of(w: torch.Tensor, *parts: torch.Tensor) -> bool:
    """Eager check that the modules' weights are still views of the fused tensor (``load_state_dict(assign=True)``
    or ``weight.data = ...`` replace them); under torch.compile the dtype/device checks alone apply."""
    if torch.compiler.is_compiling():
        return True
    lo, hi = w.data_ptr(), w.data_ptr() + w.numel() * w.element_size()
    return all(lo <= p.data_ptr() < hi for p in parts)


def _fused_valid(self, x: torch.Tensor):
    fused = getattr(self, "_infinilm_gate_up", None)
    if fused is None:
        return None
    w, b = fused
    g = self.gate_proj.weight
    # dtype/device are static under torch.compile; a mismatch means the halves were moved without us (re-fused
    # on the next eager _apply), so take the two-GEMM path meanwhile.
    if w.dtype != g.dtype or w.device != g.device or w.dtype != x.dtype or not _views_of(w, g, self.up_proj.weight):
        return None
    return w, b


def mlp_forward(self, x: torch.Tensor) -> torch.Tensor:
    act = getattr(self.config, "hidden_act", None) if hasattr(self, "config") else None
    if act not in (None, "silu", "swish") or x.dtype not in _FLOATS or not has_kernel("silu_and_mul", x):
        return self._infinilm_orig_forward(x)
    fused = _fused_valid(self, x)
    if fused is not None:
        gate_up = F.linear(x, fused[0], fused[1])
    else:
        gate_up = torch.cat([self.gate_proj(x), self.up_proj(x)], dim=-1)
    return self.down_proj(_ops.silu_and_mul(gate_up))


def mlp_apply(self, fn, *args, **kwargs):
    """Module._apply that re-establishes the fused gate_up storage after .to()/.half()/.cuda()."""
    out = torch.nn.Module._apply(self, fn, *args, **kwargs)
    if "_infinilm_gate_up" in self.__dict__:
        fuse_gate_up(self)
    return out


# ---- one q/k/v projection -----------------------------------------------------------------------------------


class FusedQKV:
    """The ``[Nq + Nk + Nv, H]`` weight (and bias) whose row blocks are q_proj/k_proj/v_proj's parameters (as
    views), and the row count of each block.

    transformers' attention forward calls ``q_proj(x)``, ``k_proj(x)``, ``v_proj(x)`` in turn; with this part
    q_proj's forward runs the one product and hangs k and v on ``x`` itself (attribute ``_infinilm_kv``), which
    k_proj / v_proj hand out when called on that ``x`` (and compute themselves otherwise, e.g. a model that
    projects k first). Nothing is written to this object or the modules per call: under torch.compile a write to
    a module-owned object is a side effect that the compiled frame replays in Python after every call (three
    setattrs and an attribute walk per layer, each decode step), while a write to the graph's own intermediate
    ``x`` is not replayed at all. The hand-out is emptied as it is read, so nothing outlives the forward."""

    def __init__(self, w, b, sizes, key):
        self.w, self.b, self.sizes, self.key = w, b, sizes, key


_QKV = ("q_proj", "k_proj", "v_proj")
_qkv_keys = itertools.count()


def fuse_qkv(attn) -> bool:
    """Give attn.q_proj/k_proj/v_proj one weight tensor (:func:`fuse_rows`) and bind their forwards to share one
    product: q_proj holds the :class:`FusedQKV` (``_infinilm_stash``), k_proj/v_proj its integer key
    (``_infinilm_qkv_key``), not the object itself: one object reached from three modules is an aliasing guard
    per projection that a compiled forward evaluates in Python on every call; an int is a C++ equality check."""
    from infinilm_torch.hf.hooks import bind

    attn._infinilm_qkv = None  # requested; _apply retries after every dtype/device move
    lins = [getattr(attn, n, None) for n in _QKV]
    fused = fuse_rows(lins)
    if fused is None:
        return False
    attn._infinilm_qkv = FusedQKV(*fused, [m.weight.shape[0] for m in lins], next(_qkv_keys))
    bind(lins[0], "_infinilm_stash", attn._infinilm_qkv)
    for m in lins[1:]:
        bind(m, "_infinilm_qkv_key", attn._infinilm_qkv.key)
    for m, fn in zip(lins, (q_proj_forward, k_proj_forward, v_proj_forward)):
        bind(m, "forward", fn)
    return True


def unfuse_qkv(attn) -> None:
    """Give q_proj/k_proj/v_proj storage of their own again (undoes :func:`fuse_qkv`; the projections' forwards
    come back with the caller's saved attributes)."""
    if "_infinilm_qkv" not in attn.__dict__:
        return
    if attn._infinilm_qkv is not None:
        unfuse_rows([getattr(attn, n) for n in _QKV])
    del attn._infinilm_qkv


def qkv_apply(self, fn, *args, **kwargs):
    """Module._apply of a fused attention module: move, then fuse q/k/v again."""
    out = torch.nn.Module._apply(self, fn, *args, **kwargs)
    if "_infinilm_qkv" in self.__dict__:
        fuse_qkv(self)
    return out


def _qkv_ok(f: FusedQKV, lin, x: torch.Tensor) -> bool:
    w = f.w
    return w.dtype == x.dtype and w.device == x.device and w.dtype == lin.weight.dtype and _views_of(w, lin.weight)


def q_proj_forward(self, x: torch.Tensor) -> torch.Tensor:
    f = self._infinilm_stash
    if not _qkv_ok(f, self, x):
        x._infinilm_kv = None
        return F.linear(x, self.weight, self.bias)
    q, k, v = F.linear(x, f.w, f.b).split(f.sizes, dim=-1)
    x._infinilm_kv = [f.key, k, v]
    return q


def _stashed(self, x: torch.Tensor, i: int) -> torch.Tensor:
    """k (i=1) or v (i=2) of the fused product this attention's q_proj ran on this same ``x`` (handed out once),
    else this projection's own."""
    kv = getattr(x, "_infinilm_kv", None)
    if kv is not None and kv[0] == self._infinilm_qkv_key and kv[i] is not None:
        out = kv[i]
        kv[i] = None
        if kv[3 - i] is None:
            x._infinilm_kv = None
        return out
    return F.linear(x, self.weight, self.bias)


def k_proj_forward(self, x: torch.Tensor) -> torch.Tensor:
    return _stashed(self, x, 1)


def v_proj_forward(self, x: torch.Tensor) -> torch.Tensor:
    return _stashed(self, x, 2)


# ---- rotary embedding ----------------------------------------------------------------------------------------


def rope_supported(config) -> bool:
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    if float(getattr(config, "partial_rotary_factor", 1.0) or 1.0) != 1.0 or head_dim % 2:
        return False
    from infinilm_torch.ops import hf_rope_params

    try:
        hf_rope_params(config)  # the module's parser: ValueError for rope types the table builder lacks
    except ValueError:
        return False
    return True


def attach_rope_table(rotary, config, device=None) -> None:
    """Register the float32 cos|sin table as a non-persistent buffer, so it follows the module across devices."""
    from infinilm_torch.ops import rope_cache_from_hf_config

    table = rope_cache_from_hf_config(config)
    if device is None:
        inv = getattr(rotary, "inv_freq", None)
        device = inv.device if isinstance(inv, torch.Tensor) else "cpu"
    rotary.register_buffer("_infinilm_cos_sin", table.to(device), persistent=False)


def rotary_forward(self, x: torch.Tensor, position_ids: torch.Tensor, *args, **kwargs):
    """Returns ``(cos_sin_table, position_ids)`` instead of ``(cos, sin)``; ``apply_rotary_pos_emb_dispatch``
    recognises the pair by the integer dtype of its second member."""
    table = getattr(self, "_infinilm_cos_sin", None)
    if table is None and not torch.compiler.is_compiling() and rope_supported(self.config):
        attach_rope_table(self, self.config, x.device)
        table = self._infinilm_cos_sin
    # The pair only works where the modeling module's apply_rotary_pos_emb is our dispatcher.
    apply = getattr(sys.modules.get(type(self).__module__), "apply_rotary_pos_emb", None)
    if (
        table is None or table.device != x.device or not has_kernel("rotary_embedding", x)
        or not hasattr(apply, "_infinilm_orig")
    ):
        return self._infinilm_orig_forward(x, position_ids, *args, **kwargs)
    return table, position_ids


def _tokens_merge(t: torch.Tensor) -> bool:
    """Whether dims 0 and 1 of ``t`` flatten into one strided dim (a view)."""
    return t.shape[0] == 1 or t.shape[1] == 1 or t.stride(0) == t.shape[1] * t.stride(1)


def _rotate_inplace(t: torch.Tensor, positions: torch.Tensor, table: torch.Tensor, other: torch.Tensor):
    """Rotate q ``t`` and k ``other`` (both HF ``[B, H, S, D]`` views) in place through ``[T, H, D]`` views."""
    qt, kt = t.transpose(1, 2), other.transpose(1, 2)  # [B, S, H, D]
    bsz = qt.shape[0]
    # The op takes one token dim with a free stride: merge B and S when the layout allows it (the usual
    # projection-output views, and every decode step: a size-1 dim's stride is free), else one call per row.
    if _tokens_merge(qt) and _tokens_merge(kt):
        _ops.rotary_embedding(positions.reshape(-1), qt.flatten(0, 1), kt.flatten(0, 1), table, True)
    else:
        for b in range(bsz):
            _ops.rotary_embedding(positions[b], qt[b], kt[b], table, True)


def make_rope_dispatch(orig_apply):
    """A drop-in for the modeling module's ``apply_rotary_pos_emb``: our op for (table, positions) pairs, the
    original function for HF's (cos, sin), so patched and unpatched models can live in one process."""

    def apply_rotary_pos_emb(q, k, cos, sin, *args, **kwargs):
        if sin.dtype in (torch.int32, torch.int64) and cos.dim() == 2:
            pos = sin
            if pos.dim() == 2 and pos.shape[0] != q.shape[0]:
                pos = pos.expand(q.shape[0], -1)
            if pos.dim() == 1:
                pos = pos.unsqueeze(0).expand(q.shape[0], -1)
            _rotate_inplace(q, pos, cos, k)
            return q, k
        return orig_apply(q, k, cos, sin, *args, **kwargs)

    apply_rotary_pos_emb._infinilm_orig = orig_apply
    return apply_rotary_pos_emb


# ---- decoder layer: residual add fused into the post-attention RMSNorm ---------------------------------------

try:  # transformers >= 5: hidden states are recorded by hooks through this collector
    from transformers.utils.output_capturing import _active_collector as _collector
except Exception:  # pragma: no cover - older transformers: never write into the layer input
    _collector = None


def _may_overwrite_input(layer) -> bool:
    """The fused op writes the residual sum into the layer input. That input is the previous layer's fresh
    output unless this is layer 0 (it may be the caller's inputs_embeds) or hidden states are being recorded."""
    if _collector is None or getattr(getattr(layer, "self_attn", None), "layer_idx", 0) == 0:
        return False
    if torch.compiler.is_compiling():
        # ContextVar.get is not traceable on every torch release; under compile transformers keeps the collector
        # in a plain attribute once its own output-capturing wrapper has run inside the graph. Otherwise do not
        # assume anything: take the unfused path.
        if not getattr(_collector, "compiling", False):
            return False
        collected = _collector.global_var
    else:
        collected = _collector.get()
    return collected is None or "hidden_states" not in collected


def decoder_layer_forward(self, hidden_states: torch.Tensor, *args, **kwargs):
    for name, value in zip(self._infinilm_arg_names, args):
        kwargs[name] = value
    residual = hidden_states
    hidden_states = self.input_layernorm(hidden_states)
    out = self.self_attn(hidden_states=hidden_states, **kwargs)
    attn = out[0] if isinstance(out, tuple) else out
    post = self.post_attention_layernorm
    if (
        _norm_ok(post, attn) and residual.dtype == attn.dtype and has_kernel("fused_add_rms_norm", attn)
        and _may_overwrite_input(self)
    ):
        _ops.fused_add_rms_norm(attn, residual, post.weight, _eps(post))  # residual += attn; attn = norm(residual)
        hidden_states = attn
    else:
        residual = residual + attn
        hidden_states = post(residual)
    hidden_states = residual + self.mlp(hidden_states)
    return (hidden_states,) if self._infinilm_returns_tuple else hidden_states
