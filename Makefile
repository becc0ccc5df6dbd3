SHELL := /bin/bash
# make test       set-up (venv, pinned deps, extension with CUDA compiled and linked), lint
#                 (ruff, clang-format), then tests on CPU with the Triton interpreter
# make bench      same set-up, then the main job: the benchmarks (a labelled CPU run without GPU)
# make gpu-prep   on this machine, for a lent GPU machine: a venv of its stack (python 3.12,
#                 torch 2.11 CUDA 13.0, triton 3.6), _C built there for sm_90a and stripped into
#                 build/gpu/ with the commit it was built from; prints the device call to make
# make gpu        on the GPU machine (its own python3, no network): the campaign's PLAN (quick
#                 by default: the headline numbers in one call) within BUDGET seconds, results
#                 to $(OUT) (see README "On a GPU")
# make rehearse   the quick plan on this CPU (interpreter, tiny shapes): its plumbing
# make timm-tests timm's own tests/test_models.py over converted ConvNeXt models
# make compat     the oldest supported versions (torch 2.11, triton 3.6, torchvision 0.26: the
#                 GPU machine's) in gpu-prep's venv and build: the test suite there
#                 (COMPAT_TESTS: test files, all by default; COMPAT_PYTEST_ARGS: more options)
VENV     := .venv
PY       := $(VENV)/bin/python
SOURCES  := setup.py $(shell find csrc -type f)
# torch guesses CUDA_HOME from a wrapper nvcc; point it at the toolkit when one is there.
CUDA_HOME ?= $(if $(wildcard /usr/local/cuda/bin/nvcc),/usr/local/cuda,)
export CUDA_HOME

GPU_VENV := .venv-gpu
GPU_PY   := $(GPU_VENV)/bin/python
# The GPU machine's python (3.12): on PATH, else pyenv's newest 3.12.
PYTHON312 ?= $(shell for p in python3.12 $$(ls -d $$HOME/.pyenv/versions/3.12*/bin/python3.12 \
	2>/dev/null | sort -V | tail -1); do $$p -c 'import sys; print(sys.executable)' \
	2>/dev/null && break; done)
COMPAT_TESTS ?= tests
COMPAT_PYTEST_ARGS ?=
# pytest-xdist workers: one per core, at most 8; a file's tests stay in one worker (module-scoped
# fixtures such as the campaign's rehearsal and the kernel report run once).
TEST_WORKERS ?= $(shell n=$$(nproc); echo $$(( n < 8 ? n : 8 )))
PARALLEL := -n $(TEST_WORKERS) --dist loadfile

TIMM_TESTS := build/timm-tests
# timm's own model tests over converted models: every ConvNeXt case that needs no download of
# weights and no TorchScript (which cannot script our custom ops' Python glue)
TIMM_SELECT := convnext and not torchscript and not test_model_inference and not pretrained

.PHONY: test lint bench build report gpu gpu-prep rehearse compat timm-tests clean

$(VENV)/.installed: requirements-dev.txt
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q --disable-pip-version-check -r requirements-dev.txt
	touch $@

.build-stamp: $(VENV)/.installed $(SOURCES)
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" MAX_JOBS=$$(nproc) $(PY) setup.py -q build_ext --inplace
	touch $@

build: .build-stamp

CPP_SOURCES := $(wildcard csrc/*.cpp csrc/*.h csrc/*/*.cpp csrc/*/*.h csrc/*/*.cu csrc/*/*.cuh \
                           tests/*.cpp benchmarks/*.cu)

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/clang-format --dry-run --Werror $(CPP_SOURCES)

test: build lint
	TRITON_INTERPRET=1 $(PY) -m pytest -q $(PARALLEL) tests

bench: build
	$(PY) -m benchmarks

report: build
	$(PY) -m benchmarks.kernel_report

gpu:
	python3 -m benchmarks.campaign $(or $(PLAN),quick) --budget $(or $(BUDGET),540) \
		$(if $(OUT),--out $(OUT))

rehearse: build
	$(PY) -m benchmarks.campaign quick --rehearse --out benchmarks/results/scratch/rehearsal

$(GPU_VENV)/.installed: requirements-gpu.txt
	@test -n "$(PYTHON312)" || { echo "gpu-prep: needs python 3.12 (the GPU machine's): install \
		it (e.g. pyenv install 3.12) or set PYTHON312"; exit 1; }
	$(PYTHON312) -m venv $(GPU_VENV)
	$(GPU_VENV)/bin/pip install -q --disable-pip-version-check -r requirements-gpu.txt
	touch $@

# The build is incremental (ninja); the record and the check run every time.
gpu-prep: $(GPU_VENV)/.installed
	$(GPU_PY) -m benchmarks.gpu_prep

# In the tree: gpu-prep's _C for python 3.12 sits beside the main venv's (another file name).
compat: gpu-prep
	TRITON_INTERPRET=1 $(GPU_PY) -m pytest -q -p no:cacheprovider $(PARALLEL) $(COMPAT_TESTS) \
		$(COMPAT_PYTEST_ARGS)

# timm's tests/test_models.py from its source release (PyPI), run with ck.patch_timm active.
timm-tests: build
	rm -rf $(TIMM_TESTS) && mkdir -p $(TIMM_TESTS)
	$(PY) -m pip download -q --disable-pip-version-check --no-deps --no-binary :all: \
		-d $(TIMM_TESTS) timm==$$($(PY) -c "import timm; print(timm.__version__)")
	tar xzf $(TIMM_TESTS)/timm-*.tar.gz -C $(TIMM_TESTS) --strip-components=1 \
		--wildcards '*/tests/*'
	cd $(TIMM_TESTS) && PYTHONPATH=$(CURDIR):$(CURDIR)/tests $(CURDIR)/$(PY) -m pytest -q \
		-p timm_patch_plugin -p no:cacheprovider tests/test_models.py -k "$(TIMM_SELECT)"

clean:
	rm -rf build .build-stamp convnext_kernels/*.so .cache
