"""The "infinilm" attention implementation for transformers' AttentionInterface, and its mask function.

transformers calls ``infinilm_attention_forward(module, q [B,Hq,Sq,D], k, v [B,Hk,Skv,D], mask, ...)`` after
the cache update. K/V of one layer are contiguous ``[B, Hk, Skv, D]`` in both the dynamic cache (grown by
cat) and the static cache (``Skv = max_cache_len``), which is exactly our paged layout with one block of
``Skv`` tokens per row: ``block_tables = [[0], [1], ...]``. What the kernels need besides is each row's
number of valid tokens ``L_b``, with query i of the row seeing keys ``0 .. L_b - Sq + i``.

The mask function registered under the same name computes that: when the mask transformers asks for is
exactly that causal pattern (no padding, no window in reach, no packing), it returns a *length descriptor*
instead of a mask: an int32 ``[B, 1, 1, 1]`` tensor holding ``-L_b`` (real masks are bool or float, and
int masks hold 0/1). Any other mask is materialised as sdpa's boolean mask and attention falls back to
``sdpa_attention_forward`` for that call, so padded batches stay exact.

Every decision is taken on Python values, shapes and dtypes (guards under torch.compile): a boolean mask that
reaches attention inside a compiled graph (its values unknown at trace time) goes to sdpa; no data-dependent
control flow is traced. The kernels take a cache row of any length as one block, so every step of a dynamic
cache runs on them.
"""
from __future__ import annotations

import torch

from infinilm_torch import ops
from infinilm_torch.lib import _infinilm

_FLOATS = (torch.float32, torch.float16, torch.bfloat16)
NAME = "infinilm"


def _has_paged_kernels(dispatch_key: str) -> bool:
    has = torch._C._dispatch_has_kernel_for_dispatch_key
    return all(has(f"infinilm::paged_attention_{p}", dispatch_key) for p in ("decode", "prefill"))


# Looked up once: torch.compile cannot trace the dispatcher query, but a dict of constants is fine.
KERNELS = {"cpu": _has_paged_kernels("CPU"), "cuda": _has_paged_kernels("CUDA")}
# How the HF cache is shown to the kernels: "row" = one block of Skv tokens per batch row (any length; both
# devices). "head" = one request per (row, kv head) with power-of-two blocks up to MAX_BLOCK: kept for kernels
# limited to such blocks; a cache length without a power-of-two divisor >= MIN_BLOCK then goes to sdpa, and a
# patched model's generate() rounds static caches up to STATIC_CACHE_MULTIPLE tokens.
LAYOUT = {"cpu": "row", "cuda": "row"}
_LIMITS = _infinilm.kernel_limits()  # the constants the ops' own checks use (kernels/kernel_limits.h)
MAX_BLOCK = _LIMITS["max_paged_block_size"]
MIN_BLOCK = {"cuda": 8}
STATIC_CACHE_MULTIPLE = 64
HEAD_DIMS = {"cuda": tuple(_LIMITS["cuda_head_sizes"])}  # head sizes the device's kernels take; others: any


# transformers helpers that traced code calls, imported by register() (before any tracing): an import statement
# inside a traced function breaks the graph on some torch releases.
_mu = None  # transformers.masking_utils
_sdpa_attention_forward = None


def is_length_descriptor(mask) -> bool:
    return isinstance(mask, torch.Tensor) and mask.dtype == torch.int32 and mask.dim() == 4 and mask.shape[1:] == (1, 1, 1)


def length_descriptor(lengths, batch_size: int, device) -> torch.Tensor:
    """int32 ``[B, 1, 1, 1]`` holding ``-L_b``; ``lengths`` is an int, a 0-d or a ``[B]`` tensor."""
    if isinstance(lengths, torch.Tensor):
        t = (-lengths).to(device=device, dtype=torch.int32).reshape(-1).expand(batch_size)
    else:
        t = -_filled(batch_size, lengths, device)
    return t.reshape(batch_size, 1, 1, 1).contiguous()


def causal_pattern(lengths: torch.Tensor, q_len: int, kv_len: int) -> torch.Tensor:
    """bool ``[B, 1, Sq, Skv]``: key j visible to query i of row b iff ``j <= L_b - Sq + i`` (bottom-right causal)."""
    dev = lengths.device
    i = torch.arange(q_len, device=dev).view(1, 1, q_len, 1)
    j = torch.arange(kv_len, device=dev).view(1, 1, 1, kv_len)
    return j <= lengths.view(-1, 1, 1, 1).to(torch.int64) - q_len + i


