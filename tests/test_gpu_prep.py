"""What `make gpu-prep` leaves for the lent GPU machine (build/gpu): a stripped _C of at most
12 MB for this python, with CUDA kernels for sm_90a, the one this process loaded, and a record of
the commit and sources it was built from that still match the tree. Runs where gpu-prep ran for
this python (`make compat` runs it first: the GPU machine's python 3.12 and torch 2.11)."""
import os
import subprocess
import sysconfig

import pytest
import torch

from benchmarks import gpu_prep, provenance
from convnext_kernels import _ext

RECORD = provenance.read_build_record()
pytestmark = pytest.mark.skipif(
    RECORD is None or RECORD.get("python") != sysconfig.get_python_version(),
    reason="gpu-prep has not built build/gpu for this python here (make compat runs it)")


def test_carried_extension_is_small_stripped_and_current():
    path = gpu_prep.carried_path()
    assert os.path.getsize(path) <= gpu_prep.MAX_MB * 2**20
    sections = subprocess.run(["readelf", "-S", "-W", path], capture_output=True, text=True,
                              check=True).stdout
    assert ".debug_info" not in sections
    assert RECORD["torch"] == torch.__version__
    assert RECORD["extension_sources"] == provenance.fingerprint(provenance.EXTENSION_SOURCES)
    assert RECORD["cuda_arch"] == "9.0a" and RECORD["commit"]


def test_this_process_runs_the_carried_extension():
    assert _ext.LOADED and _ext.BUILT_WITH_CUDA
    with open(_ext._C.__file__, "rb") as loaded, open(gpu_prep.carried_path(), "rb") as carried:
        assert loaded.read() == carried.read()


def test_cuda_kernels_are_for_sm_90a():
    cuobjdump = "/usr/local/cuda/bin/cuobjdump"
    if not os.path.exists(cuobjdump):
        pytest.skip("no cuobjdump here")
    listing = subprocess.run([cuobjdump, "--list-elf", gpu_prep.carried_path()],
                             capture_output=True, text=True, check=True).stdout
    assert "sm_90a" in listing


def test_the_device_call_names_the_carry_and_the_plan():
    text = gpu_prep.device_call(RECORD)
    assert '["build/gpu"]' in text and "benchmarks.campaign quick" in text
    assert f"timeout_s: {gpu_prep.CALL_TIMEOUT_S}" in text
