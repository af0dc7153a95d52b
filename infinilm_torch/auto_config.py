"""AutoConfig: a HF ``config.json`` or a ``.gguf`` file (llama, qwen2, mistral, qwen3) -> ``_infinilm.LlamaConfig``.

``parse_config(dict)`` does the reading and checking in plain Python and returns the engine's fields;
``AutoConfig.from_pretrained(dir_or_gguf)`` turns them into the C++ ``LlamaConfig`` and validates it.
"""
from __future__ import annotations

import json
import math
import os
from typing import Any, Dict, Union

from infinilm_torch.lib import _infinilm

# The compiled model registry's list (csrc/models/registry.cpp); each type also needs its mapping below.
SUPPORTED_MODEL_TYPES = tuple(_infinilm.supported_model_types())
SUPPORTED_ROPE_TYPES = tuple(_infinilm.kernel_limits()["rope_types"])
_REQUIRED = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")
# HF transformers' defaults for fields a config.json may leave out.
_DEFAULT_MAX_POSITIONS = {"llama": 2048, "mistral": 4096 * 32, "qwen2": 32768, "qwen3": 32768}
_DTYPES = {"float32": "float32", "float": "float32", "fp32": "float32", "float16": "float16", "half": "float16",
           "fp16": "float16", "bfloat16": "bfloat16", "bf16": "bfloat16"}


class ConfigError(ValueError):
    """A config.json the engine can't serve: unsupported model type, missing or inconsistent fields."""


def _int(d: Dict[str, Any], field: str, src: str, minimum: int = 1) -> int:
    """An integer field (an integral float such as 2.0 passes; 2.5, "2", true do not), at least ``minimum``."""
    value = d[field]
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{src}: '{field}' must be an integer, got {value!r}")
    if value < minimum:
        raise ConfigError(f"{src}: '{field}' must be >= {minimum}, got {value}")
    return value


def _float(d: Dict[str, Any], field: str, src: str, default: float) -> float:
    """A finite, positive number field."""
    value = d.get(field)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ConfigError(f"{src}: '{field}' must be a finite positive number, got {value!r}")
    return float(value)


def _bool(d: Dict[str, Any], field: str, src: str, default: bool) -> bool:
    value = d.get(field)
    if value is None:
        return default
    if not isinstance(value, bool):  # bool("false") is True: a string here is a broken config
        raise ConfigError(f"{src}: '{field}' must be true or false, got {value!r}")
    return value


def _as_list(value, field: str, src: str) -> list:
    if value is None:
        return []
    if isinstance(value, int) and not isinstance(value, bool):
        return [value]
    if isinstance(value, (list, tuple)) and all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        return list(value)
    raise ConfigError(f"{src}: '{field}' must be an int or a list of ints, got {value!r}")


def _dtype_name(value, src: str) -> str:
    if value is None:
        return "float32"
    name = str(value).removeprefix("torch.")
    if name not in _DTYPES:
        raise ConfigError(f"{src}: unsupported dtype {value!r}; expected float32, float16 or bfloat16")
    return _DTYPES[name]


def _rope(d: Dict[str, Any], src: str) -> Dict[str, Any]:
    """The rope_* fields, from the module's parser (the one the C++ checkpoint loader uses): transformers 4's
    ``rope_theta``/``rope_scaling`` or 5's ``rope_parameters``."""
    try:
        return dict(_infinilm.parse_rope(d.get("rope_parameters"), d.get("rope_scaling"), d.get("rope_theta"), src))
    except ValueError as e:
        raise ConfigError(str(e)) from None