def infinilm_mask(**kw):
    """Mask function for ALL_MASK_ATTENTION_FUNCTIONS: a length descriptor when the kernels' implicit causal
    pattern is exact, else sdpa's materialised boolean mask. Accepts the 5.x (q_length/q_offset) and the
    4.5x (cache_position) keyword sets."""
    mu = _mu
    bsz, kv_len, kv_off = kw["batch_size"], kw["kv_length"], kw.get("kv_offset", 0)
    device = kw.get("device", "cpu")
    cache_position = kw.get("cache_position")
    if cache_position is not None:
        q_len, q_off = cache_position.shape[0], cache_position[0]
    else:
        q_len, q_off = kw["q_length"], kw.get("q_offset", 0)
    attention_mask = kw.get("attention_mask")
    tracing = torch.compiler.is_compiling()
    plain = kw.get("mask_function", mu.causal_mask_function) is mu.causal_mask_function and kv_off == 0
    if plain:
        length = q_off + q_len
        if attention_mask is None:
            return length_descriptor(length, bsz, device)
        if not tracing:
            n = int(length)
            if attention_mask.shape[-1] >= n and bool(attention_mask[:, :n].all()):
                return length_descriptor(n, bsz, device)
    mask = mu.sdpa_mask(**{**kw, "allow_is_causal_skip": False})
    if not tracing and isinstance(mask, torch.Tensor) and mask.dtype == torch.bool and mask.dim() == 4:
        # Same pattern after all (e.g. a window wider than the cache, or a static cache's unused tail)?
        lengths = mask[:, 0, -1, :].sum(-1)
        if mask.shape[1] == 1 and bool((lengths >= mask.shape[2]).all()):
            if torch.equal(mask, causal_pattern(lengths, mask.shape[2], mask.shape[3]).expand_as(mask)):
                return length_descriptor(lengths, bsz, device)
    return mask


def _kernel_ok(query, key, value, dropout) -> bool:
    # Every condition is static under torch.compile (device, dtype, shape, strides, python floats).
    return (
        KERNELS.get(query.device.type, False)
        and query.dtype in _FLOATS
        and key.dtype == query.dtype
        and value.dtype == query.dtype
        and key.shape == value.shape
        and key.shape[0] == query.shape[0]
        and key.shape[-1] == query.shape[-1]
        and query.shape[-1] in HEAD_DIMS.get(query.device.type, (query.shape[-1],))
        and (
            LAYOUT.get(query.device.type) != "head"
            or _pow2_divisor(key.shape[2], MAX_BLOCK) >= MIN_BLOCK.get(query.device.type, 1)
        )
        and not dropout
    )


def _sdpa(module, query, key, value, mask, dropout, scaling, **kwargs):
    return _sdpa_attention_forward(module, query, key, value, mask, dropout=dropout, scaling=scaling, **kwargs)


def infinilm_attention_forward(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs,
):
    """AttentionInterface entry: returns ``(out [B, Sq, Hq, D], None)`` like ``sdpa_attention_forward``."""
    if scaling is None:
        scaling = query.shape[-1] ** -0.5
    if attention_mask is None:
        window = kwargs.get("sliding_window")
        if window is not None and key.shape[2] > window:
            return _sdpa(module, query, key, value, attention_mask, dropout, scaling, **kwargs)
    elif not is_length_descriptor(attention_mask):
        # A real mask (padding, a window in reach, packing), also inside compiled graphs where its values are
        # unknown: sdpa computes it exactly.
        return _sdpa(module, query, key, value, attention_mask, dropout, scaling, **kwargs)
    if kwargs.get("softcap") is not None or not _kernel_ok(query, key, value, dropout):
        seq_lens = _seq_lens(attention_mask, query.shape[0], key.shape[2], query.device)
        mask = causal_pattern(seq_lens, query.shape[2], key.shape[2])
        return _sdpa(module, query, key, value, mask, dropout, scaling, **kwargs)
    return _attend(query, key, value, attention_mask, scaling), None


def _filled(bsz, n, device) -> torch.Tensor:
    """int32 ``[bsz]`` holding ``n``. A symbolic ``n`` (torch.compile with dynamic shapes) is kept a size: a
    SymInt fill value can be specialised by some torch releases, a recompile per cache length."""
    if isinstance(n, torch.SymInt):
        return torch.ones((bsz, n), dtype=torch.int32, device=device).sum(-1, dtype=torch.int32)
    return torch.full((bsz,), int(n), dtype=torch.int32, device=device)


def _seq_lens(desc, bsz: int, kv_len: int, device) -> torch.Tensor:
    if desc is None:
        return _filled(bsz, kv_len, device)
    return (-desc).reshape(bsz)


# Eager only: the index tensors of the last forward, shared by all its layers (one descriptor object per
# forward), so a decode layer launches the attention kernel alone. Under torch.compile they are traced per layer
# and deduplicated by the graph's common-subexpression pass.
_last_indices: list = [None, None]


def _same(a, b) -> bool:
    return a is b if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor) else a == b


