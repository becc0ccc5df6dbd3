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


def run_case(results, device, dtype, name, N, C, HW, table, reps, bandwidth, flop_rate):
    elem = torch.tensor([], dtype=dtype).element_size()
    numel = N * C * HW * HW
    per_set = 2 * numel * elem
    sets = []
    for _ in range(harness.rotation(per_set, device)):
        x = torch.randn(N, C, HW, HW, device=device, dtype=dtype)
        sets.append((x, torch.randn(C, 1, K, K, device=device, dtype=dtype) / K,
                     torch.randn(C, device=device, dtype=dtype), torch.randn_like(x)))
    # Bytes: fwd reads x, writes y; bwd reads grad and x, writes grad_x. FLOPs: 2 per tap FMA;
    # bwd does grad_x and grad_weight.
    cost = {"fwd": (2 * numel * elem, 2 * numel * K * K),
            "bwd": (3 * numel * elem, 4 * numel * K * K),
            "fwd+bwd": (5 * numel * elem, 6 * numel * K * K)}
    timings = {}
    for provider, (fmt, fn) in table.items():
        inputs = [tuple(t.contiguous(memory_format=fmt) if t.dim() == 4 else t for t in s)
                  for s in sets]
        leaves = [tuple(t.detach().requires_grad_() for t in s[:3]) + (s[3],) for s in inputs]

        def fwd(x, w, b, g):
            with torch.no_grad():
                fn(x, w, b)

        def fwd_bwd(x, w, b, g):
            torch.autograd.grad(fn(x, w, b), (x, w, b), g)

        kept = [(fn(x, w, b), x, w, b, g) for x, w, b, g in leaves]

        def bwd(y, x, w, b, g):
            torch.autograd.grad(y, (x, w, b), g, retain_graph=True)

        for pass_name, f, args in (("fwd", fwd, inputs), ("bwd", bwd, kept),
                                   ("fwd+bwd", fwd_bwd, leaves)):
            try:
                stats = harness.summarize(harness.time_calls(f, args, device, reps=reps))
            except Exception as error:  # e.g. a compiled graph that refuses retain_graph
                print(f"  {provider} {pass_name}: not measured ({type(error).__name__}: {error})")
                continue
            bytes_moved, flops = cost[pass_name]
            floor = harness.floor_ms(bytes_moved, flops, bandwidth, flop_rate)
            timings[(provider, pass_name)] = stats["median_ms"]
            results.add(case=f"{name} {N}x{C}x{HW}x{HW} k{K}", stage=name, dtype=str(dtype)[6:],
                        shape=[N, C, HW, HW], k=K, memory_format=str(fmt)[6:], provider=provider,
                        **{"pass": pass_name}, **stats, bytes=bytes_moved, flops=flops,
                        floor_ms=floor, pct_of_floor=100 * floor / stats["median_ms"])
        del kept
    for row in results.rows:
        if row["stage"] == name and row["dtype"] == str(dtype)[6:]:
            for base in ("eager NCHW", "eager channels_last", "compile default",
                         "compile max-autotune"):
                ref = timings.get((base, row["pass"]))
                if ref:
                    row["speedup_vs_" + base.replace(" ", "_").replace("-", "_")] = \
                        ref / row["median_ms"]


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
            run_case(results, device, DTYPES[dt], name, batch, C, HW, table, reps, bandwidth,
                     flop_rate)
    base = results.write(args.out)
    print(results.markdown())
    print(f"wrote {base}.json and {base}.md")


if __name__ == "__main__":
    main()
