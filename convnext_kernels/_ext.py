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