def _indices(desc, bsz: int, q_len: int, kv_len: int, device):
    """``(seq_lens [B], block_tables [B, 1], query_start_loc [B+1] or None)`` int32 for the row layout."""
    eager = not torch.compiler.is_compiling()
    if eager:
        key = (desc, q_len) if desc is not None else (bsz, q_len, kv_len, device)
        hit = _last_indices[0]
        if hit is not None and len(hit) == len(key) and all(map(_same, hit, key)):
            return _last_indices[1]
    seq_lens = _seq_lens(desc, bsz, kv_len, device)
    block_tables = torch.arange(bsz, dtype=torch.int32, device=device).view(bsz, 1)
    starts = None
    if q_len > 1:
        starts = torch.arange(0, (bsz + 1) * q_len, q_len, dtype=torch.int32, device=device)
    out = (seq_lens, block_tables, starts)
    if eager:
        _last_indices[0], _last_indices[1] = key, out
    return out


def _attend(query, key, value, desc, scaling):
    """Our kernels over the HF cache: ``query [B, Hq, Sq, D]``, ``key/value [B, Hk, Skv, D]`` -> ``[B, Sq, Hq, D]``."""
    bsz, n_heads, q_len, head_dim = query.shape
    kv_len = key.shape[2]
    # Cached K/V are contiguous already; without a cache they are views of the projection output.
    key, value = key.contiguous(), value.contiguous()
    if LAYOUT.get(query.device.type) == "head":
        seq_lens = _seq_lens(desc, bsz, kv_len, query.device)
        return _attend_per_kv_head(query, key, value, seq_lens, scaling)
    # [B, Hk, Skv, D] is a paged cache of B blocks of Skv tokens; row b owns block b.
    # No max_* hints: with one block per row the kernels size their grids from the cache shape alone, and an
    # int argument would specialise a symbolic length under torch.compile (a recompile per cache length).
    seq_lens, block_tables, starts = _indices(desc, bsz, q_len, kv_len, query.device)
    if q_len == 1:
        out = ops.paged_attention_decode(query.reshape(bsz, n_heads, head_dim), key, value, block_tables, seq_lens, scaling)
        return out.view(bsz, 1, n_heads, head_dim)
    q = query.transpose(1, 2).reshape(bsz * q_len, n_heads, head_dim)
    out = ops.paged_attention_prefill(q, key, value, block_tables, starts, seq_lens, scaling)
    return out.view(bsz, q_len, n_heads, head_dim)


def _pow2_divisor(n: int, cap: int) -> int:
    b = 1
    while b < cap and n % (2 * b) == 0:
        b *= 2
    return b


def _attend_per_kv_head(query, key, value, seq_lens, scaling):
    """The same attention with each (row, kv head) as one request of G = Hq/Hk query heads over one kv head.

    Then ``[B, Hk, Skv, D]`` is ``B*Hk*Skv/bs`` blocks of ``bs`` tokens for any power of two ``bs`` dividing
    Skv, a layout for kernels that need small power-of-two blocks (CUDA) while HF sizes caches freely.
    """
    bsz, n_heads, q_len, head_dim = query.shape
    n_kv, kv_len = key.shape[1], key.shape[2]
    group, rows = n_heads // n_kv, bsz * n_kv
    bs = _pow2_divisor(kv_len, MAX_BLOCK)
    nb = kv_len // bs
    kc, vc = key.view(rows * nb, 1, bs, head_dim), value.view(rows * nb, 1, bs, head_dim)
    dev = query.device
    block_tables = (torch.arange(rows, dtype=torch.int32, device=dev).view(rows, 1) * nb
                    + torch.arange(nb, dtype=torch.int32, device=dev).view(1, nb))
    lens = seq_lens.to(torch.int32).repeat_interleave(n_kv)
    if q_len == 1:  # q head h*G + g reads kv head h (transformers' repeat_kv order)
        out = ops.paged_attention_decode(query.reshape(rows, group, head_dim), kc, vc, block_tables, lens, scaling, kv_len)
        return out.view(bsz, 1, n_heads, head_dim)
    q = query.view(bsz, n_kv, group, q_len, head_dim).transpose(2, 3).reshape(rows * q_len, group, head_dim)
    starts = torch.arange(0, (rows + 1) * q_len, q_len, dtype=torch.int32, device=dev)
    out = ops.paged_attention_prefill(q, kc, vc, block_tables, starts, lens, scaling, q_len, kv_len)
    return out.view(bsz, n_kv, q_len, group, head_dim).transpose(1, 2).reshape(bsz, q_len, n_heads, head_dim)


def register() -> None:
    """Register "infinilm" in transformers' attention and mask registries (idempotent)."""
    global _mu, _sdpa_attention_forward
    from transformers.integrations.sdpa_attention import sdpa_attention_forward
    from transformers.modeling_utils import AttentionInterface

    _sdpa_attention_forward = sdpa_attention_forward
    AttentionInterface.register(NAME, infinilm_attention_forward)
    try:
        from transformers import masking_utils
        from transformers.masking_utils import AttentionMaskInterface
    except ImportError:  # pragma: no cover - transformers < 4.53 builds 4D float masks itself
        return
    _mu = masking_utils
    AttentionMaskInterface.register(NAME, infinilm_mask)
