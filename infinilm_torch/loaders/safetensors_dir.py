"""HF model directories: safetensors (sharded or not), else pytorch_model.bin -> HF-named CPU tensors."""
from __future__ import annotations

import json
import os
from typing import Iterator, List, Tuple, Union

import torch

PathLike = Union[str, os.PathLike]
_IGNORED_SUFFIXES = (".rotary_emb.inv_freq",)


class WeightsError(ValueError):
    """A checkpoint whose tensor names don't match the model: missing or unexpected parameters, no weight files."""


def keep(name: str) -> bool:
    """False for buffers that old checkpoints carry but no model loads (rotary ``inv_freq``)."""
    return not name.endswith(_IGNORED_SUFFIXES)


def _read_index(index: str) -> dict:
    try:
        with open(index, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise WeightsError(f"{index}: not valid JSON ({e})") from e


def checkpoint_files(model_dir: PathLike) -> Tuple[str, List[str]]:
    """("safetensors" | "bin", files): the sharded index's files, else every *.safetensors, else pytorch_model*.bin."""
    model_dir = os.fspath(model_dir)
    if not os.path.isdir(model_dir):
        raise FileNotFoundError(f"model directory {model_dir!r} does not exist")
    for index_name, kind in (("model.safetensors.index.json", "safetensors"), ("pytorch_model.bin.index.json", "bin")):
        index = os.path.join(model_dir, index_name)
        if os.path.isfile(index):
            weight_map = _read_index(index).get("weight_map")
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


def iter_tensors(model_dir: PathLike) -> Iterator[Tuple[str, torch.Tensor]]:
    """Yield (name, CPU tensor) for every tensor of the checkpoint, one shard at a time."""
    kind, files = checkpoint_files(model_dir)
    for file in files:
        if kind == "safetensors":
            from safetensors import safe_open

            with safe_open(file, framework="pt", device="cpu") as f:
                for name in f.keys():
                    if keep(name):
                        yield name, f.get_tensor(name)
        else:
            state = torch.load(file, map_location="cpu", weights_only=True, mmap=True)
            for name, t in state.items():
                if keep(name):
                    yield name, t
            del state


def tensor_names(model_dir: PathLike) -> List[str]:
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
    return [n for n in names if keep(n)]
