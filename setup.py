"""Build of convnext_kernels._C.

C++ CPU kernels are always built. CUDA kernels are added when torch is a CUDA build and nvcc is
found, or when FORCE_CUDA=1 or TORCH_CUDA_ARCH_LIST is set (cross-compiling with no GPU: the arch
list then defaults to 9.0+PTX). Set CK_NO_CUDA=1 to build the CPU kernels only, CK_DEBUG=1 for an
unoptimised build with debug info.
"""
import glob
import os
import shutil

from setuptools import find_packages, setup

# torch guesses CUDA_HOME from `which nvcc`, which may be a wrapper; prefer the real toolkit.
if "CUDA_HOME" not in os.environ and os.path.exists("/usr/local/cuda/bin/nvcc"):
    os.environ["CUDA_HOME"] = "/usr/local/cuda"

import torch  # noqa: E402
from torch.utils import cpp_extension  # noqa: E402

ROOT = os.path.dirname(os.path.abspath(__file__))


def _want_cuda():
    if os.environ.get("CK_NO_CUDA") == "1":
        return False
    if os.environ.get("FORCE_CUDA") == "1" or os.environ.get("TORCH_CUDA_ARCH_LIST"):
        return True
    nvcc_found = cpp_extension.CUDA_HOME is not None or shutil.which("nvcc") is not None
    return torch.version.cuda is not None and nvcc_found


def _cuda_include_dirs():
    """Headers of the pip NVIDIA packages (cuBLAS, cuSPARSE, ...) that ATen's CUDA headers need
    when the system toolkit lacks them."""
    site = os.path.dirname(os.path.dirname(torch.__file__))
    return sorted(d for d in glob.glob(os.path.join(site, "nvidia", "*", "include"))
                  if os.path.isdir(d))


def _extension():
    cpp_sources = ["csrc/ops.cpp", "csrc/autograd.cpp"] + sorted(glob.glob("csrc/cpu/*.cpp"))
    # -fopenmp: at::parallel_for is a header template that runs serially unless the caller is
    # compiled with OpenMP (_OPENMP); without it every CPU kernel ran on one thread. The
    # extension then needs libgomp.so.1, which torch has loaded already (the same runtime).
    # fp-contract: a*b+c as one FMA in the SIMD kernels (ISO C++ mode turns contraction off).
    # no-trapping-math: no kernel reads the floating-point exception flags, and with them kept GCC
    # leaves a clamp (a select of floats) as a branch, which stops a loop's vectorisation (the
    # GELU's exp and erfc: csrc/cpu/gelu_kernels.h); results are the same.
    # no-psabi: the vector helpers of the SIMD kernels (csrc/cpu/dwconv_simd.h) are always inlined
    # into row functions compiled for AVX2 or AVX-512; GCC still warns, at the end of each file,
    # that their out-of-line forms (never emitted) would pass AVX vectors under the default ABI.
    # CK_DEBUG=1: no optimisation, with debug info, for a debugger (the kernels run many times
    # slower); it builds in a fraction of the time, which is why the packaging test uses it.
    debug = os.environ.get("CK_DEBUG") == "1"
    cxx_flags = ["-O0" if debug else "-O3", "-fopenmp", "-ffp-contract=fast",
                 "-fno-trapping-math", "-Wno-psabi"] + (["-g"] if debug else [])
    link_flags = ["-fopenmp"]
    if not _want_cuda():
        return cpp_extension.CppExtension(
            "convnext_kernels._C", cpp_sources, extra_compile_args={"cxx": cxx_flags},
            extra_link_args=link_flags,
        )
    if not torch.cuda.is_available() and not os.environ.get("TORCH_CUDA_ARCH_LIST"):
        os.environ["TORCH_CUDA_ARCH_LIST"] = "9.0+PTX"
    return cpp_extension.CUDAExtension(
        "convnext_kernels._C",
        cpp_sources + sorted(glob.glob("csrc/cuda/*.cu")),
        include_dirs=_cuda_include_dirs(),
        define_macros=[("WITH_CUDA", None)],
        extra_compile_args={"cxx": cxx_flags, "nvcc": ["-O3", "-lineinfo"]},
        extra_link_args=link_flags,
    )


setup(
    name="convnext-kernels",
    version="0.1.0",
    packages=find_packages(include=["convnext_kernels", "convnext_kernels.*"]),
    ext_modules=[_extension()],
    cmdclass={"build_ext": cpp_extension.BuildExtension},
)
