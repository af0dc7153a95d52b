"""AutoConfig: a HF ``config.json`` (llama, qwen2, mistral) -> ``_infinilm.LlamaConfig``.

``parse_config(dict)`` does the reading and checking in plain Python and returns the engine's fields;
``AutoConfig.from_pretrained(dir)`` turns them into the C++ ``LlamaConfig`` and validates it.
"""
from __future__ import annotations

import json
import os
import warnings
from typing import Any, Dict, Union

SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2")
SUPPORTED_ROPE_TYPES = ("default", "linear", "llama3")
_REQUIRED = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")
# HF transformers' defaults for fields a config.json may leave out.
_DEFAULT_MAX_POSITIONS = {"llama": 2048, "mistral": 4096 * 32, "qwen2": 32768}
_DTYPES = {"float32": "float32", "float": "float32", "fp32": "float32", "float16": "float16", "half": "float16",
           "fp16": "float16", "bfloat16": "bfloat16", "bf16": "bfloat16"}


class ConfigError(ValueError):
    """A config.json the engine can't serve: unsupported model type, missing or inconsistent fields."""


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
    """rope_theta and rope scaling from ``rope_theta``/``rope_scaling`` (transformers 4) or ``rope_parameters`` (5)."""
    params = d.get("rope_parameters") or {}
    scaling = d.get("rope_scaling") or {}
    if not isinstance(params, dict) or not isinstance(scaling, dict):
        raise ConfigError(f"{src}: 'rope_parameters'/'rope_scaling' must be objects, got "
                          f"{d.get('rope_parameters')!r} / {d.get('rope_scaling')!r}")
    merged = {**params, **scaling}
    theta = d.get("rope_theta", merged.get("rope_theta", 10000.0))
    rope_type = merged.get("rope_type", merged.get("type", "default")) or "default"
    if rope_type not in SUPPORTED_ROPE_TYPES:
        raise ConfigError(f"{src}: rope scaling type {rope_type!r} is not supported; supported: {SUPPORTED_ROPE_TYPES}")
    out = {"rope_theta": float(theta), "rope_type": rope_type, "rope_factor": 1.0, "rope_low_freq_factor": 1.0,
           "rope_high_freq_factor": 4.0, "rope_original_max_position_embeddings": 8192}
    if rope_type in ("linear", "llama3"):
        if "factor" not in merged:
            raise ConfigError(f"{src}: rope scaling {rope_type!r} needs 'factor', got {merged!r}")
        out["rope_factor"] = float(merged["factor"])
    if rope_type == "llama3":
        for key in ("low_freq_factor", "high_freq_factor", "original_max_position_embeddings"):
            if key not in merged:
                raise ConfigError(f"{src}: rope scaling 'llama3' needs '{key}', got {merged!r}")
        out["rope_low_freq_factor"] = float(merged["low_freq_factor"])
        out["rope_high_freq_factor"] = float(merged["high_freq_factor"])
        out["rope_original_max_position_embeddings"] = int(merged["original_max_position_embeddings"])
    return out


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
    heads = int(d["num_attention_heads"])
    hidden = int(d["hidden_size"])
    head_dim = d.get("head_dim")
    if head_dim is None:
        if hidden % heads:
            raise ConfigError(f"{src}: no 'head_dim' and hidden_size {hidden} is not divisible by "
                              f"num_attention_heads {heads}")
        head_dim = hidden // heads
    kv_heads = d.get("num_key_value_heads")
    kv_heads = heads if kv_heads is None else int(kv_heads)
    if heads % kv_heads:
        raise ConfigError(f"{src}: num_attention_heads {heads} is not a multiple of num_key_value_heads {kv_heads}")
    act = d.get("hidden_act", "silu")
    if act != "silu":
        raise ConfigError(f"{src}: hidden_act {act!r} is not supported (only 'silu')")

    # Qwen2 always has q/k/v biases (its config has no switch); Mistral has none; Llama follows attention_bias.
    attention_bias = {"qwen2": True, "mistral": False}.get(model_type, bool(d.get("attention_bias", False)))
    max_pos = d.get("max_position_embeddings") or _DEFAULT_MAX_POSITIONS[model_type]
    window = d.get("sliding_window")
    if window is not None and (model_type == "mistral" or d.get("use_sliding_window")) and window < max_pos:
        warnings.warn(f"{src}: sliding-window attention ({window}) is not implemented; outputs are exact up to "
                      f"{window} tokens of context", stacklevel=3)
    fields = {
        "model_type": model_type,
        "vocab_size": int(d["vocab_size"]),
        "hidden_size": hidden,
        "intermediate_size": int(d["intermediate_size"]),
        "num_hidden_layers": int(d["num_hidden_layers"]),
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "head_dim": int(head_dim),
        "max_position_embeddings": int(max_pos),
        "rms_norm_eps": float(d.get("rms_norm_eps", 1e-6)),
        "hidden_act": act,
        "attention_bias": attention_bias,
        "mlp_bias": bool(d.get("mlp_bias", False)) if model_type == "llama" else False,
        "tie_word_embeddings": bool(d.get("tie_word_embeddings", False)),
        "use_cache": bool(d.get("use_cache", True)),
        "eos_token_id": _as_list(d.get("eos_token_id"), "eos_token_id", src),
        "bos_token_id": _as_list(d.get("bos_token_id"), "bos_token_id", src),
        "dtype": _dtype_name(d.get("dtype", d.get("torch_dtype")), src),
    }
    fields.update(_rope(d, src))
    return fields


def to_llama_config(fields: Dict[str, Any]):
    """Build and validate the C++ LlamaConfig from :func:`parse_config`'s fields."""
    from infinilm_torch.lib import _infinilm

    cfg = _infinilm.LlamaConfig()
    for key, value in fields.items():
        if not hasattr(cfg, key):
            raise ConfigError(f"this build's LlamaConfig has no field {key!r} (value {value!r})")
        setattr(cfg, key, value)
    cfg.validate()
    return cfg


def read_config_file(path: Union[str, os.PathLike]) -> Dict[str, Any]:
    """The dict of ``path/config.json`` (or of ``path`` itself when it is a file)."""
    path = os.fspath(path)
    file = os.path.join(path, "config.json") if os.path.isdir(path) else path
    if not os.path.isfile(file):
        raise FileNotFoundError(f"no config.json at {path!r}")
    with open(file, encoding="utf-8") as f:
        try:
            return json.load(f)
        except json.JSONDecodeError as e:
            raise ConfigError(f"{file}: not valid JSON ({e})") from e


class AutoConfig:
    """``AutoConfig.from_pretrained(model_dir)`` -> ``_infinilm.LlamaConfig`` (spec section 4)."""

    @staticmethod
    def from_pretrained(model_path: Union[str, os.PathLike]):
        d = read_config_file(model_path)
        return to_llama_config(parse_config(d, src=os.path.join(os.fspath(model_path), "config.json")))

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
             "rope_theta", "rope_type")
    return {k: getattr(config, k) for k in names if hasattr(config, k)}