def parse_config(d: Dict[str, Any], src: str = "config") -> Dict[str, Any]:
    """Check a HF config dict and return the engine's LlamaConfig fields (plain Python values)."""
    model_type = d.get("model_type")
    if model_type not in SUPPORTED_MODEL_TYPES:
        arch = d.get("architectures")
        raise ConfigError(f"{src}: unsupported model_type {model_type!r} (architectures {arch}); "
                          f"supported: {', '.join(SUPPORTED_MODEL_TYPES)}")
    missing = [k for k in _REQUIRED if d.get(k) is None]
    if missing:
        raise ConfigError(f"{src}: missing required field(s) {missing} for model_type {model_type!r}")
    heads = _int(d, "num_attention_heads", src)
    hidden = _int(d, "hidden_size", src)
    if d.get("head_dim") is None:
        if hidden % heads:
            raise ConfigError(f"{src}: no 'head_dim' and hidden_size {hidden} is not divisible by "
                              f"num_attention_heads {heads}")
        head_dim = hidden // heads
    else:
        head_dim = _int(d, "head_dim", src)
    kv_heads = heads if d.get("num_key_value_heads") is None else _int(d, "num_key_value_heads", src)
    if heads % kv_heads:
        raise ConfigError(f"{src}: num_attention_heads {heads} is not a multiple of num_key_value_heads {kv_heads}")
    act = d.get("hidden_act", "silu")
    if act != "silu":
        raise ConfigError(f"{src}: hidden_act {act!r} is not supported (only 'silu')")

    # Qwen2 always has q/k/v biases (its config has no switch); Mistral has none; Llama and Qwen3 follow
    # attention_bias (q/k/v/o).
    attention_bias = {"qwen2": True, "mistral": False}.get(model_type, _bool(d, "attention_bias", src, False))
    if d.get("max_position_embeddings") is None:
        max_pos = _DEFAULT_MAX_POSITIONS[model_type]
    else:
        max_pos = _int(d, "max_position_embeddings", src)
    # Mistral's window covers every layer and goes to the attention ops (0 = none). Qwen2/Qwen3 window only
    # some layers (max_window_layers): a window shorter than the context is refused there.
    window = d.get("sliding_window")
    sliding_window = 0
    if window is not None and (model_type == "mistral" or d.get("use_sliding_window")):
        window = _int(d, "sliding_window", src)
        if window <= 0:
            raise ConfigError(f"{src}: sliding_window must be positive, got {window}")
        if window < max_pos and model_type != "mistral":
            raise ConfigError(f"{src}: sliding_window {window} is shorter than max_position_embeddings {max_pos}; "
                              f"per-layer sliding windows ({model_type}, use_sliding_window) are not implemented. "
                              f"Set max_position_embeddings to at most {window} or sliding_window to null")
        sliding_window = window if window < max_pos else 0
    fields = {
        "model_type": model_type,
        "vocab_size": _int(d, "vocab_size", src),
        "hidden_size": hidden,
        "intermediate_size": _int(d, "intermediate_size", src),
        "num_hidden_layers": _int(d, "num_hidden_layers", src),
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "head_dim": head_dim,
        "max_position_embeddings": max_pos,
        "rms_norm_eps": _float(d, "rms_norm_eps", src, 1e-6),
        "hidden_act": act,
        "attention_bias": attention_bias,
        "sliding_window": sliding_window,
        "mlp_bias": _bool(d, "mlp_bias", src, False) if model_type == "llama" else False,
        "tie_word_embeddings": _bool(d, "tie_word_embeddings", src, False),
        "use_cache": _bool(d, "use_cache", src, True),
        "eos_token_id": _as_list(d.get("eos_token_id"), "eos_token_id", src),
        "bos_token_id": _as_list(d.get("bos_token_id"), "bos_token_id", src),
        "dtype": _dtype_name(d.get("dtype", d.get("torch_dtype")), src),
    }
    vocab = fields["vocab_size"]
    for key in ("eos_token_id", "bos_token_id"):
        bad = [t for t in fields[key] if not 0 <= t < vocab]
        if bad:
            raise ConfigError(f"{src}: '{key}' {d.get(key)!r} has id(s) {bad} out of range [0, vocab_size {vocab})")
    fields.update(_rope(d, src))
    return fields


def to_llama_config(fields: Dict[str, Any]):
    """Build and validate the C++ LlamaConfig from :func:`parse_config`'s fields."""
    cfg = _infinilm.LlamaConfig()
    for key, value in fields.items():
        if not hasattr(cfg, key):
            raise ConfigError(f"this build's LlamaConfig has no field {key!r} (value {value!r})")
        setattr(cfg, key, value)
    cfg.validate()
    return cfg


def config_source(path: Union[str, os.PathLike]) -> str:
    """The file a model's config is read from (for error messages): the .gguf itself or DIR/config.json."""
    path = os.fspath(path)
    return path if path.lower().endswith(".gguf") else os.path.join(path, "config.json")


def read_config_file(path: Union[str, os.PathLike]) -> Dict[str, Any]:
    """The config dict of ``path/config.json``, of ``path`` itself when it is a JSON file, or the HF-style config
    derived from a ``.gguf`` file's metadata."""
    from infinilm_torch.loaders import gguf

    path = os.fspath(path)
    if gguf.is_gguf(path):
        return gguf.config_dict(path)
    file = os.path.join(path, "config.json") if os.path.isdir(path) else path
    if not os.path.isfile(file):
        raise FileNotFoundError(f"no config.json at {path!r}")
    with open(file, encoding="utf-8") as f:
        try:
            d = json.load(f)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ConfigError(f"{file}: not valid JSON ({e})") from e
    if not isinstance(d, dict):
        raise ConfigError(f"{file}: expected a JSON object, got {type(d).__name__}")
    return d


class AutoConfig:
    """``AutoConfig.from_pretrained(model_dir or x.gguf)`` -> ``_infinilm.LlamaConfig`` (spec section 4)."""

    @staticmethod
    def from_pretrained(model_path: Union[str, os.PathLike]):
        d = read_config_file(model_path)
        return to_llama_config(parse_config(d, src=config_source(model_path)))

    @staticmethod
    def from_dict(d: Dict[str, Any], src: str = "config"):
        return to_llama_config(parse_config(d, src))

    @staticmethod
    def from_hf_config(hf_config: Any):
        """From a transformers ``PretrainedConfig`` object (e.g. ``model.config``)."""
        d = hf_config.to_dict()
        d.setdefault("model_type", getattr(hf_config, "model_type", None))
        return to_llama_config(parse_config(d, src=type(hf_config).__name__))


def config_fields(config) -> Dict[str, Any]:
    """Read back a LlamaConfig's fields (C++ object or dict) as a plain dict."""
    if isinstance(config, dict):
        return dict(config)
    names = ("model_type", "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
             "num_attention_heads", "num_key_value_heads", "head_dim", "max_position_embeddings", "rms_norm_eps",
             "attention_bias", "mlp_bias", "tie_word_embeddings", "eos_token_id", "bos_token_id", "dtype",
             "rope_theta", "rope_type", "sliding_window")
    return {k: getattr(config, k) for k in names if hasattr(config, k)}

