"""LayerNorm benchmark: ck.layer_norm_2d and the fused ck.dwconv_layer_norm against eager
PyTorch (permute + F.layer_norm + permute on NCHW, and F.layer_norm on a channels_last tensor's
N,H,W,C view), torch.compile and the measured floor, at the ConvNeXt-T/B stage shapes.

    python -m benchmarks.bench_layernorm [--quick] [--out DIR] [--dtype bf16 fp32]

On a GPU: batch 64 at 224 px, bf16 and fp32, ours = triton and cuda. On a CPU (no GPU): a short run,
labelled CPU, with ours = cpp.
"""
import sys

import torch
import torch.nn.functional as F

import convnext_kernels as ck
from benchmarks import harness

K = 7
EPS = 1e-6


def _eager_layer_norm(x, w, b):
    """ConvNeXt's channels_first LayerNorm as users write it: permute, F.layer_norm, permute.
    On a channels_last x the permutes are views and no copy is made."""
    y = F.layer_norm(x.permute(0, 2, 3, 1), (x.shape[1],), w, b, EPS)
    return y.permute(0, 3, 1, 2)


def _eager_dwconv_layer_norm(x, dw, dwb, w, b):
    return _eager_layer_norm(F.conv2d(x, dw, dwb, padding=K // 2, groups=x.shape[1]), w, b)


NAME = "layernorm"


def providers(plan, args):
    """fused (False: LayerNorm alone, True: dwconv + LayerNorm) -> name -> (format, fn)."""
    cl, nchw = torch.channels_last, torch.contiguous_format
    tables = {}
    for fused in (False, True):
        eager = _eager_dwconv_layer_norm if fused else _eager_layer_norm
        table = {"eager NCHW": (nchw, eager), "eager channels_last": (cl, eager)}
        if plan.compile:
            table["compile default"] = (cl, torch.compile(eager, dynamic=False))
        for backend in ("triton", "cuda") if plan.gpu else ("cpp",):
            if backend not in ck.available_backends():
                continue
            if fused:
                fn = lambda x, dw, dwb, w, b, backend=backend: ck.dwconv_layer_norm(  # noqa: E731
                    x, dw, dwb, w, b, EPS, backend=backend)
            else:
                fn = lambda x, w, b, backend=backend: ck.layer_norm_2d(  # noqa: E731
                    x, w, b, EPS, backend=backend)
            table[f"ours {backend}"] = (cl, fn)
        tables[fused] = table
    return tables


def cases(plan):
    return [(dtype, stage, fused) for dtype in plan.dtypes for stage in plan.stages
            for fused in (False, True)]


def describe(plan, case):
    dtype, (name, C, HW), fused = case
    return (f"{'dwconv+LN' if fused else 'LN'} {str(dtype)[6:]} {name} "
            f"{plan.batch}x{C}x{HW}x{HW}")


def make_inputs(plan, case):
    """One input set: x, [conv weight, conv bias,] norm weight, norm bias, output gradient."""
    dtype, (_, C, HW), fused = case
    device = plan.device
    x = torch.randn(plan.batch, C, HW, HW, device=device, dtype=dtype)
    conv = (torch.randn(C, 1, K, K, device=device, dtype=dtype) / K,
            torch.randn(C, device=device, dtype=dtype)) if fused else ()
    norm = (torch.randn(C, device=device, dtype=dtype), torch.randn(C, device=device, dtype=dtype))
    return (x,) + conv + norm + (torch.randn_like(x),)


def run_case(plan, tables, case):
    dtype, (name, C, HW), fused = case
    N, device = plan.batch, plan.device
    elem = torch.tensor([], dtype=dtype).element_size()
    sets = [make_inputs(plan, case)
            for _ in range(harness.rotation(2 * N * C * HW * HW * elem, device))]
    op = "dwconv_layer_norm" if fused else "layer_norm_2d"
    row = {"op": op, "case": f"{'dwconv+LN' if fused else 'LN'} {name} {N}x{C}x{HW}x{HW}",
           "stage": name, "dtype": str(dtype).replace("torch.", ""), "shape": [N, C, HW, HW]}
    harness.run_providers(plan, row, tables[fused], sets,
                          harness.activation_pass_cost(N, C, HW, HW, K * K if fused else 0, elem),
                          plan.floors)


def table_for(tables, case):
    return tables[case[2]]


def main(argv=None):
    harness.main_for(sys.modules[__name__], argv)


if __name__ == "__main__":
    main()
