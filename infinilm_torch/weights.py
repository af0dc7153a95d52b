"""Weight loading: a HF model directory (safetensors / pytorch_model.bin) or a .gguf file -> engine.load_param.

Loading is strict: every parameter the model needs must be in the checkpoint and nothing else may be
(rotary ``inv_freq`` buffers of old checkpoints are the only names skipped). The check runs on the tensor
names alone, before any tensor is read or loaded.
"""
from __future__ import annotations

import os
import sys
from collections import Counter
from typing import Dict, Iterator, List, Optional, Tuple, Union

import torch

from infinilm_torch import infinicore, loaders
from infinilm_torch.loaders import safetensors_dir
from infinilm_torch.loaders.safetensors_dir import WeightsError, keep as _keep

PathLike = Union[str, os.PathLike]
__all__ = ["WeightsError", "expected_param_names", "expected_param_shapes", "check_names", "checkpoint_files",
           "checkpoint_names", "iter_checkpoint", "get_model_state_dict", "load_state_dict", "load_weights"]


def _field(config, name, default=None):
    return config.get(name, default) if isinstance(config, dict) else getattr(config, name, default)


def _engine_config(config):
    """A C++ LlamaConfig for ``config`` (a LlamaConfig, or a dict of its fields such as parse_config's)."""
    from infinilm_torch.lib import _infinilm

    if not isinstance(config, dict):
        return config
    cfg = _infinilm.LlamaConfig()
    for key, value in config.items():
        if hasattr(cfg, key):
            setattr(cfg, key, value)
    return cfg


def expected_param_names(config) -> List[str]:
    """The HF names of every parameter a model with this config loads, in checkpoint order (from the compiled
    model registry, which builds the model's parameter table without allocating it)."""
    from infinilm_torch.lib import _infinilm

    return [name for name, _, _ in _infinilm.param_specs(_engine_config(config))]


def expected_param_shapes(config) -> Dict[str, Tuple[int, ...]]:
    """HF name -> full (unsharded) shape of every parameter a model with this config loads."""
    from infinilm_torch.lib import _infinilm

    return {name: tuple(shape) for name, shape, _ in _infinilm.param_specs(_engine_config(config))}


def checkpoint_files(model_dir: PathLike) -> Tuple[str, List[str]]:
    """("safetensors" | "bin", files) of a HF model directory (see loaders.safetensors_dir)."""
    return safetensors_dir.checkpoint_files(model_dir)


def iter_checkpoint(model_path: PathLike, dtype: Optional[torch.dtype] = None, progress: bool = False,
                    names=None) -> Iterator[Tuple[str, torch.Tensor]]:
    """Yield (HF name, CPU tensor) for every tensor of a model directory or .gguf file (GGUF: dequantized to
    ``dtype``)."""
    return loaders.iter_tensors(model_path, dtype=dtype, progress=progress, names=names)


def checkpoint_names(model_path: PathLike) -> List[str]:
    """HF tensor names of the checkpoint, read from the headers without loading any tensor."""
    return loaders.tensor_names(model_path)


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


def _own_config(model_path: PathLike):
    """The engine fields of the checkpoint's own config (config.json or GGUF metadata), or None without one."""
    from infinilm_torch.auto_config import config_source, parse_config, read_config_file

    p = os.fspath(model_path)
    if not (loaders.is_gguf(p) or os.path.isfile(os.path.join(p, "config.json"))):
        return None
    return parse_config(read_config_file(p), src=config_source(p))


def get_model_state_dict(model_dir: PathLike, config=None, dtype=None, device=None) -> Dict[str, "infinicore.Tensor"]:
    """name -> infinicore.Tensor for every parameter, checked against ``config`` (default: the checkpoint's own
    config, when it has one) and converted to ``dtype`` (default: the config's dtype)."""
    if config is None:
        config = _own_config(model_dir)
    if config is not None:
        check_names(checkpoint_names(model_dir), config, src=os.fspath(model_dir))
    target = _dtype(config, dtype) if config is not None or dtype is not None else None
    dev = infinicore._torch_device(device)
    out = {}
    for name, t in iter_checkpoint(model_dir, dtype=target):
        if config is not None and _field(config, "tie_word_embeddings", False) and name == "lm_head.weight":
            continue
        out[name] = infinicore.from_torch(t.to(device=dev, dtype=target if t.is_floating_point() else None))
    return out


def _load(engine, items, names: List[str], target: Optional[torch.dtype], progress: bool) -> int:
    """load_param each (name, tensor) whose name is in ``names``, casting floating tensors to ``target``."""
    wanted = set(names)
    bar = None
    if progress and sys.stderr.isatty():  # no bar fragments in piped output or logs
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


def load_weights(engine, model_path: PathLike, config, dtype=None, progress: bool = True) -> int:
    """Load every parameter of the checkpoint (a HF model directory or a .gguf file) into ``engine``; returns
    how many were loaded.

    Checks the names first (nothing is loaded when they don't match), then streams one tensor at a time,
    converting floating-point tensors to ``dtype`` (default: the config's dtype); GGUF tensors are
    dequantized as they are read. A progress bar shows on a terminal when ``progress``.
    """
    names = check_names(checkpoint_names(model_path), config, src=os.fspath(model_path))
    target = _dtype(config, dtype)
    if loaders.is_gguf(model_path):  # the GGUF reader draws its own bar (dequantizing is the slow part)
        items = iter_checkpoint(model_path, dtype=target, progress=progress, names=set(names))
        return _load(engine, items, names, target, False)
    return _load(engine, iter_checkpoint(model_path), names, target, progress)
