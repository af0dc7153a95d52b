"""Build script for infinilm_torch: one extension, infinilm_torch/lib/_infinilm.

CPU-only when torch has no CUDA or nvcc is absent; CUDA sources (csrc/**/*.cu) are added when both
are present. INFINILM_CUDA=1 forces the CUDA build, INFINILM_CUDA=0 forces CPU-only.
INFINILM_NO_EXT=1 installs the Python package alone (the Makefile then builds the extension in place with
`setup.py build_ext --inplace`, which ninja keeps incremental).
"""
import glob
import os

from setuptools import find_packages, setup
from torch.utils import cpp_extension

ROOT = os.path.dirname(os.path.abspath(__file__))


def _want_cuda() -> bool:
    forced = os.environ.get("INFINILM_CUDA")
    if forced is not None:
        return forced not in ("0", "", "false", "False")
    import torch

    return torch.version.cuda is not None and cpp_extension.CUDA_HOME is not None


def _sources(with_cuda: bool):
    """core + python (+ cuda) from csrc/SOURCES.txt, the list CMakeLists.txt reads too."""
    groups = {}
    with open(os.path.join(ROOT, "csrc", "SOURCES.txt"), encoding="utf-8") as f:
        for line in f:
            if line.strip() and not line.startswith("#"):
                group, pattern = line.split(maxsplit=1)
                groups.setdefault(group, []).extend(sorted(glob.glob(pattern.strip(), root_dir=ROOT)))
    return groups.get("core", []) + groups.get("python", []) + (groups.get("cuda", []) if with_cuda else [])


def _extension():
    with_cuda = _want_cuda()
    openmp = ["-fopenmp"]
    # -fno-trapping-math lets `omp simd` loops with float compare-and-select clamps vectorise.
    cxx = ["-O3", "-std=c++17", "-fno-math-errno", "-fno-trapping-math", "-Wno-unknown-pragmas"] + openmp
    define = [("INFINILM_WITH_CUDA", "1")] if with_cuda else []
    kw = dict(
        name="infinilm_torch.lib._infinilm",
        sources=_sources(with_cuda),
        include_dirs=[ROOT, os.path.join(ROOT, "kernels")],
        define_macros=define,
        extra_link_args=openmp,
        py_limited_api=False,
    )
    if with_cuda:
        arch = os.environ.get("INFINILM_CUDA_ARCH", "90")
        nvcc = [
            "-O3", "-std=c++17", "--expt-relaxed-constexpr", "-lineinfo",
            f"-gencode=arch=compute_{arch},code=sm_{arch}",
            "-U__CUDA_NO_HALF_OPERATORS__", "-U__CUDA_NO_HALF_CONVERSIONS__",
            "-U__CUDA_NO_BFLOAT16_CONVERSIONS__", "-U__CUDA_NO_HALF2_OPERATORS__",
        ]
        return cpp_extension.CUDAExtension(extra_compile_args={"cxx": cxx, "nvcc": nvcc}, **kw)
    return cpp_extension.CppExtension(extra_compile_args={"cxx": cxx}, **kw)


setup(
    name="infinilm_torch",
    version="0.1.0",
    description="PyTorch-native LLM inference: Llama-family kernels as torch.ops and a C++ engine",
    packages=find_packages(include=["infinilm_torch", "infinilm_torch.*"]),
    ext_modules=[] if os.environ.get("INFINILM_NO_EXT") == "1" else [_extension()],
    cmdclass={"build_ext": cpp_extension.BuildExtension.with_options(use_ninja=True)},
    python_requires=">=3.10",
    install_requires=["torch>=2.4", "safetensors", "numpy"],
    extras_require={"test": ["pytest", "transformers>=4.45", "scipy"], "hf": ["transformers>=4.45"]},
    entry_points={"console_scripts": ["infinilm-torch=infinilm_torch.__main__:main"]},
)
