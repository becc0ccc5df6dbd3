"""Loads the compiled extension `_C` if it was built; the package works without it."""
try:
    from . import _C  # noqa: F401  (registers the convnext_kernels::* C++ ops)

    LOADED = True
    LOAD_ERROR = None
    BUILT_WITH_CUDA = _C.built_with_cuda()
except ImportError as error:  # not built, or built against another torch
    LOADED = False
    LOAD_ERROR = f"{type(error).__name__}: {error}"
    BUILT_WITH_CUDA = False


def release_cpu_pool():
    """Frees the memory the cpp ops keep for reuse: blocks of 1 MB or more that their outputs and
    buffers held, kept when freed (at most CK_CPU_POOL_MB, 1024 by default; 0: none kept) so
    that the next call of the same shape need not map and fault in fresh pages
    (csrc/cpu/output_pool.h). Returns the bytes freed; the pool fills again as the ops run."""
    return _C.release_cpu_pool() if LOADED else 0
