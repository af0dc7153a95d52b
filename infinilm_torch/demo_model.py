"""The built-in demo checkpoint: a small Llama with deterministic random weights, in HF layout, plus a char tokenizer.

``ensure_demo_model()`` writes config.json, model.safetensors and the tokenizer once (to
``$INFINILM_DEMO_DIR`` or ``~/.cache/infinilm_torch/demo-v1``) and reuses them afterwards. The weights
come from a seeded torch.Generator in a fixed order, so every machine builds the same model.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile

import torch

from infinilm_torch.tokenizer import save_char_tokenizer

VERSION = "demo-v1"
SEED = 20251125


def demo_config(vocab_size: int) -> dict:
    return {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": vocab_size,
        "hidden_size": 256, "intermediate_size": 768, "num_hidden_layers": 4, "num_attention_heads": 8,
        "num_key_value_heads": 4, "head_dim": 32, "max_position_embeddings": 4096, "rms_norm_eps": 1e-6,
        "hidden_act": "silu", "rope_theta": 10000.0, "attention_bias": False, "mlp_bias": False,
        "tie_word_embeddings": False, "use_cache": True, "bos_token_id": 1, "eos_token_id": 2,
        "pad_token_id": 0, "dtype": "float32",
    }


def demo_state_dict(cfg: dict, seed: int = SEED) -> dict:
    """Random weights with a wide enough spread that the next token depends on the context."""
    g = torch.Generator().manual_seed(seed)
    h, inter, hd = cfg["hidden_size"], cfg["intermediate_size"], cfg["head_dim"]
    q, kv = cfg["num_attention_heads"] * hd, cfg["num_key_value_heads"] * hd

    def lin(out_f, in_f, gain=1.0):
        return torch.randn(out_f, in_f, generator=g) * (gain / in_f ** 0.5)

    def norm(n):
        return 1.0 + 0.2 * torch.randn(n, generator=g)

    sd = {"model.embed_tokens.weight": torch.randn(cfg["vocab_size"], h, generator=g)}
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        sd[p + "input_layernorm.weight"] = norm(h)
        sd[p + "self_attn.q_proj.weight"] = lin(q, h, 2.0)
        sd[p + "self_attn.k_proj.weight"] = lin(kv, h, 2.0)
        sd[p + "self_attn.v_proj.weight"] = lin(kv, h)
        sd[p + "self_attn.o_proj.weight"] = lin(h, q)
        sd[p + "post_attention_layernorm.weight"] = norm(h)
        sd[p + "mlp.gate_proj.weight"] = lin(inter, h)
        sd[p + "mlp.up_proj.weight"] = lin(inter, h)
        sd[p + "mlp.down_proj.weight"] = lin(h, inter)
    sd["model.norm.weight"] = norm(h)
    sd["lm_head.weight"] = lin(cfg["vocab_size"], h, 4.0)
    return sd


def default_demo_dir() -> str:
    root = os.environ.get("INFINILM_DEMO_DIR")
    if root:
        return root
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(cache, "infinilm_torch", VERSION)


def _complete(path: str) -> bool:
    try:
        with open(os.path.join(path, "infinilm_demo.json"), encoding="utf-8") as f:
            return json.load(f).get("version") == VERSION
    except (OSError, ValueError):
        return False


def write_demo_model(path: str) -> None:
    """Write the demo checkpoint into ``path`` (created if needed)."""
    from safetensors.torch import save_file

    os.makedirs(path, exist_ok=True)
    vocab = save_char_tokenizer(path)
    cfg = demo_config(vocab)
    with open(os.path.join(path, "config.json"), "w", encoding="utf-8") as f:
        json.dump(cfg, f, indent=2)
    save_file(demo_state_dict(cfg), os.path.join(path, "model.safetensors"), metadata={"format": "pt"})
    with open(os.path.join(path, "infinilm_demo.json"), "w", encoding="utf-8") as f:
        json.dump({"version": VERSION, "seed": SEED}, f)


def ensure_demo_model(path: str = None, verbose: bool = True) -> str:
    """The demo checkpoint's directory, written on first use (atomically: built aside, then renamed)."""
    explicit = path is not None
    path = os.path.abspath(path or default_demo_dir())
    if _complete(path):
        return path
    parent = os.path.dirname(path)
    try:
        os.makedirs(parent, exist_ok=True)
    except OSError:
        if explicit:
            raise
        return ensure_demo_model(os.path.join(os.getcwd(), "demo_model"), verbose)  # no writable cache home
    tmp = tempfile.mkdtemp(prefix=".demo-", dir=parent)
    try:
        write_demo_model(tmp)
        if os.path.isdir(path):
            shutil.rmtree(path)  # an incomplete or older demo
        os.replace(tmp, path)
    except OSError:
        if not _complete(path):  # a concurrent writer may have won the rename
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if verbose:
        print(f"wrote the demo checkpoint (small random Llama + char tokenizer) to {path}")
    return path
