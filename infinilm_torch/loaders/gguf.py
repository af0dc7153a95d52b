"""GGUF checkpoints (llama.cpp's format): metadata -> HF config dict, tensors -> HF names, dequantized at load.

Read with the ``gguf`` package (memory-mapped, nothing is read until asked). The config follows what
transformers derives from the same metadata; tensors get their HF names, llama.cpp's Q/K row permutation
(made for its interleaved RoPE) is undone, and every tensor is dequantized with gguf's dequantizer to
float32 and then cast to the model dtype.
"""
from __future__ import annotations

import os
import sys
from functools import lru_cache
from typing import Any, Dict, Iterator, List, Optional, Tuple

import numpy as np
import torch

# llama.cpp architectures the engine serves -> HF model_type.
ARCHITECTURES = {"llama": "llama", "qwen2": "qwen2"}
# GGUF tensor name (after "blk.N.") -> HF name (after "model.layers.N.").
_LAYER_NAMES = {
    "attn_norm": "input_layernorm", "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj", "attn_output": "self_attn.o_proj", "ffn_norm": "post_attention_layernorm",
    "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj",
}
_GLOBAL_NAMES = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}
ROPE_FREQS = "rope_freqs.weight"  # llama3 rope scaling, stored as per-frequency factors


class GGUFError(ValueError):
    """A GGUF file that can't be read or served: truncated/corrupt, unsupported architecture or tensor type."""


def is_gguf(path) -> bool:
    """True for a path naming a .gguf file (existing or not: a missing one then fails as a missing file)."""
    return isinstance(path, (str, os.PathLike)) and os.fspath(path).lower().endswith(".gguf") and \
        not os.path.isdir(os.fspath(path))


def _gguf():
    try:
        import gguf
    except ImportError as e:
        raise ImportError("reading .gguf files needs the 'gguf' package: pip install gguf") from e
    return gguf


def supported_types():
    """The tensor types this loader dequantizes: gguf's plain float types and every type it can dequantize."""
    gguf = _gguf()
    from gguf import quants

    Q = gguf.GGMLQuantizationType
    return {Q.F32, Q.F16} | set(quants._type_traits)  # noqa: SLF001  (gguf's registry of dequantizers)


def _reader_class():
    gguf = _gguf()

    class _Reader(gguf.GGUFReader):
        """GGUFReader over a plain ndarray view of its memory map: the same bytes, but slicing skips
        np.memmap's per-slice bookkeeping, which made parsing a 49k-token vocabulary take seconds."""

        @property
        def data(self):
            return self._data

        @data.setter
        def data(self, value):
            self._mmap = value  # keeps the mapping alive
            self._data = value.view(np.ndarray)

    return _Reader


class GGUFFile:
    """One opened GGUF file: metadata values, tensors by GGUF name, checked against the file's size."""

    def __init__(self, path):
        self.path = os.path.abspath(os.fspath(path))
        if not os.path.isfile(self.path):
            raise FileNotFoundError(f"no GGUF file at {os.fspath(path)!r}")
        try:
            self.reader = _reader_class()(self.path, "r")
        except Exception as e:  # the reader fails with ValueError/IndexError/KeyError on a bad header
            raise GGUFError(f"{self.path}: not a readable GGUF file ({type(e).__name__}: {e})") from e
        self.tensors = {t.name: t for t in self.reader.tensors}
        size = os.path.getsize(self.path)
        for t in self.reader.tensors:
            end = int(t.data_offset) + int(t.n_bytes)
            if end > size or t.data.nbytes != int(t.n_bytes):
                raise GGUFError(f"{self.path}: truncated: tensor {t.name!r} needs bytes up to {end}, "
                                f"the file has {size}")

    def get(self, key: str, default: Any = None) -> Any:
        field = self.reader.fields.get(key)
        if field is None:
            return default
        try:
            return field.contents()
        except Exception as e:
            raise GGUFError(f"{self.path}: metadata field {key!r} is unreadable ({e})") from e

    def require(self, key: str) -> Any:
        value = self.get(key)
        if value is None:
            raise GGUFError(f"{self.path}: missing metadata field {key!r}")
        return value

    @property
    def architecture(self) -> str:
        arch = self.require("general.architecture")
        if arch not in ARCHITECTURES:
            raise GGUFError(f"{self.path}: unsupported architecture {arch!r} (general.architecture); "
                            f"supported: {', '.join(ARCHITECTURES)}")
        return arch


@lru_cache(maxsize=4)
def _open_cached(path: str, mtime: float, size: int) -> GGUFFile:
    return GGUFFile(path)


