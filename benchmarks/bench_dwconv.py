"""Depthwise conv benchmark: ck.dwconv2d against cuDNN (eager F.conv2d, NCHW and channels_last),
torch.compile and the measured floor, at the ConvNeXt-T/B stage shapes.

    python -m benchmarks.bench_dwconv [--quick] [--out DIR] [--dtype bf16 fp32]

On a GPU: batch 64 at 224 px, bf16 and fp32, ours = triton and cuda backends. On a CPU (no GPU):
a short run, labelled CPU, with ours = cpp backend, small batch, fp32.
Passes: fwd (inference), bwd (grads of x, weight, bias from a kept graph), fwd+bwd.
"""
import argparse
import os

import torch
import torch.nn.functional as F

import convnext_kernels as ck
from benchmarks import harness

# (name, C, H=W) at 224 px: ConvNeXt-T stages, then ConvNeXt-B stages.
STAGES = [("T1", 96, 56), ("T2", 192, 28), ("T3", 384, 14), ("T4", 768, 7),
          ("B1", 128, 56), ("B2", 256, 28), ("B3", 512, 14), ("B4", 1024, 7)]
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
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
    parser = argparse.ArgumentParser(description="ck.dwconv2d benchmark")
    parser.add_argument("--out", default=os.path.join("benchmarks", "results"))
    parser.add_argument("--quick", action="store_true", help="ConvNeXt-T stages only, few calls")
    parser.add_argument("--dtype", nargs="+", choices=sorted(DTYPES), default=None)
    parser.add_argument("--autotune", action="store_true",
                        help="add torch.compile max-autotune (minutes of compiling per shape)")
    args = parser.parse_args(argv)

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    gpu = device.type == "cuda"
    dtypes = args.dtype or (["bf16", "fp32"] if gpu else ["fp32"])
    stages = STAGES[:4] if (args.quick or not gpu) else STAGES
    batch = 64 if gpu else 2
    reps = (30 if args.quick else 100) if gpu else 10

    results = harness.Results("dwconv", device)
    bandwidth, flop_rate = harness.copy_bandwidth(device), harness.fma_rate(device)
    results.floors = {"copy_bandwidth_GBps": bandwidth / 1e9, "fma_TFLOPs": flop_rate / 1e12}
    print(f"dwconv on {results.env['device']}: copy {bandwidth / 1e9:.0f} GB/s, "
          f"FMA {flop_rate / 1e12:.1f} TFLOP/s")
    table = providers(device, with_autotune=gpu and args.autotune)
    for i, dt in enumerate(dtypes):
        for j, (name, C, HW) in enumerate(stages):
            print(f"[{i * len(stages) + j + 1}/{len(dtypes) * len(stages)}] {dt} {name} "
                  f"{batch}x{C}x{HW}x{HW}", flush=True)
            run_case(results, device, DTYPES[dt], name, batch, C, HW, table, reps,
                     (bandwidth, flop_rate))
    base = results.write(args.out)
    print(results.markdown())
    print(f"wrote {base}.json and {base}.md")


if __name__ == "__main__":
    main()
