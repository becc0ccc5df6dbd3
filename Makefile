SHELL := /bin/bash
# make test       set-up (venv, pinned deps, extension with CUDA compiled and linked), then tests
#                 on CPU with the Triton interpreter
# make bench      same set-up, then the main job: the benchmarks (a labelled CPU run without GPU)
# make gpu-suite  on a lent GPU machine (its own python3, no network): build in place, all tests
#                 on CUDA, all benchmarks; results and logs to $OUT (else benchmarks/results/)
VENV     := .venv
PY       := $(VENV)/bin/python
SOURCES  := setup.py $(shell find csrc -type f)
# torch guesses CUDA_HOME from a wrapper nvcc; point it at the toolkit when one is there.
CUDA_HOME ?= $(if $(wildcard /usr/local/cuda/bin/nvcc),/usr/local/cuda,)
export CUDA_HOME

.PHONY: test bench build report gpu-suite clean

$(VENV)/.installed: requirements-dev.txt
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q --disable-pip-version-check -r requirements-dev.txt
	touch $@

.build-stamp: $(VENV)/.installed $(SOURCES)
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" MAX_JOBS=$$(nproc) $(PY) setup.py -q build_ext --inplace
	touch $@

build: .build-stamp

test: build
	TRITON_INTERPRET=1 $(PY) -m pytest -q tests

bench: build
	$(PY) -m benchmarks

report: build
	$(PY) -m benchmarks.kernel_report

gpu-suite:
	PART=$(or $(PART),all) bash benchmarks/gpu_suite.sh

clean:
	rm -rf build .build-stamp convnext_kernels/*.so
