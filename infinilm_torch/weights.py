"""Checkpoint reading: a HF model directory (safetensors, sharded or not, else pytorch_model.bin) -> engine.load_param.

Loading is strict: every parameter the model needs must be in the checkpoint and nothing else may be
(rotary ``inv_freq`` buffers of old checkpoints are the only names skipped). The check runs on the tensor
names alone, before any tensor is read or loaded.
"""
from __future__ import annotations

import json
import os
from collections import Counter
from typing import Dict, Iterator, List, Optional, Tuple, Union

import torch

from infinilm_torch import infinicore

PathLike = Union[str, os.PathLike]
_IGNORED_SUFFIXES = (".rotary_emb.inv_freq",)


class WeightsError(ValueError):
    """A checkpoint whose tensor names don't match the model: missing or unexpected parameters, no weight files."""


def _field(config, name, default=None):
    return config.get(name, default) if isinstance(config, dict) else getattr(config, name, default)


def expected_param_names(config) -> List[str]:
    """The HF names of every parameter a Llama/Qwen2/Mistral model with this config loads (in model order)."""
    model_type = _field(config, "model_type", "llama")
    attn_bias = bool(_field(config, "attention_bias", False))
    mlp_bias = bool(_field(config, "mlp_bias", False))
    names = ["model.embed_tokens.weight"]
    for i in range(int(_field(config, "num_hidden_layers"))):
        p = f"model.layers.{i}."
        names.append(p + "input_layernorm.weight")
        for proj in ("q_proj", "k_proj", "v_proj", "o_proj"):
            names.append(f"{p}self_attn.{proj}.weight")
            # Llama's attention_bias covers o_proj too; Qwen2 has q/k/v biases only.
            if attn_bias and (proj != "o_proj" or model_type != "qwen2"):
                names.append(f"{p}self_attn.{proj}.bias")
        names.append(p + "post_attention_layernorm.weight")
        for proj in ("gate_proj", "up_proj", "down_proj"):
            names.append(f"{p}mlp.{proj}.weight")
            if mlp_bias:
                names.append(f"{p}mlp.{proj}.bias")
    names.append("model.norm.weight")
    if not _field(config, "tie_word_embeddings", False):
        names.append("lm_head.weight")
    return names


def checkpoint_files(model_dir: PathLike) -> Tuple[str, List[str]]:
    """("safetensors" | "bin", files): the sharded index's files, else every *.safetensors, else pytorch_model*.bin."""
    model_dir = os.fspath(model_dir)
    if not os.path.isdir(model_dir):
        raise FileNotFoundError(f"model directory {model_dir!r} does not exist")
    for index_name, kind in (("model.safetensors.index.json", "safetensors"), ("pytorch_model.bin.index.json", "bin")):
        index = os.path.join(model_dir, index_name)
        if os.path.isfile(index):
            with open(index, encoding="utf-8") as f:
                weight_map = json.load(f).get("weight_map")
            if not isinstance(weight_map, dict) or not weight_map:
                raise WeightsError(f"{index}: no 'weight_map'")
            files = sorted({os.path.join(model_dir, v) for v in weight_map.values()})
            absent = [f for f in files if not os.path.isfile(f)]
            if absent:
                raise WeightsError(f"{index} lists shard(s) that don't exist: {absent}")
            return kind, files
    files = sorted(os.path.join(model_dir, f) for f in os.listdir(model_dir) if f.endswith(".safetensors"))
    if files:
        return "safetensors", files
    binary = os.path.join(model_dir, "pytorch_model.bin")
    if os.path.isfile(binary):
        return "bin", [binary]
    raise WeightsError(f"no weights in {model_dir!r}: expected *.safetensors (optionally with "
                       f"model.safetensors.index.json) or pytorch_model.bin")


def _keep(name: str) -> bool:
    return not name.endswith(_IGNORED_SUFFIXES)


def iter_checkpoint(model_dir: PathLike) -> Iterator[Tuple[str, torch.Tensor]]:
    """Yield (name, CPU tensor) for every tensor of the checkpoint, one shard at a time."""
    kind, files = checkpoint_files(model_dir)
    for file in files:
        if kind == "safetensors":
            from safetensors import safe_open

            with safe_open(file, framework="pt", device="cpu") as f:
                for name in f.keys():
                    if _keep(name):
                        yield name, f.get_tensor(name)
        else:
            state = torch.load(file, map_location="cpu", weights_only=True, mmap=True)
            for name, t in state.items():
                if _keep(name):
                    yield name, t
            del state


