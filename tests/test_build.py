"""The build this suite runs against: _C with CPU kernels, CUDA kernels compiled and linked
wherever a CUDA build of torch and nvcc are present, and the backends that follow."""
import os
import shutil

import torch

import convnext_kernels as ck
from convnext_kernels import _ext


def _nvcc_present():
    home = os.environ.get("CUDA_HOME", "/usr/local/cuda")
    return os.path.exists(os.path.join(home, "bin", "nvcc")) or shutil.which("nvcc") is not None


def test_extension_loaded():
    assert _ext.LOADED, _ext.LOAD_ERROR
    assert "cpp" in ck.available_backends()


def test_cuda_kernels_compiled_and_linked_when_toolkit_present():
    if torch.version.cuda and _nvcc_present() and os.environ.get("CK_NO_CUDA") != "1":
        assert _ext.BUILT_WITH_CUDA
        # The CUDA implementations are registered with the dispatcher, i.e. linked into _C.
        assert torch._C._dispatch_has_kernel_for_dispatch_key("convnext_kernels::dwconv2d",
                                                              "CUDA")


def test_triton_backend_available():
    assert "triton" in ck.available_backends()
