"""Which backends exist on this machine, and which one serves a call.

torch   reference.py (eager PyTorch); always there.
cpp     C++ CPU kernels in _C.
triton  Triton kernels: CUDA tensors, or CPU tensors under TRITON_INTERPRET=1 (tests only).
cuda    CUDA kernels in _C.
auto    the fastest measured choice for the op and device (AUTO_ORDER). Where no kernel backend in
        that order serves (a float64 tensor on CUDA, a machine without _C or triton), eager torch
        runs with a warning, never silently.
"""
import os
import warnings

import torch

from . import _ext

BACKENDS = ("torch", "cpp", "triton", "cuda")
KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
CPP_DTYPES = KERNEL_DTYPES + (torch.float64,)

TRITON_INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"


def _import_triton():
    try:
        import triton  # noqa: F401
    except ImportError as error:
        return f"{type(error).__name__}: {error}"
    return None


TRITON_IMPORT_ERROR = _import_triton()


def triton_importable():
    return TRITON_IMPORT_ERROR is None


def _unavailable_reason(name):
    """Why `name` cannot run on this machine at all, or None."""
    if name == "torch":
        return None
    if name == "cpp":
        return None if _ext.LOADED else f"the extension _C is not built ({_ext.LOAD_ERROR})"
    if name == "triton":
        if TRITON_IMPORT_ERROR:
            return f"triton does not import ({TRITON_IMPORT_ERROR})"
        if not (torch.cuda.is_available() or TRITON_INTERPRET):
            return "no CUDA device, and TRITON_INTERPRET=1 is not set"
        return None
    if name == "cuda":
        if not _ext.LOADED:
            return f"the extension _C is not built ({_ext.LOAD_ERROR})"
        if not _ext.BUILT_WITH_CUDA:
            return "_C was built without CUDA kernels"
        if not torch.cuda.is_available():
            return "no CUDA device"
        return None
    raise ValueError(f"backend must be one of {BACKENDS + ('auto',)}, got {name!r}")


def available_backends():
    """The backends that can run on this machine, e.g. ['torch', 'cpp', 'triton', 'cuda']."""
    return [name for name in BACKENDS if _unavailable_reason(name) is None]


def _cannot_serve(name, tensor):
    """Why `name` cannot serve `tensor` (device, dtype), or None."""
    reason = _unavailable_reason(name)
    if reason:
        return reason
    device, dtype = tensor.device.type, tensor.dtype
    if name == "cpp":
        if device != "cpu":
            return f"it runs on CPU tensors, got a {device} tensor"
        if dtype not in CPP_DTYPES:
            return f"it takes {CPP_DTYPES}, got {dtype}"
    elif name == "cuda":
        if device != "cuda":
            return f"it runs on CUDA tensors, got a {device} tensor"
        if dtype not in KERNEL_DTYPES:
            return f"it takes {KERNEL_DTYPES}, got {dtype}"
    elif name == "triton":
        if device != "cuda" and not (device == "cpu" and TRITON_INTERPRET):
            return f"it runs on CUDA tensors (CPU only under TRITON_INTERPRET=1), got {device}"
        if dtype not in KERNEL_DTYPES:
            return f"it takes {KERNEL_DTYPES}, got {dtype}"
    return None


# Backends tried by `auto`, per (op, device type), fastest measured first. On the 2-core CI
# machine (benchmarks/results/cpu-*/results.md) eager PyTorch beat the cpp kernels in the
# forward of dwconv (ours 0.14-0.40x oneDNN's) and LayerNorm (0.38-0.62x ATen's), and the cpp
# MLP without GRN is 0.76-0.95x eager in fwd+bwd (its backward recomputes fc1: one more GEMM on
# a compute-bound CPU), so auto keeps torch on CPU for them; `backend="cpp"` still runs ours.
# The cpp GRN (fwd 3-6x, fwd+bwd 1.3-3x eager) and the cpp MLP with GRN (fwd 1.1-2x, fwd+bwd
# 0.96-1.03x) are the CPU default.
# The V1 block on CUDA: the whole-block Triton op first, chosen by count, not yet by a timing:
# 12 launches per forward+backward against 30 or more composing the ops (benchmarks/ledger.py).
AUTO_ORDER = {("dwconv2d", "cpu"): ("torch",), ("layer_norm_2d", "cpu"): ("torch",),
              ("dwconv_layer_norm", "cpu"): ("torch",), ("mlp", "cpu"): ("torch",),
              ("block", "cuda"): ("triton", "cuda")}
DEFAULT_AUTO_ORDER = {"cpu": ("cpp",), "cuda": ("cuda", "triton")}


def resolve(backend, tensor, op, implemented=BACKENDS, variant=None):
    """The backend that serves `op` on `tensor`, among the backends that implement `op`; raises
    ValueError naming why a requested one cannot. `variant` names a form of the op with its own
    auto order (e.g. "mlp_grn")."""
    if not isinstance(backend, str):
        raise TypeError(f"{op}: backend must be a str, got {type(backend).__name__}")
    if tensor.device.type == "meta":  # shapes only, nothing runs: the reference gives them
        if backend != "auto":
            _unavailable_reason(backend)  # (raises for a name that is no backend)
        return "torch"
    if backend != "auto":
        reason = _cannot_serve(backend, tensor)
        if reason is None and backend not in implemented:
            reason = f"{op} is implemented on {implemented} only"
        if reason:
            raise ValueError(f"{op}: backend {backend!r} cannot serve this call: {reason}")
        return backend
    device = tensor.device.type
    preferred = AUTO_ORDER.get((variant or op, device), DEFAULT_AUTO_ORDER.get(device, ()))
    for name in preferred:
        if name in implemented and _cannot_serve(name, tensor) is None:
            return name
    warnings.warn(
        f"{op}: no kernel backend serves a {tensor.device.type} {tensor.dtype} tensor here "
        f"({'; '.join(f'{n}: {_cannot_serve(n, tensor)}' for n in preferred)}); "
        "running the eager PyTorch reference",
        stacklevel=3,
    )
    return "torch"
