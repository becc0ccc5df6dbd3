"""Depthwise conv benchmark: ck.dwconv2d against cuDNN (eager F.conv2d, NCHW and channels_last),
torch.compile and the measured floor, at the ConvNeXt-T/B stage shapes.

    python -m benchmarks.bench_dwconv [--quick] [--out DIR] [--dtype bf16 fp32]

On a GPU: batch 64 at 224 px, bf16 and fp32, ours = triton and cuda backends. On a CPU (no GPU):
a short run, labelled CPU, with ours = cpp backend, small batch, fp32.
Passes: fwd (inference), bwd (grads of x, weight, bias from a kept graph), fwd+bwd, and with
--passes "bwd weight" the weight and bias gradients alone.
"""
import sys

import torch
import torch.nn.functional as F

import convnext_kernels as ck
from benchmarks import harness

K = 7


def _eager(x, w, b):
    return F.conv2d(x, w, b, padding=K // 2, groups=x.shape[1])


NAME = "dwconv"


add_options = harness.add_autotune_option


def providers(plan, args):
    """name -> (memory format of x, function of (x, w, b))."""
    cl, nchw = torch.channels_last, torch.contiguous_format
    table = {"eager NCHW": (nchw, _eager), "eager channels_last": (cl, _eager),
             **harness.compile_providers(plan, args, cl, _eager)}
    for backend in ("triton", "cuda") if plan.gpu else ("cpp",):
        if backend in ck.available_backends():
            table[f"ours {backend}"] = (
                cl, lambda x, w, b, backend=backend: ck.dwconv2d(x, w, b, backend=backend))
    return table


def cases(plan):
    return [(dtype, stage) for dtype in plan.dtypes for stage in plan.stages]


def describe(plan, case):
    dtype, (name, C, HW) = case
    return f"dwconv {str(dtype)[6:]} {name} {plan.batch}x{C}x{HW}x{HW}"


# The weight gradient on its own row (cuDNN is weakest there): from a kept graph, the gradient of
# the weight (and bias) only, so eager runs cuDNN's weight-gradient kernel alone.
WEIGHT_GRAD = "bwd weight"


def weight_grad(fn, y, x, w, b, grad):
    torch.autograd.grad(y, (w, b), grad, retain_graph=True)


def make_inputs(plan, case):
    """One input set: x, weight, bias, then the output gradient."""
    dtype, (_, C, HW) = case
    x = torch.randn(plan.batch, C, HW, HW, device=plan.device, dtype=dtype)
    return (x, torch.randn(C, 1, K, K, device=plan.device, dtype=dtype) / K,
            torch.randn(C, device=plan.device, dtype=dtype), torch.randn_like(x))


def run_case(plan, table, case):
    dtype, (name, C, HW) = case
    N, device = plan.batch, plan.device
    elem = torch.tensor([], dtype=dtype).element_size()
    sets = [make_inputs(plan, case)
            for _ in range(harness.rotation(2 * N * C * HW * HW * elem, device))]
    row = {"op": "dwconv2d", "case": f"{name} {N}x{C}x{HW}x{HW} k{K}", "stage": name,
           "dtype": str(dtype).replace("torch.", ""), "shape": [N, C, HW, HW], "k": K}
    cost = harness.activation_pass_cost(N, C, HW, HW, K * K, elem)
    # the weight gradient alone reads grad and x once and does the bwd's weight-tap FMAs
    cost[WEIGHT_GRAD] = (2 * N * C * HW * HW * elem, 2 * N * C * HW * HW * K * K)
    harness.run_providers(plan, row, table, sets, cost, plan.floors,
                          extra_passes={WEIGHT_GRAD: weight_grad})


def table_for(table, case):
    return table


def main(argv=None):
    harness.main_for(sys.modules[__name__], argv)


if __name__ == "__main__":
    main()
