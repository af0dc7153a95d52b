"""Typed Python wrappers of torch.ops.infinilm.* and their fake (meta) kernels.

Every op runs on CPU and (in a CUDA build) on CUDA, for float32, float16 and bfloat16 inputs, and
works in eager mode, under torch.compile(fullgraph=True) and inside CUDA graphs.
"""
from __future__ import annotations

from typing import Optional

import math

import torch

from infinilm_torch.lib import _infinilm  # noqa: F401  (registers the operators)

_ops = torch.ops.infinilm


def rms_norm(input: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """``y = x / sqrt(mean(x**2, -1) + eps) * weight`` with fp32 accumulation.

    input: ``[..., H]`` (last dim dense); weight: ``[H]``. Returns a new tensor shaped like ``input``.
    """
    return _ops.rms_norm(input, weight, eps)


def fused_add_rms_norm(input: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6) -> None:
    """In place: ``residual += input; input = rms_norm(residual, weight, eps)``. Both ``[..., H]``."""
    _ops.fused_add_rms_norm(input, residual, weight, eps)


def rotary_embedding(
    positions: torch.Tensor, query: torch.Tensor, key: torch.Tensor, cos_sin_cache: torch.Tensor, is_neox: bool = True
) -> None:
    """In-place rotary embedding.

    positions: ``[T]`` int32/int64; query ``[T, Hq, D]``, key ``[T, Hk, D]`` (token and head strides free,
    last dim dense); cos_sin_cache ``[max_pos, rot_dim]`` with cos in the first half of each row and sin in
    the second (see :func:`rope_cos_sin_cache`); the first ``rot_dim`` features of each head are rotated.
    ``is_neox``: rotate pairs ``(i, i + rot_dim/2)`` (Llama/HF layout); else GPT-J pairs ``(2i, 2i+1)``.
    """
    _ops.rotary_embedding(positions, query, key, cos_sin_cache, is_neox)


def rope_cos_sin_cache(
    max_position: int,
    rotary_dim: int,
    base: float = 10000.0,
    rope_type: str = "default",
    factor: float = 1.0,
    low_freq_factor: float = 1.0,
    high_freq_factor: float = 4.0,
    original_max_position: int = 8192,
) -> torch.Tensor:
    """float32 ``[max_position, rotary_dim]`` table ``cos(p * f_i) | sin(p * f_i)``, ``f_i = base**(-2i/rotary_dim)``.

    rope_type ``"linear"`` divides positions by ``factor``; ``"llama3"`` rescales frequency bands as Llama 3.1.
    Built once on the host (outside compiled regions) and moved to the device by the caller.
    """
    return _ops.rope_cos_sin_cache(
        max_position, rotary_dim, base, rope_type, factor, low_freq_factor, high_freq_factor, original_max_position
    )


def hf_rope_params(config) -> dict:
    """The engine's rope fields (``rope_theta``, ``rope_type``, ``rope_factor``, ``rope_low_freq_factor``,
    ``rope_high_freq_factor``, ``rope_original_max_position_embeddings``) of a transformers config, from the
    module's parser (AutoConfig's): ``rope_scaling`` (transformers 4) and ``rope_parameters`` (5) merged.
    Raises ValueError naming the field and value of an unsupported rope type."""
    return dict(_infinilm.parse_rope(getattr(config, "rope_parameters", None), getattr(config, "rope_scaling", None),
                                     getattr(config, "rope_theta", None), type(config).__name__))


def rope_cache_from_hf_config(config, max_position: Optional[int] = None) -> torch.Tensor:
    """The cos/sin table for a transformers Llama/Qwen2/Mistral/Qwen3 config (rope_theta and rope_scaling
    honoured)."""
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    rot = int(head_dim * getattr(config, "partial_rotary_factor", 1.0))
    r = hf_rope_params(config)
    return rope_cos_sin_cache(max_position or config.max_position_embeddings, rot, r["rope_theta"], r["rope_type"],
                              r["rope_factor"], r["rope_low_freq_factor"], r["rope_high_freq_factor"],
                              r["rope_original_max_position_embeddings"])


def silu_and_mul(input: torch.Tensor) -> torch.Tensor:
    """``[..., 2d] -> [..., d]``: ``silu(x[..., :d]) * x[..., d:]``."""
    return _ops.silu_and_mul(input)


def reshape_and_cache(
    key: torch.Tensor, value: torch.Tensor, key_cache: torch.Tensor, value_cache: torch.Tensor, slot_mapping: torch.Tensor
) -> None:
    """Write key/value ``[T, Hk, D]`` into the paged caches ``[num_blocks, Hk, block_size, D]``.

    slot_mapping ``[T]``: ``block_id * block_size + offset`` per token; ``-1`` skips the token.
    """
    _ops.reshape_and_cache(key, value, key_cache, value_cache, slot_mapping)


def rotary_embedding_and_cache(
    positions: torch.Tensor,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
    cos_sin_cache: torch.Tensor,
    is_neox: bool = True,
    q_norm_weight: Optional[torch.Tensor] = None,
    k_norm_weight: Optional[torch.Tensor] = None,
    norm_eps: float = 1e-6,
) -> None:
    """:func:`rotary_embedding` then :func:`reshape_and_cache` in one kernel (on CUDA).

    With ``q_norm_weight``/``k_norm_weight`` (``[D]``, Qwen3), each q and k head is first RMS-normalised
    (``norm_eps``). query ``[T, Hq, D]`` and key ``[T, Hk, D]`` are rotated in place; the rotated key and value
    ``[T, Hk, D]`` go to ``key_cache``/``value_cache`` ``[num_blocks, Hk, block_size, D]`` at ``slot_mapping``
    (``-1`` skips a token).
    """
    _ops.rotary_embedding_and_cache(
        positions, query, key, value, key_cache, value_cache, slot_mapping, cos_sin_cache, is_neox,
        q_norm_weight, k_norm_weight, norm_eps,
    )


def linear(input: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``input @ weight.T + bias``: input ``[..., K]``, weight ``[N, K]``, bias ``[N]`` -> ``[..., N]``.

    On CUDA, up to 8 rows of float16/bfloat16 run on the skinny GEMM (decode) kernel, with fp32 accumulation;
    more rows, or float32, go to cuBLAS (``INFINILM_CUDA_LINEAR=cublas`` sends everything there).
    """
    return _ops.linear(input, weight, bias)


def silu_and_mul_linear(input: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``linear(silu_and_mul(input), weight, bias)``: input ``[..., 2K]`` (gate | up), weight ``[N, K]``.

    On CUDA, up to 8 rows of float16/bfloat16 run in one kernel that computes the activation as it loads it.
    """
    return _ops.silu_and_mul_linear(input, weight, bias)


def paged_attention_decode(
    query: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    block_tables: torch.Tensor,
    seq_lens: torch.Tensor,
    scale: float,
    max_seq_len: Optional[int] = None,
    window_left: int = -1,
    softcap: float = 0.0,
) -> torch.Tensor:
    """One query token per request over the paged KV cache (GQA).

    query ``[B, Hq, D]``; caches ``[num_blocks, Hk, block_size, D]``; block_tables ``[B, max_blocks]``;
    seq_lens ``[B]`` cached tokens per request (the current token included). Returns ``[B, Hq, D]``:
    ``softmax(scale * q K^T) V`` over the first ``seq_lens[b]`` tokens of request b.
    block_size: any on CPU; on CUDA a power of two, or any length when each request owns one block
    (``max_blocks == 1``: an HF cache ``[B, Hk, max_len, D]`` is B blocks of max_len tokens).
    Head sizes on CUDA: 64, 80, 96, 128, 256.

    window_left: a query at position p sees keys ``[p - window_left, p]`` (FlashAttention's
    ``window_size[0]``; transformers' ``sliding_window`` W is ``window_left = W - 1``); -1 = no window.
    softcap: > 0 caps the scores ``s = scale * q.k`` as ``softcap * tanh(s / softcap)`` (Gemma 2); 0 = off.
    """
    return _ops.paged_attention_decode(
        query, key_cache, value_cache, block_tables, seq_lens, scale, max_seq_len, window_left, softcap
    )


def paged_attention_prefill(
    query: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    block_tables: torch.Tensor,
    query_start_loc: torch.Tensor,
    seq_lens: torch.Tensor,
    scale: float,
    max_query_len: Optional[int] = None,
    max_seq_len: Optional[int] = None,
    window_left: int = -1,
    softcap: float = 0.0,
) -> torch.Tensor:
    """Causal variable-length attention over the paged cache, with a cached prefix (chunked prefill).

    query ``[T, Hq, D]``: request r owns rows ``query_start_loc[r]:query_start_loc[r+1]`` (``[n+1]``);
    its new tokens sit at positions ``seq_lens[r] - q_len ... seq_lens[r] - 1`` and their K/V are already in
    the cache. Query i of request r sees cached tokens ``0 .. p`` with ``p = seq_lens[r] - q_len + i`` (only
    ``p - window_left .. p`` with a window). window_left and softcap as in :func:`paged_attention_decode`.
    Returns ``[T, Hq, D]``.
    """
    return _ops.paged_attention_prefill(
        query, key_cache, value_cache, block_tables, query_start_loc, seq_lens, scale, max_query_len, max_seq_len,
        window_left, softcap,
    )


def sample(
    logits: torch.Tensor,
    temperature: torch.Tensor,
    top_k: torch.Tensor,
    top_p: torch.Tensor,
    seeds: torch.Tensor,
    min_p: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Draw one token per row of ``logits [B, V]``.

    Per row: ``p = softmax(logits / temperature)``; with ``min_p`` (float ``[B]`` in [0, 1], 0 = off) keep only
    tokens with ``p >= min_p * max(p)`` (vLLM's min-p); keep the ``top_k`` most likely tokens (0 = all), then the
    smallest most-likely set whose mass reaches ``top_p`` of what is left (1 = all); draw from the kept tokens
    with a counter-based generator keyed on ``seeds[b]`` (same seed, same token). Greedy (argmax) where
    temperature is 0 or top_k is 1. temperature/top_p: float ``[B]``; top_k/seeds: int ``[B]``. Returns int64 ``[B]``.
    Thresholds are on values, so tokens tied at the top-k or top-p boundary are all kept; greedy ties go to the
    lowest index; -inf logits are never drawn. One seed always gives the same uniform: vary it per step.
    The exact definition is in ``kernels/cpu/sampling.h``.
    """
    return _ops.sample(logits, temperature, top_k, top_p, seeds, min_p)


def apply_penalties(
    logits: torch.Tensor,
    prompt_token_ids: torch.Tensor,
    output_token_ids: torch.Tensor,
    repetition_penalty: torch.Tensor,
    presence_penalty: torch.Tensor,
    frequency_penalty: torch.Tensor,
) -> None:
    """vLLM's sampling penalties, in place on ``logits [B, V]``.

    prompt_token_ids ``[B, Lp]`` / output_token_ids ``[B, Lo]``: int token ids, ``-1`` pads. For every token of
    the prompt or the output, ``repetition_penalty[b]`` (> 0, 1 = off) divides a positive logit and multiplies
    the others; then ``frequency_penalty[b] * count`` and ``presence_penalty[b] * (count > 0)`` are subtracted,
    count = occurrences in the output. Penalties: float ``[B]``. 16-bit logits are rounded once.
    """
    _ops.apply_penalties(logits, prompt_token_ids, output_token_ids, repetition_penalty, presence_penalty,
                         frequency_penalty)


def logprobs(logits: torch.Tensor, token_ids: torch.Tensor, k: int = 0):
    """``log_softmax(logits.float(), -1)`` at ``token_ids [B]`` and its ``k`` largest values, one pass per row.

    Returns ``(sampled [B] float32, top_logprobs [B, k] float32, top_token_ids [B, k] int64)``, the top k in
    decreasing order (ties: lower id first). ``0 <= k <= min(V, 1024)``; the log-softmax is never materialised.
    """
    return _ops.logprobs(logits, token_ids, k)


# ---- fake kernels: shapes and dtypes only, for torch.compile / meta tensors --------------------------------


@torch.library.register_fake("infinilm::rms_norm")
def _rms_norm_fake(input, weight, eps):
    return torch.empty_like(input, memory_format=torch.contiguous_format)


@torch.library.register_fake("infinilm::silu_and_mul")
def _silu_and_mul_fake(input):
    torch._check(input.shape[-1] % 2 == 0)
    return input.new_empty((*input.shape[:-1], input.shape[-1] // 2))


@torch.library.register_fake("infinilm::linear")
def _linear_fake(input, weight, bias=None):
    torch._check(input.shape[-1] == weight.shape[1], lambda: "linear: input and weight feature sizes differ")
    return input.new_empty((*input.shape[:-1], weight.shape[0]))


@torch.library.register_fake("infinilm::silu_and_mul_linear")
def _silu_and_mul_linear_fake(input, weight, bias=None):
    torch._check(input.shape[-1] == 2 * weight.shape[1], lambda: "silu_and_mul_linear: input must be [..., 2K]")
    return input.new_empty((*input.shape[:-1], weight.shape[0]))


def _check_attention_options(window_left, softcap):
    """The same rule as csrc/ops/attention_checks.h, so that tracing fails where the kernel would."""
    if window_left < -1:
        raise ValueError(f"infinilm: 'window_left' must be -1 (no window) or >= 0, got {window_left}")
    if not (math.isfinite(softcap) and softcap >= 0.0):
        raise ValueError(f"infinilm: 'softcap' must be 0 (off) or a finite positive cap, got {softcap}")


@torch.library.register_fake("infinilm::paged_attention_decode")
def _paged_attention_decode_fake(query, key_cache, value_cache, block_tables, seq_lens, scale, max_seq_len=None,
                                 window_left=-1, softcap=0.0):
    _check_attention_options(window_left, softcap)
    return torch.empty_like(query, memory_format=torch.contiguous_format)


@torch.library.register_fake("infinilm::paged_attention_prefill")
def _paged_attention_prefill_fake(
    query, key_cache, value_cache, block_tables, query_start_loc, seq_lens, scale, max_query_len=None, max_seq_len=None,
    window_left=-1, softcap=0.0,
):
    _check_attention_options(window_left, softcap)
    return torch.empty_like(query, memory_format=torch.contiguous_format)


@torch.library.register_fake("infinilm::sample")
def _sample_fake(logits, temperature, top_k, top_p, seeds, min_p=None):
    return logits.new_empty((logits.shape[0],), dtype=torch.int64)


@torch.library.register_fake("infinilm::logprobs")
def _logprobs_fake(logits, token_ids, k):
    torch._check(0 <= k <= logits.shape[1], lambda: f"logprobs: k = {k} must lie in [0, vocab]")
    B = logits.shape[0]
    return (logits.new_empty((B,), dtype=torch.float32), logits.new_empty((B, k), dtype=torch.float32),
            logits.new_empty((B, k), dtype=torch.int64))


__all__ = [
    "rms_norm",
    "fused_add_rms_norm",
    "rotary_embedding",
    "rope_cos_sin_cache",
    "rope_cache_from_hf_config",
    "hf_rope_params",
    "silu_and_mul",
    "reshape_and_cache",
    "rotary_embedding_and_cache",
    "linear",
    "silu_and_mul_linear",
    "paged_attention_decode",
    "paged_attention_prefill",
    "sample",
    "apply_penalties",
    "logprobs",
]
