SHELL := /bin/bash
# make test       set-up (venv, pinned deps, extension with CUDA compiled and linked), lint
#                 (ruff, clang-format), then tests on CPU with the Triton interpreter
# make bench      same set-up, then the main job: the benchmarks (a labelled CPU run without GPU)
# make gpu        on a lent GPU machine (its own python3, no network): the campaign's STEPS
#                 (default all) within BUDGET seconds, results to $OUT (see README "On a GPU")
# make rehearse   the whole campaign on this CPU (interpreter, tiny shapes): the plumbing
# make timm-tests timm's own tests/test_models.py over converted ConvNeXt models
# make compat     the oldest supported versions (torch 2.11, triton 3.6, torchvision 0.26) in a
#                 second venv: build, the test suite and the kernel report there
#                 (COMPAT_TESTS: test files, all by default; COMPAT_PYTEST_ARGS: more pytest
#                 options; COMPAT_BUILD_ENV, e.g. CK_NO_CUDA=1: for the build and the tests)
VENV     := .venv
PY       := $(VENV)/bin/python
SOURCES  := setup.py $(shell find csrc -type f)
# torch guesses CUDA_HOME from a wrapper nvcc; point it at the toolkit when one is there.
CUDA_HOME ?= $(if $(wildcard /usr/local/cuda/bin/nvcc),/usr/local/cuda,)
export CUDA_HOME

COMPAT   := .venv-compat
COMPAT_TREE := build/compat
COMPAT_TESTS ?= tests
COMPAT_PYTEST_ARGS ?=
COMPAT_BUILD_ENV ?=

TIMM_TESTS := build/timm-tests
# timm's own model tests over converted models: every ConvNeXt case that needs no download of
# weights and no TorchScript (which cannot script our custom ops' Python glue)
TIMM_SELECT := convnext and not torchscript and not test_model_inference and not pretrained

.PHONY: test lint bench build report gpu rehearse compat timm-tests clean

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
	TRITON_INTERPRET=1 $(PY) -m pytest -q tests

bench: build
	$(PY) -m benchmarks

report: build
	$(PY) -m benchmarks.kernel_report

gpu:
	python3 -m benchmarks.campaign $(or $(STEPS),all) --budget $(or $(BUDGET),540) \
		$(if $(OUT),--out $(OUT))

rehearse: build
	$(PY) -m benchmarks.campaign all --rehearse --out benchmarks/results/scratch/rehearsal

$(COMPAT)/.installed: requirements-compat.txt
	python3 -m venv $(COMPAT)
	$(COMPAT)/bin/pip install -q --disable-pip-version-check -r requirements-compat.txt
	touch $@

# A copy of the sources, so that its in-place build does not replace the main venv's _C.
compat: $(COMPAT)/.installed
	rm -rf $(COMPAT_TREE) && mkdir -p $(COMPAT_TREE)
	tar cf - --exclude=./build --exclude='./.venv*' --exclude='*.so' --exclude=./.git \
		--exclude=./.cache --exclude=./benchmarks/results . | tar xf - -C $(COMPAT_TREE)
	cd $(COMPAT_TREE) && PATH="$(CURDIR)/$(COMPAT)/bin:$$PATH" MAX_JOBS=$$(nproc) $(COMPAT_BUILD_ENV) \
		$(CURDIR)/$(COMPAT)/bin/python setup.py -q build_ext --inplace
	cd $(COMPAT_TREE) && TRITON_INTERPRET=1 $(COMPAT_BUILD_ENV) $(CURDIR)/$(COMPAT)/bin/python -m pytest -q \
		$(COMPAT_TESTS) $(COMPAT_PYTEST_ARGS)

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
