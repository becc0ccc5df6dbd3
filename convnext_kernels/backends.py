"""Which backends exist on this machine, and which one serves a call.

torch   reference.py (eager PyTorch); always there.
cpp     C++ CPU kernels in _C.
triton  Triton kernels: CUDA tensors, or CPU tensors under TRITON_INTERPRET=1 (tests only).
cuda    CUDA kernels in _C.
auto    on a GPU with a measured table (measured.py), the backend the GPU campaign timed fastest
        for the op, dtype, pass and shape class, eager `torch` included; elsewhere each op's
        order (`Op.auto_order`). Where no kernel backend in that order serves (a float64 tensor
        on CUDA, a machine without _C or triton, more channels than the kernels take), eager
        torch runs with a warning, never silently.
"""
import os
import warnings
from dataclasses import dataclass, field
from typing import Callable, Dict, Tuple

import torch

from . import _ext, measured

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


def gradient_needed(*tensors):
    """Whether autograd will want a backward through these tensors (None ones ignored): what an
    op keeps for its backward (a hidden tensor, a conv output) it need not write otherwise."""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def autocast_dtype(x):
    """The dtype autocast runs matmuls in for x's device, or None outside autocast. The fused
    ops take one dtype: under autocast they run in it (statistics stay fp32 inside)."""
    # Meta tensors have no autocast. (torch.amp.is_autocast_available would say so, but
    # torch 2.11's dynamo cannot trace it and breaks fullgraph compiles of a converted model.)
    if x.device.type != "meta" and torch.is_autocast_enabled(x.device.type):
        return torch.get_autocast_dtype(x.device.type)
    return None


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


@dataclass
class Op:
    """One op's backends, declared in its module: what implements it on each backend, the order
    `auto` tries them per device type where no measured choice applies (measured.py), the
    most channels a backend's kernels take (a limit `resolve` checks, so `auto` falls back by
    rule instead of a launcher raising), and `block_stand_ins`: the backend that runs this op
    inside a FusedConvNeXtBlock whose backend has no kernel for it (the MLP has no CUDA
    kernels: a "cuda" block runs the Triton MLP)."""

    name: str
    auto_order: Dict[str, Tuple[str, ...]]
    impls: Dict[str, Callable] = field(default_factory=dict)
    max_channels: Dict[str, int] = field(default_factory=dict)
    block_stand_ins: Dict[str, str] = field(default_factory=dict)

    def in_block(self, backend):
        """The backend this op runs with inside a block asked to run on `backend`."""
        return self.block_stand_ins.get(backend, backend)

    def register(self, backend, impl, *, max_channels=None):
        if backend not in BACKENDS[1:]:
            raise ValueError(f"{self.name}: no backend {backend!r}")
        self.impls[backend] = impl
        if max_channels is not None:
            self.max_channels[backend] = max_channels

    def implemented(self):
        return ("torch",) + tuple(self.impls)

    def cannot_serve(self, backend, tensor, channels):
        """Why `backend` cannot run this op on `tensor` (with `channels` channels), or None."""
        reason = _cannot_serve(backend, tensor)
        if reason is None and backend not in self.implemented():
            reason = f"{self.name} is implemented on {self.implemented()} only"
        limit = self.max_channels.get(backend)
        if reason is None and limit is not None and channels > limit:
            reason = f"its kernels take at most {limit} channels, got {channels}"
        return reason

    def order(self, device_type):
        """The backends `auto` tries on this device type, fastest measured first."""
        return self.auto_order.get(device_type, ())

    def measured(self, tensor, channels, variant="v1"):
        """The backend the device's measured table chose for a call of this class ("torch":
        eager measured fastest), or None where there is no such measurement."""
        if tensor.device.type not in measured.DEVICE_TYPES:
            return None
        rows = tensor.numel() // max(1, channels)
        return measured.measured_choice(
            self.name, measured.DTYPE_NAMES.get(tensor.dtype, str(tensor.dtype)), int(channels),
            int(rows), gradient_needed(tensor), variant, tensor.device.type,
            tensor.device.index) or None

    def first_serving(self, backend, tensor, channels, variant="v1"):
        """The backend that serves this call: `backend`; under "auto" the measured choice where
        one serves (eager "torch" included), else the first of the device's order that can; or
        None. `variant` names a form of the op measured apart ("v2": with GRN)."""
        if backend == "auto":
            pick = self.measured(tensor, channels, variant)
            if pick == "torch" or (pick is not None
                                   and self.cannot_serve(pick, tensor, channels) is None):
                return pick
            names = self.order(tensor.device.type)
        else:
            names = (backend,)
        return next((n for n in names if self.cannot_serve(n, tensor, channels) is None), None)

    def resolve(self, backend, tensor, channels, variant="v1"):
        """The backend that serves this call on `tensor` with `channels` channels; raises
        ValueError naming why a requested one cannot; under "auto" the measured choice or the
        order's first that serves (first_serving), and eager torch with a warning where no
        kernel backend serves."""
        if not isinstance(backend, str):
            raise TypeError(f"{self.name}: backend must be a str, got {type(backend).__name__}")
        if tensor.device.type == "meta":  # shapes only, nothing runs: the reference gives them
            if backend != "auto":
                _unavailable_reason(backend)  # (raises for a name that is no backend)
            return "torch"
        if backend != "auto":
            reason = self.cannot_serve(backend, tensor, channels)
            if reason:
                raise ValueError(f"{self.name}: backend {backend!r} cannot serve this call: "
                                 f"{reason}")
            return backend
        name = self.first_serving(backend, tensor, channels, variant)
        if name is not None:
            return name
        order = self.order(tensor.device.type)
        warnings.warn(
            f"{self.name}: no kernel backend serves a {tensor.device.type} {tensor.dtype} tensor "
            f"with {channels} channels here "
            f"({'; '.join(f'{n}: {self.cannot_serve(n, tensor, channels)}' for n in order)}); "
            "running the eager PyTorch reference",
            stacklevel=3,
        )
        return "torch"