def checkpoint_names(model_dir: PathLike) -> List[str]:
    """Tensor names of the checkpoint, read from the headers (safetensors) without loading any tensor."""
    kind, files = checkpoint_files(model_dir)
    names: List[str] = []
    for file in files:
        if kind == "safetensors":
            from safetensors import safe_open

            with safe_open(file, framework="pt", device="cpu") as f:
                names.extend(f.keys())
        else:
            names.extend(torch.load(file, map_location="cpu", weights_only=True, mmap=True).keys())
    return [n for n in names if _keep(n)]


def check_names(found, config, src: str = "checkpoint") -> List[str]:
    """Raise WeightsError unless ``found`` holds exactly the model's parameters; return the names to load.

    With tied embeddings ``lm_head.weight`` may be present (a copy of the embedding) and is then skipped.
    """
    expected = expected_param_names(config)
    found = [n for n in found if _keep(n)]
    duplicates = sorted(n for n, c in Counter(found).items() if c > 1)
    have = set(found)
    if _field(config, "tie_word_embeddings", False):
        have.discard("lm_head.weight")
    missing = [n for n in expected if n not in have]
    unexpected = sorted(have - set(expected))
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing: {missing[:8]}{' ...' if len(missing) > 8 else ''}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected: {unexpected[:8]}{' ...' if len(unexpected) > 8 else ''}")
    if duplicates:
        problems.append(f"duplicated across shards: {duplicates[:8]}")
    if problems:
        raise WeightsError(f"{src} does not match the model ({_field(config, 'model_type')}, "
                           f"{_field(config, 'num_hidden_layers')} layers): " + "; ".join(problems))
    return expected


def _dtype(config, dtype) -> Optional[torch.dtype]:
    if dtype is None:
        dtype = _field(config, "dtype")
    return None if dtype is None else infinicore._torch_dtype(dtype)


def get_model_state_dict(model_dir: PathLike, config=None, dtype=None, device=None) -> Dict[str, "infinicore.Tensor"]:
    """name -> infinicore.Tensor for every parameter, checked against ``config`` (default: the directory's own
    config.json, when it has one) and converted to ``dtype`` (default: the config's dtype)."""
    if config is None and os.path.isfile(os.path.join(os.fspath(model_dir), "config.json")):
        from infinilm_torch.auto_config import parse_config, read_config_file

        config = parse_config(read_config_file(model_dir), src=os.path.join(os.fspath(model_dir), "config.json"))
    if config is not None:
        check_names(checkpoint_names(model_dir), config, src=os.fspath(model_dir))
    target = _dtype(config, dtype) if config is not None or dtype is not None else None
    dev = infinicore._torch_device(device)
    out = {}
    for name, t in iter_checkpoint(model_dir):
        if config is not None and _field(config, "tie_word_embeddings", False) and name == "lm_head.weight":
            continue
        out[name] = infinicore.from_torch(t.to(device=dev, dtype=target if t.is_floating_point() else None))
    return out


def _load(engine, items, names: List[str], target: Optional[torch.dtype], progress: bool) -> int:
    """load_param each (name, tensor) whose name is in ``names``, casting floating tensors to ``target``."""
    wanted = set(names)
    bar = None
    if progress:
        try:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(names), desc="loading weights", unit="tensor", leave=False)
        except ImportError:
            pass
    loaded = 0
    for name, t in items:
        if name not in wanted:
            continue  # lm_head.weight of a tied model, rotary buffers
        t = (t._underlying if isinstance(t, infinicore.Tensor) else t).detach()
        engine.load_param(name, t.to(target) if target is not None and t.is_floating_point() else t)
        loaded += 1
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    return loaded


def load_state_dict(engine, tensors, config, dtype=None, progress: bool = False, src: str = "state dict") -> int:
    """Check the names of ``tensors`` (a dict or (name, tensor) pairs, e.g. a HF model's state_dict()), then
    load each one; returns how many were loaded."""
    items = list(tensors.items()) if isinstance(tensors, dict) else list(tensors)
    names = check_names([n for n, _ in items], config, src=src)
    return _load(engine, items, names, _dtype(config, dtype), progress)


def load_weights(engine, model_dir: PathLike, config, dtype=None, progress: bool = True) -> int:
    """Load every parameter of the checkpoint in ``model_dir`` into ``engine``; returns how many were loaded.

    Checks the names first (nothing is loaded when they don't match), then streams one tensor at a time,
    converting floating-point tensors to ``dtype`` (default: the config's dtype).
    """
    names = check_names(checkpoint_names(model_dir), config, src=os.fspath(model_dir))
    return _load(engine, iter_checkpoint(model_dir), names, _dtype(config, dtype), progress)
