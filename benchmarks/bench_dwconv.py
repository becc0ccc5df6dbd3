"""Depthwise conv benchmark: ck.dwconv2d against cuDNN (eager F.conv2d, NCHW and channels_last),
torch.compile and the measured floor, at the ConvNeXt-T/B stage shapes.

    python -m benchmarks.bench_dwconv [--quick] [--out DIR] [--dtype bf16 fp32]

On a GPU: batch 64 at 224 px, bf16 and fp32, ours = triton and cuda backends. On a CPU (no GPU):
a short run, labelled CPU, with ours = cpp backend, small batch, fp32.
Passes: fwd (inference), bwd (grads of x, weight, bias from a kept graph), fwd+bwd.
"""
import torch
import torch.nn.functional as F

import convnext_kernels as ck
from benchmarks import harness

K = 7


def _eager(x, w, b):
    return F.conv2d(x, w, b, padding=K // 2, groups=x.shape[1])


def providers(device, with_autotune):
    """name -> (memory format of x, function of (x, w, b))."""
    cl, nchw = torch.channels_last, torch.contiguous_format
    table = {"eager NCHW": (nchw, _eager), "eager channels_last": (cl, _eager),
             "compile default": (cl, torch.compile(_eager, dynamic=False))}
    if device.type == "cuda":
        if with_autotune:
            table["compile max-autotune"] = (
                cl, torch.compile(_eager, mode="max-autotune-no-cudagraphs", dynamic=False))
        for backend in ("triton", "cuda"):
            if backend in ck.available_backends():
                table[f"ours {backend}"] = (
                    cl, lambda x, w, b, backend=backend: ck.dwconv2d(x, w, b, backend=backend))
    else:
        table["ours cpp"] = (cl, lambda x, w, b: ck.dwconv2d(x, w, b, backend="cpp"))
    return table


def run_case(results, device, dtype, name, N, C, HW, table, reps, floors):
    elem = torch.tensor([], dtype=dtype).element_size()
    numel = N * C * HW * HW
    sets = []
    for _ in range(harness.rotation(2 * numel * elem, device)):
        x = torch.randn(N, C, HW, HW, device=device, dtype=dtype)
        sets.append((x, torch.randn(C, 1, K, K, device=device, dtype=dtype) / K,
                     torch.randn(C, device=device, dtype=dtype), torch.randn_like(x)))
    # Bytes: fwd reads x, writes y; bwd reads grad and x, writes grad_x. FLOPs: 2 per tap FMA;
    # bwd does grad_x and grad_weight.
    cost = {"fwd": (2 * numel * elem, 2 * numel * K * K),
            "bwd": (3 * numel * elem, 4 * numel * K * K),
            "fwd+bwd": (5 * numel * elem, 6 * numel * K * K)}
    case = {"case": f"{name} {N}x{C}x{HW}x{HW} k{K}", "stage": name,
            "dtype": str(dtype).replace("torch.", ""), "shape": [N, C, HW, HW], "k": K}
    harness.run_providers(results, device, case, table, sets, cost, reps, floors)


def main(argv=None):
    parser = harness.parser("ck.dwconv2d benchmark")
    parser.add_argument("--autotune", action="store_true",
                        help="add torch.compile max-autotune (minutes of compiling per shape)")
    args = parser.parse_args(argv)
    plan = harness.Plan("dwconv", args)
    table = providers(plan.device, with_autotune=plan.gpu and args.autotune)
    cases = [(dtype, stage) for dtype in plan.dtypes for stage in plan.stages]
    for i, (dtype, (name, C, HW)) in enumerate(cases):
        print(f"[{i + 1}/{len(cases)}] {dtype} {name} {plan.batch}x{C}x{HW}x{HW}", flush=True)
        run_case(plan.results, plan.device, dtype, name, plan.batch, C, HW, table, plan.reps,
                 plan.floors)
    plan.finish()


if __name__ == "__main__":
    main()