def open_gguf(path) -> GGUFFile:
    """The opened file, shared between config, weights and tokenizer reads of one unchanged file."""
    path = os.path.abspath(os.fspath(path))
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no GGUF file at {path!r}")
    st = os.stat(path)
    return _open_cached(path, st.st_mtime, st.st_size)


def _int_field(f: GGUFFile, key: str, default=None) -> Optional[int]:
    value = f.get(key, default)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise GGUFError(f"{f.path}: metadata field {key!r} must be an integer, got {value!r}")
    return int(value)


def _llama3_rope(f: GGUFFile, arch: str, head_dim: int, theta: float) -> Dict[str, Any]:
    """Recover llama3 rope-scaling parameters from ``rope_freqs.weight`` (llama.cpp stores only the factors)."""
    t = f.tensors[ROPE_FREQS]
    factors = np.asarray(_gguf().dequantize(t.data, t.tensor_type), dtype=np.float64).reshape(-1)
    orig = _int_field(f, f"{arch}.rope.scaling.original_context_length") or 8192
    params = {"rope_type": "llama3", "factor": float(factors.max()), "low_freq_factor": 1.0,
              "high_freq_factor": 4.0, "original_max_position_embeddings": orig}
    inv = 1.0 / theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    wavelen = 2 * np.pi / inv
    smooth = np.clip((orig / wavelen - 1.0) / (4.0 - 1.0), 0.0, 1.0)
    want = 1.0 / ((1 - smooth) / params["factor"] + smooth)
    if factors.shape != want.shape or not np.allclose(factors, want, rtol=1e-3):
        raise GGUFError(f"{f.path}: tensor {ROPE_FREQS!r} holds rope factors that are not llama3 scaling with "
                        f"low/high frequency factors 1/4; unsupported")
    return params


