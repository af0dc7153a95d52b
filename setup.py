"""Build script for infinilm_torch: one extension, infinilm_torch/lib/_infinilm, built against the installed torch.

The extension is compiled against the torch of the environment that runs this script, so build without
isolation (`pip install --no-build-isolation .`, as flash-attn, vLLM and FlashInfer do); an isolated build has no
torch and stops at once saying so. The C++ standard is whatever torch.utils.cpp_extension picks for that torch
(C++17 up to torch 2.12, C++20 from 2.13), for g++ and nvcc alike.

CPU-only when torch has no CUDA or nvcc is absent; CUDA sources (csrc/**/*.cu) are added when both are present.
INFINILM_CUDA=1 forces the CUDA build, INFINILM_CUDA=0 forces CPU-only. TORCH_CUDA_ARCH_LIST picks the GPU
architectures (default: the visible GPUs', Hopper as 9.0a, else 8.0;8.6;8.9;9.0). INFINILM_NO_EXT=1 installs the Python package
alone (the Makefile then builds the extension in place with `setup.py build_ext --inplace`, which ninja keeps
incremental). The build writes infinilm_torch/lib/_build_info.py next to the extension: the torch it was built
against, which infinilm_torch.lib checks before loading the extension.
"""
import glob
import json
import os
import sys

from setuptools import find_packages, setup

ROOT = os.path.dirname(os.path.abspath(__file__))
VERSION = "0.1.0"
NO_EXT = os.environ.get("INFINILM_NO_EXT") == "1"
DEFAULT_CUDA_ARCHS = "8.0;8.6;8.9;9.0"
# -fno-trapping-math lets `omp simd` loops with float compare-and-select clamps vectorise.
CXX_FLAGS = ["-O3", "-fno-math-errno", "-fno-trapping-math", "-Wno-unknown-pragmas", "-fopenmp"]
NVCC_FLAGS = [
    "-O3", "--expt-relaxed-constexpr", "-lineinfo",
    "-U__CUDA_NO_HALF_OPERATORS__", "-U__CUDA_NO_HALF_CONVERSIONS__",
    "-U__CUDA_NO_BFLOAT16_CONVERSIONS__", "-U__CUDA_NO_HALF2_OPERATORS__",
]
INCLUDE_DIRS = [ROOT, os.path.join(ROOT, "kernels")]

NO_TORCH_MESSAGE = """
infinilm_torch: no torch in this build environment ({python}).

The extension is compiled against the PyTorch it will run with, so it is built without build isolation
(as flash-attn, vLLM and FlashInfer are); pip's default isolated build uses a fresh environment without your
torch. Install torch first, then build in that environment:

    pip install torch                       # the torch you will run with (CPU or CUDA build)
    pip install setuptools ninja
    pip install --no-build-isolation .      # or: pip install --no-build-isolation -e .
                                            # or: python -m build --wheel --no-isolation
"""


def _import_torch():
    try:
        import torch
    except ImportError:
        sys.stderr.write(NO_TORCH_MESSAGE.format(python=sys.executable))
        sys.exit(1)
    return torch


def _want_cuda(torch, cpp_extension) -> bool:
    forced = os.environ.get("INFINILM_CUDA")
    if forced is not None:
        return forced not in ("0", "", "false", "False")
    return torch.version.cuda is not None and cpp_extension.CUDA_HOME is not None


def _cuda_arch_list(torch) -> str:
    """TORCH_CUDA_ARCH_LIST as given, else the visible GPUs' architectures (Hopper as 9.0a: its wgmma kernels),
    else the Ampere..Hopper default."""
    given = os.environ.get("TORCH_CUDA_ARCH_LIST", "").strip()
    if given:
        return given
    if torch.cuda.is_available():
        caps = sorted({torch.cuda.get_device_capability(i) for i in range(torch.cuda.device_count())})
        return ";".join(f"{major}.{minor}" + ("a" if (major, minor) == (9, 0) else "") for major, minor in caps)
    return DEFAULT_CUDA_ARCHS


def nvcc_flags(arch_list: str) -> list:
    """NVCC_FLAGS, plus INFINILM_SM90A where sm_90 devices run sm_90a code (the wgmma kernels): 9.0a in the list
    and no plain 9.0 image the driver could load instead."""
    archs = [a.strip() for a in arch_list.replace(" ", ";").split(";") if a.strip()]
    sm90a = any(a.startswith("9.0a") for a in archs) and not any(a in ("9.0", "9.0+PTX") for a in archs)
    return NVCC_FLAGS + (["-DINFINILM_SM90A"] if sm90a else [])


def sources(with_cuda: bool):
    """core + python (+ cuda) from csrc/SOURCES.txt, the list CMakeLists.txt reads too."""
    groups = {}
    with open(os.path.join(ROOT, "csrc", "SOURCES.txt"), encoding="utf-8") as f:
        for line in f:
            if line.strip() and not line.startswith("#"):
                group, pattern = line.split(maxsplit=1)
                groups.setdefault(group, []).extend(sorted(glob.glob(pattern.strip(), root_dir=ROOT)))
    return groups.get("core", []) + groups.get("python", []) + (groups.get("cuda", []) if with_cuda else [])


