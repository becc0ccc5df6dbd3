"""A register-resident fp32 FMA loop: the GPU's measured FMA rate, for the compute floor."""
import statistics

import torch
import triton
import triton.language as tl

from benchmarks.timing import time_calls

_ITERS = 1024
_BLOCK = 1024


@triton.jit
def _fma_loop_kernel(out_ptr, ITERS: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    a = offs.to(tl.float32) * 1e-9
    b = a + 1.0
    c = a + 2.0
    d = a + 3.0
    for _ in range(ITERS):  # four independent chains keep the FMA pipes busy
        a = a * 0.999 + 0.001
        b = b * 0.999 + 0.001
        c = c * 0.999 + 0.001
        d = d * 0.999 + 0.001
    tl.store(out_ptr + offs, a + b + c + d)


def fma_flops_per_second(device):
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    n = sms * 16 * _BLOCK
    out = torch.empty(n, device=device)
    grid = (n // _BLOCK,)
    ms = statistics.median(time_calls(
        lambda: _fma_loop_kernel[grid](out, ITERS=_ITERS, BLOCK=_BLOCK, num_warps=8), [()],
        device, warmup=3, reps=20))
    return 2 * 4 * _ITERS * n / (ms * 1e-3)
