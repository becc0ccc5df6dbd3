"""Block benchmark: one ConvNeXt block (dwconv 7×7 → LayerNorm → MLP → layer scale → + x), fwd
and fwd+bwd with every parameter's gradient, at each ConvNeXt-T/B stage: eager NCHW and
channels_last (the plain block, official structure), torch.compile (default; max-autotune with
--autotune), FusedConvNeXtBlock (backend auto), and FusedConvNeXtBlock under torch.compile
(on a GPU also with mode="reduce-overhead": the block replayed as a CUDA graph). The uncompiled
providers' rows carry launches_fwd_bwd (benchmarks/ledger.py).

    python -m benchmarks.bench_block [--quick] [--autotune] [--out DIR] [--dtype bf16 fp32]

On a GPU: batch 64 at 224 px. On a CPU: a short run, labelled CPU (auto picks the CPU
backends).
"""
import sys

import torch
from torch.func import functional_call

import convnext_kernels as ck
from benchmarks import harness, ledger
from benchmarks.bench_mlp import MLP_RATIO
from convnext_kernels.models import ConvNeXtBlock

NAME = "block"
K = 7


add_options = harness.add_autotune_option


def as_function(module):
    """fn(x, *params): the module with the given parameter tensors (so that the harness's
    gradients cover the parameters, and its input rotation rotates them too)."""
    names = [n for n, _ in module.named_parameters()]

    def fn(x, *params):
        return functional_call(module, dict(zip(names, params)), (x,))
    return fn


def providers(plan, args):
    """C -> name -> (memory format, fn(x, *params)); built per case (the modules depend on C)."""
    def table(C, dtype):
        plain = ConvNeXtBlock(C).to(plan.device, dtype)
        fused = ck.FusedConvNeXtBlock(C).to(plan.device, dtype)
        fused.load_state_dict(plain.state_dict())
        cl, nchw = torch.channels_last, torch.contiguous_format
        rows = {"eager NCHW": (nchw, as_function(plain)),
                "eager channels_last": (cl, as_function(plain)), "ours": (cl, as_function(fused)),
                **harness.compile_providers(plan, args, cl, as_function(plain))}
        if plan.compile:
            rows["ours + compile"] = (cl, torch.compile(as_function(fused), dynamic=False))
        if plan.compile and plan.gpu:
            # CUDA graphs: the block's launchers never read device values on the host, so the
            # whole block replays as one graph (tests/test_ledger.py).
            rows["ours + compile reduce-overhead"] = (
                cl, torch.compile(as_function(fused), mode="reduce-overhead", dynamic=False))
        return rows, [p.detach() for p in plain.parameters()]
    return table


def cases(plan):
    return [(dtype, stage) for dtype in plan.dtypes for stage in plan.stages]


def describe(plan, case):
    dtype, (name, C, HW) = case
    return f"block {str(dtype)[6:]} {name} {plan.batch}x{C}x{HW}x{HW}"


def block_cost(N, C, HW, elem):
    """(bytes, FLOPs) per pass at the floor: x in and out once per pass (bwd: grad in, grad_x
    out, x re-read), the dwconv's tap FMAs and the MLP's GEMMs (2 FLOPs a multiply-add)."""
    dw = harness.activation_pass_cost(N, C, HW, HW, K * K, elem)
    gemm = 2 * N * HW * HW * C * MLP_RATIO * C
    return {p: (dw[p][0], dw[p][1] + gemm * m) for p, m in
            (("fwd", 2), ("bwd", 4), ("fwd+bwd", 6))}


def run_case(plan, tables, case):
    dtype, (name, C, HW) = case
    N, device = plan.batch, plan.device
    table, params = tables(C, dtype)
    elem = torch.tensor([], dtype=dtype).element_size()
    numel = N * C * HW * HW

    def one_set():
        x = torch.randn(N, C, HW, HW, device=device, dtype=dtype)
        return (x, *[p.clone() for p in params], torch.randn_like(x))
    sets = [one_set() for _ in range(harness.rotation(2 * numel * elem, device))]
    row = {"op": "block", "case": f"block {name} {N}x{C}x{HW}x{HW}", "stage": name,
           "dtype": str(dtype).replace("torch.", ""), "shape": [N, C, HW, HW]}
    # Launches per fwd+bwd (benchmarks/ledger.py), for the providers a dispatch mode can watch
    # without changing what runs (not the compiled ones).
    extras = {provider: {"launches_fwd_bwd": ledger.fwd_bwd_launches(
        fn, [t.contiguous(memory_format=fmt) if t.dim() == 4 else t for t in sets[0][:-1]],
        sets[0][-1].contiguous(memory_format=fmt))}
        for provider, (fmt, fn) in table.items() if "compile" not in provider}
    harness.run_providers(plan.results, device, row, table, sets,
                          block_cost(N, C, HW, elem), plan.reps, (plan.floors[0],
                                                                  plan.matmul_rate(dtype)),
                          extras=extras)


def main(argv=None):
    harness.main_for(sys.modules[__name__], argv)


if __name__ == "__main__":
    main()