def build_info(torch, with_cuda: bool, arch_list: str) -> dict:
    return {
        "torch_version": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "torch_git_version": getattr(torch.version, "git_version", None),
        "with_cuda": with_cuda,
        "cuda_arch_list": arch_list if with_cuda else None,
    }


def _variant(info: dict) -> str:
    if info["with_cuda"]:
        return "cu" + "".join((info["torch_cuda"] or "").split(".")[:2])
    return "cpu"


def _local_version(info: dict) -> str:
    """PEP 440 local label naming the torch the wheel is for, e.g. 0.1.0+torch2.13.0.cpu (as vLLM's +cu128)."""
    base = info["torch_version"].split("+")[0]
    return f"{VERSION}+torch{base}.{_variant(info)}"


def _build_ext_class(cpp_extension, info: dict):
    base = cpp_extension.BuildExtension.with_options(use_ninja=True)
    text = "# Generated by setup.py: the torch this extension was built against (checked at import).\n" + "".join(
        f"{k.upper()} = {v!r}\n" for k, v in info.items()
    )

    class BuildExt(base):
        """Also writes _build_info.py beside the extension; rebuilds when the recorded torch differs."""

        def _info_paths(self):
            paths = []
            for ext in self.extensions:
                paths.append(os.path.join(os.path.dirname(self.get_ext_fullpath(ext.name)), "_build_info.py"))
                if self.inplace or getattr(self, "editable_mode", False):
                    paths.append(os.path.join(ROOT, *ext.name.split(".")[:-1], "_build_info.py"))
            return sorted(set(paths))

        def run(self):
            paths = self._info_paths()
            for path in paths:
                old = open(path).read() if os.path.exists(path) else None
                if old is not None and old != text:
                    self.force = True  # built against another torch: setuptools' timestamp check cannot see that
            super().run()
            for path in paths:
                os.makedirs(os.path.dirname(path), exist_ok=True)
                with open(path, "w") as f:
                    f.write(text)

    return BuildExt


def _extension_setup():
    """ext_modules, cmdclass and version for a build of the extension against the importable torch."""
    torch = _import_torch()
    from torch.utils import cpp_extension

    with_cuda = _want_cuda(torch, cpp_extension)
    arch_list = _cuda_arch_list(torch) if with_cuda else None
    if with_cuda:
        # cpp_extension turns this into -gencode flags (+PTX suffixes honoured).
        os.environ["TORCH_CUDA_ARCH_LIST"] = arch_list
    info = build_info(torch, with_cuda, arch_list)
    kw = dict(
        name="infinilm_torch.lib._infinilm",
        sources=sources(with_cuda),
        include_dirs=INCLUDE_DIRS,
        define_macros=[("INFINILM_WITH_CUDA", "1")] if with_cuda else [],
        extra_link_args=["-fopenmp"],
        py_limited_api=False,
    )
    # No -std flag: cpp_extension adds the standard this torch's headers need, to the g++ and the nvcc commands.
    if with_cuda:
        ext = cpp_extension.CUDAExtension(extra_compile_args={"cxx": CXX_FLAGS, "nvcc": nvcc_flags(arch_list)}, **kw)
    else:
        ext = cpp_extension.CppExtension(extra_compile_args={"cxx": CXX_FLAGS}, **kw)
    return [ext], {"build_ext": _build_ext_class(cpp_extension, info)}, _local_version(info)


def main():
    if os.environ.get("INFINILM_PRINT_BUILD_FLAGS") == "1":
        # For dev/compile_check_torch.py: what the CPU build passes to the compiler besides torch's own flags.
        json.dump({"cxx": CXX_FLAGS, "include_dirs": INCLUDE_DIRS, "sources": sources(False),
                   "cuda_sources": sorted(set(sources(True)) - set(sources(False)))}, sys.stdout)
        return
    ext_modules, cmdclass, version = ([], {}, VERSION) if NO_EXT else _extension_setup()
    setup(
        name="infinilm_torch",
        version=version,
        description="PyTorch-native LLM inference: Llama-family kernels as torch.ops and a C++ engine",
        packages=find_packages(include=["infinilm_torch", "infinilm_torch.*"]),
        ext_modules=ext_modules,
        cmdclass=cmdclass,
        python_requires=">=3.10",
        install_requires=["torch>=2.4", "safetensors", "numpy"],
        extras_require={
            "hf": ["transformers>=4.45"],
            "gguf": ["gguf"],
            "serve": ["fastapi", "uvicorn", "openai", "httpx", "jinja2"],
            "test": ["pytest", "transformers>=4.45", "scipy", "hypothesis", "accelerate", "gguf", "httpx",
                     "fastapi", "uvicorn", "openai", "jinja2", "tqdm"],
        },
        entry_points={"console_scripts": ["infinilm-torch=infinilm_torch.__main__:main"]},
    )


if __name__ == "__main__":
    main()
