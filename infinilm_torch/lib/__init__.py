"""Loader of the compiled extension `_infinilm`: checks it was built for the running torch, then imports it.

Importing it also registers every operator under torch.ops.infinilm. The build writes _build_info.py beside the
extension (see setup.py); a build for another torch release, or a CUDA build under a CPU torch, is refused here
with an ImportError saying how to rebuild, instead of failing inside the dynamic loader.
"""
import sys
import warnings
from pathlib import Path

import torch  # the extension links against libtorch; load it first

REBUILD = (
    "Rebuild it against this torch: `pip install --no-build-isolation --force-reinstall --no-deps .` in a "
    "clone of infinilm_torch (or `make build` in a checkout)"
)


def _release(version: str) -> str:
    return version.split("+")[0]


def check_build(info: dict, torch_version: str, torch_cuda):
    """Problems loading an extension built as `info` (the _build_info fields, lower-case) into a torch.

    Returns (error, warning): an error message means the extension must not be loaded.
    """
    built = info.get("torch_version")
    if built is not None and _release(built) != _release(torch_version):
        return (
            f"infinilm_torch's extension was built against torch {built}, but torch {torch_version} is imported; "
            f"the C++ ABI differs between torch releases. {REBUILD}.",
            None,
        )
    if info.get("with_cuda"):
        built_cuda = info.get("torch_cuda")
        if torch_cuda is None:
            return (
                f"infinilm_torch's extension was built with CUDA kernels (torch {built}, CUDA {built_cuda}), but the "
                f"imported torch {torch_version} is a CPU-only build. Install the CUDA build of torch {built}, or "
                f"rebuild for CPU: `INFINILM_CUDA=0 pip install --no-build-isolation --force-reinstall --no-deps .`",
                None,
            )
        if built_cuda and str(built_cuda).split(".")[0] != str(torch_cuda).split(".")[0]:
            return (
                f"infinilm_torch's extension was built for CUDA {built_cuda} (torch {built}), but the imported "
                f"torch {torch_version} uses CUDA {torch_cuda}. {REBUILD}.",
                None,
            )
        return None, None
    if torch_cuda is not None:
        return None, (
            f"infinilm_torch was built without CUDA kernels (CPU-only build against torch {built}), but torch "
            f"{torch_version} has CUDA {torch_cuda}: torch.ops.infinilm.* on CUDA tensors will fail. To compile them, "
            f"install the CUDA toolkit (nvcc {torch_cuda}) and rebuild: `INFINILM_CUDA=1 pip install "
            f"--no-build-isolation --force-reinstall --no-deps .`"
        )
    return None, None


def _load_build_info():
    try:
        from infinilm_torch.lib import _build_info
    except ImportError:
        return None  # a build older than the build record: nothing to check
    return {k.lower(): v for k, v in vars(_build_info).items() if k.isupper()}


BUILD_INFO = _load_build_info()
if BUILD_INFO is not None:
    _error, _warning = check_build(BUILD_INFO, torch.__version__, torch.version.cuda)
    if _error:
        raise ImportError(_error)
    if _warning:
        warnings.warn(_warning, RuntimeWarning, stacklevel=2)

_lib_dir = str(Path(__file__).parent)
if _lib_dir not in sys.path:
    sys.path.insert(0, _lib_dir)

try:
    import _infinilm  # noqa: E402
except ImportError as e:
    if "undefined symbol" in str(e) or "cannot open shared object" in str(e):
        built = BUILD_INFO["torch_version"] if BUILD_INFO else "an unknown torch"
        raise ImportError(
            f"infinilm_torch's extension does not load into torch {torch.__version__} (built against {built}): "
            f"{e}. {REBUILD}."
        ) from e
    if isinstance(e, ModuleNotFoundError) and e.name == "_infinilm":
        raise ImportError(
            "infinilm_torch's extension _infinilm is not built. In a checkout: `make build`; otherwise "
            "`pip install --no-build-isolation .` (see the README's Install section)"
        ) from e
    raise

from infinilm_torch.lib import _engine  # noqa: E402

_engine.install(_infinilm)

__all__ = ["_infinilm", "BUILD_INFO", "check_build"]
