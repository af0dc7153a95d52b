"""Loader of the compiled extension `_infinilm`: puts this folder on sys.path and imports it.

Importing it also registers every operator under torch.ops.infinilm.
"""
import sys
from pathlib import Path

import torch  # noqa: F401  (the extension links against libtorch; load it first)

_lib_dir = str(Path(__file__).parent)
if _lib_dir not in sys.path:
    sys.path.insert(0, _lib_dir)

import _infinilm  # noqa: E402

from infinilm_torch.lib import _engine  # noqa: E402

_engine.install(_infinilm)

__all__ = ["_infinilm"]
