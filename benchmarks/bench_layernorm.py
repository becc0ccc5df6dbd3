"""LayerNorm benchmark: ck.layer_norm_2d and the fused ck.dwconv_layer_norm against eager
PyTorch (permute + F.layer_norm + permute on NCHW, and F.layer_norm on a channels_last tensor's
N,H,W,C view), torch.compile and the measured floor, at the ConvNeXt-T/B stage shapes.

    python -m benchmarks.bench_layernorm [--quick] [--out DIR] [--dtype bf16 fp32]

On a GPU: batch 64 at 224 px, bf16 and fp32, ours = triton and cuda. On a CPU (no GPU): a short run,
labelled CPU, with ours = cpp (the fused op composes the cpp dwconv and LayerNorm there).
"""
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


def providers(device, fused):
    eager = _eager_dwconv_layer_norm if fused else _eager_layer_norm
    cl, nchw = torch.channels_last, torch.contiguous_format
    table = {"eager NCHW": (nchw, eager), "eager channels_last": (cl, eager),
             "compile default": (cl, torch.compile(eager, dynamic=False))}
    ours = ["triton", "cuda"] if device.type == "cuda" else ["cpp"]
    for backend in (b for b in ours if b in ck.available_backends()):
        if fused:
            fn = lambda x, dw, dwb, w, b, backend=backend: ck.dwconv_layer_norm(  # noqa: E731
                x, dw, dwb, w, b, EPS, backend=backend)
        else:
            fn = lambda x, w, b, backend=backend: ck.layer_norm_2d(  # noqa: E731
                x, w, b, EPS, backend=backend)
        table[f"ours {backend}"] = (cl, fn)
    return table


def run_case(results, device, dtype, name, N, C, HW, fused, table, reps, floors):
    elem = torch.tensor([], dtype=dtype).element_size()
    numel = N * C * HW * HW
    sets = []
    for _ in range(harness.rotation(2 * numel * elem, device)):
        x = torch.randn(N, C, HW, HW, device=device, dtype=dtype)
        ln = (torch.randn(C, device=device, dtype=dtype), torch.randn(C, device=device, dtype=dtype))
        conv = (torch.randn(C, 1, K, K, device=device, dtype=dtype) / K,
                torch.randn(C, device=device, dtype=dtype)) if fused else ()
        sets.append((x,) + conv + ln + (torch.randn_like(x),))
    # The floor moves each activation once: fwd reads x, writes y; bwd reads grad and x, writes
    # grad_x. FLOPs: the conv's taps when fused (LayerNorm's own are negligible).
    taps = K * K if fused else 0
    cost = {"fwd": (2 * numel * elem, 2 * numel * taps),
            "bwd": (3 * numel * elem, 4 * numel * taps),
            "fwd+bwd": (5 * numel * elem, 6 * numel * taps)}
    op = "dwconv+LN" if fused else "LN"
    case = {"case": f"{op} {name} {N}x{C}x{HW}x{HW}", "op": op, "stage": name,
            "dtype": str(dtype).replace("torch.", ""), "shape": [N, C, HW, HW]}
    harness.run_providers(results, device, case, table, sets, cost, reps, floors)


def main(argv=None):
    args = harness.parser("ck.layer_norm_2d / dwconv_layer_norm benchmark").parse_args(argv)
    plan = harness.Plan("layernorm", args)
    tables = {fused: providers(plan.device, fused) for fused in (False, True)}
    cases = [(dtype, stage, fused) for dtype in plan.dtypes for stage in plan.stages
             for fused in (False, True)]
    for i, (dtype, (name, C, HW), fused) in enumerate(cases):
        print(f"[{i + 1}/{len(cases)}] {dtype} {'dwconv+LN' if fused else 'LN'} {name} "
              f"{plan.batch}x{C}x{HW}x{HW}", flush=True)
        run_case(plan.results, plan.device, dtype, name, plan.batch, C, HW, fused,
                 tables[fused], plan.reps, plan.floors)
    plan.finish()


if __name__ == "__main__":
    main()