def config_dict(path) -> Dict[str, Any]:
    """The HF-style config dict (as in a config.json) that the GGUF's metadata describes."""
    f = open_gguf(path)
    arch = f.architecture
    a = arch + "."
    heads = _int_field(f, a + "attention.head_count")
    hidden = _int_field(f, a + "embedding_length")
    d: Dict[str, Any] = {
        "architectures": [{"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM"}[arch]],
        "model_type": ARCHITECTURES[arch],
        "num_hidden_layers": _int_field(f, a + "block_count"),
        "hidden_size": hidden,
        "intermediate_size": _int_field(f, a + "feed_forward_length"),
        "num_attention_heads": heads,
        "num_key_value_heads": _int_field(f, a + "attention.head_count_kv", heads),
        "max_position_embeddings": _int_field(f, a + "context_length"),
        "rms_norm_eps": float(f.get(a + "attention.layer_norm_rms_epsilon", 1e-6)),
        "rope_theta": float(f.get(a + "rope.freq_base", 10000.0)),
        "hidden_act": "silu",
        "tie_word_embeddings": "output.weight" not in f.tensors,
        "attention_bias": "blk.0.attn_q.bias" in f.tensors,
        "mlp_bias": "blk.0.ffn_up.bias" in f.tensors,
        "dtype": "float32",  # weights are dequantized; the caller picks the compute dtype
    }
    for key, name in (("bos_token_id", "bos"), ("eos_token_id", "eos"), ("pad_token_id", "padding")):
        value = _int_field(f, f"tokenizer.ggml.{name}_token_id")
        if value is not None:
            d[key] = value
    missing = [f"{a}{k}" for k, v in (("block_count", d["num_hidden_layers"]), ("embedding_length", hidden),
                                      ("feed_forward_length", d["intermediate_size"]),
                                      ("attention.head_count", heads)) if v is None]
    if missing:
        raise GGUFError(f"{f.path}: missing metadata field(s) {missing}")
    head_dim = _int_field(f, a + "attention.key_length")
    if head_dim is None and arch == "llama":
        head_dim = _int_field(f, a + "rope.dimension_count")
    if head_dim is not None:
        d["head_dim"] = head_dim
    vocab = _int_field(f, a + "vocab_size")
    if vocab is None:
        tokens = f.reader.fields.get("tokenizer.ggml.tokens")
        vocab = len(tokens.data) if tokens is not None else None
    if vocab is None and "token_embd.weight" in f.tensors:
        vocab = int(f.tensors["token_embd.weight"].shape[-1])
    d["vocab_size"] = vocab
    scaling = f.get(a + "rope.scaling.type")
    if scaling not in (None, "none"):
        if scaling != "linear":
            raise GGUFError(f"{f.path}: rope scaling {scaling!r} ({a}rope.scaling.type) is not supported; "
                            f"supported: linear, llama3 (rope_freqs.weight)")
        d["rope_scaling"] = {"rope_type": "linear", "factor": float(f.require(a + "rope.scaling.factor"))}
    if ROPE_FREQS in f.tensors:
        d["rope_scaling"] = _llama3_rope(f, arch, head_dim or hidden // heads, d["rope_theta"])
    return d


def hf_name(gguf_name: str) -> Optional[str]:
    """The HF parameter name of a GGUF tensor; None for tensors folded into the config (rope_freqs);
    an unknown tensor keeps its GGUF name, so that the strict name check reports it."""
    if gguf_name == ROPE_FREQS:
        return None
    stem, _, suffix = gguf_name.rpartition(".")
    if stem in _GLOBAL_NAMES:
        return f"{_GLOBAL_NAMES[stem]}.{suffix}"
    parts = stem.split(".")
    if len(parts) == 3 and parts[0] == "blk" and parts[1].isdigit() and parts[2] in _LAYER_NAMES:
        return f"model.layers.{parts[1]}.{_LAYER_NAMES[parts[2]]}.{suffix}"
    return gguf_name


def tensor_names(path) -> List[str]:
    """The HF names of the file's tensors (GGUF names for those with no HF counterpart), in file order."""
    return [n for n in (hf_name(t.name) for t in open_gguf(path).reader.tensors) if n is not None]


def unpermute_qk(w: torch.Tensor, n_head: int) -> torch.Tensor:
    """Undo llama.cpp's ``permute`` of q/k rows (``reshape(n_head, 2, d/2, ...).swapaxes(1, 2)``)."""
    half = w.shape[0] // n_head // 2
    return w.reshape(n_head, half, 2, *w.shape[1:]).transpose(1, 2).reshape(w.shape)


def dequantize(f: GGUFFile, t) -> torch.Tensor:
    """A float32 tensor in numpy/HF order (rows first) from one GGUF tensor."""
    gguf = _gguf()
    if t.tensor_type not in supported_types():
        raise GGUFError(f"{f.path}: tensor {t.name!r} has type {t.tensor_type.name}, which this loader can't "
                        f"dequantize; supported: {sorted(q.name for q in supported_types())}")
    shape = [int(x) for x in reversed(t.shape.tolist())]
    try:
        data = np.asarray(gguf.dequantize(t.data, t.tensor_type), dtype=np.float32)
    except Exception as e:
        raise GGUFError(f"{f.path}: tensor {t.name!r} ({t.tensor_type.name}, shape {shape}) could not be "
                        f"dequantized ({type(e).__name__}: {e})") from e
    data = np.ascontiguousarray(data).reshape(shape)
    if not data.flags.writeable:  # F32 data is a view of the read-only memory map
        data = data.copy()
    return torch.from_numpy(data)


def check_types(path) -> None:
    """Fail before anything loads when a tensor's type can't be dequantized."""
    f = open_gguf(path)
    ok = supported_types()
    bad = [(t.name, t.tensor_type.name) for t in f.reader.tensors if t.tensor_type not in ok]
    if bad:
        raise GGUFError(f"{f.path}: unsupported tensor type(s) {sorted({b[1] for b in bad})} (e.g. tensor "
                        f"{bad[0][0]!r}); supported: {sorted(q.name for q in ok)}")


def iter_tensors(path, dtype: Optional[torch.dtype] = None, progress: bool = False,
                 names: Optional[set] = None) -> Iterator[Tuple[str, torch.Tensor]]:
    """Yield (HF name, tensor) for every tensor (those in ``names`` only, when given), dequantized, Q/K
    rows un-permuted for llama, cast to ``dtype``; a tqdm bar on a terminal when ``progress``."""
    f = open_gguf(path)
    check_types(path)
    cfg = config_dict(path)
    permute = f.architecture == "llama"
    todo = [(t, hf_name(t.name)) for t in f.reader.tensors]
    todo = [(t, n) for t, n in todo if n is not None and (names is None or n in names)]
    bar = None
    if progress and sys.stderr.isatty():
        from tqdm.auto import tqdm

        bar = tqdm(total=len(todo), desc=f"loading {os.path.basename(f.path)}", unit="tensor", leave=False)
    try:
        for t, name in todo:
            w = dequantize(f, t)
            if permute and ".self_attn.q_proj." in name:
                w = unpermute_qk(w, cfg["num_attention_heads"])
            elif permute and ".self_attn.k_proj." in name:
                w = unpermute_qk(w, cfg["num_key_value_heads"])
            yield name, (w if dtype is None else w.to(dtype))
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()


def tokenizer_metadata(path) -> Dict[str, Any]:
    """The ``tokenizer.*`` metadata of the file, keys without the ``tokenizer.`` prefix."""
    f = open_gguf(path)
    return {k[len("tokenizer."):]: f.get(k) for k in f.reader.fields if k.startswith("tokenizer.")}
