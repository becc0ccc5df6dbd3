"""Pieces shared by the Triton kernels."""
import contextlib

import torch
import triton
import triton.language as tl

from ..backends import TRITON_INTERPRET

# Under TRITON_INTERPRET=1 (CPU tests) a few conversions need the care noted where it is used
# (read once, in backends.py).
INTERPRETED = TRITON_INTERPRET


@triton.jit
def cast_for_store(x, dtype: tl.constexpr, INTERPRETED: tl.constexpr):
    """fp32 -> `dtype`, rounding to nearest even. The interpreter truncates fp32 -> bf16, which
    doubles the rounding error, so there the rounding is done on the bits."""
    if INTERPRETED and dtype == tl.bfloat16:
        bits = x.to(tl.uint32, bitcast=True)
        bits = bits + 0x7FFF + ((bits >> 16) & 1)
        return (bits >> 16).to(tl.uint16).to(tl.bfloat16, bitcast=True)
    else:
        return x.to(dtype)


@triton.jit
def tile(ptr, rows, row_mask, cols, col_mask, row_stride):
    """ptr[rows, cols] of a row-major matrix, 0 where masked."""
    return tl.load(ptr + rows[:, None] * row_stride + cols[None, :],
                   mask=row_mask[:, None] & col_mask[None, :], other=0.0)


@triton.jit
def mma(a, b, acc, DOT_FP32: tl.constexpr, INPUT_PRECISION: tl.constexpr):
    """acc + a @ b on tensor cores; DOT_FP32 (the interpreter, matmul.dot_in_fp32): on fp32
    tiles."""
    if DOT_FP32:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), acc)
    else:
        return tl.dot(a, b, acc, input_precision=INPUT_PRECISION)


# The SMs of an H200 (and an H100 SXM): what launch heuristics assume where there is no GPU to
# ask (dry runs on meta tensors, the interpreter), so that those runs make a Hopper's launches.
HOPPER_SMS = 132


def sm_count(device):
    """Streaming multiprocessors of `device` (a CUDA device's own count, else HOPPER_SMS)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return HOPPER_SMS


def nhwc_buffer(out):
    """Where a kernel writes output `out` (N,H,W,C-contiguous buffers only): `out` itself when it
    is channels_last, else a channels_last twin that the caller copies into `out` afterwards
    (outputs keep the input's memory format)."""
    if out.is_contiguous(memory_format=torch.channels_last):
        return out
    return torch.empty_like(out, memory_format=torch.channels_last)


# Callables told of every Launch before it runs (benchmarks/ledger.py counts launches with
# them). One that returns True stands in for the launch: the kernel is not run (a dry run).
LAUNCH_OBSERVERS = []


@contextlib.contextmanager
def recorded_launches():
    """The list of every Launch made inside the block, recorded and not run (a dry run: the
    launchers run for real, on meta tensors if they like; their kernels do not)."""
    launches = []

    def record(launch):
        launches.append(launch)
        return True

    LAUNCH_OBSERVERS.append(record)
    try:
        yield launches
    finally:
        LAUNCH_OBSERVERS.remove(record)


class Launch:
    """One kernel launch: kernel, grid, runtime arguments, constexprs and options, and the FLOPs
    it does (for the ledger; 0 where it does no arithmetic worth counting). Launchers build these
    and call them; the kernel report (benchmarks/kernel_report.py) compiles the very same
    launches for sm_90 without a GPU."""

    def __init__(self, kernel, grid, args, constexprs, num_warps=4, num_stages=None, flops=0):
        self.kernel = kernel
        self.grid = grid
        self.args = args
        self.constexprs = constexprs
        self.options = {"num_warps": num_warps}
        if num_stages is not None:
            self.options["num_stages"] = num_stages
        self.flops = flops

    def __call__(self):
        if any([observe(self) for observe in LAUNCH_OBSERVERS]):
            return
        # Through wrap_triton where kernels are compiled, so that torch.compile traces the
        # launch into its graph inside our triton_ops (op_registration.py); it runs the
        # kernel as is in eager. The interpreter's kernels are not JITFunctions: called directly.
        kernel = self.kernel if INTERPRETED else torch.library.wrap_triton(self.kernel)
        kernel[self.grid](*self.args, **self.constexprs, **self.options)

    @property
    def name(self):
        return self.kernel.fn.__name__ if hasattr(self.kernel, "fn") else self.kernel.__name__
