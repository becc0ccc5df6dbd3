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


# The variants a plan may time: V1 (layer scale) and V2 (GRN, no layer scale).
VARIANTS = {"v1": {}, "v2": {"use_grn": True}}


def providers(plan, args):
    """(C, dtype, variant) -> (name -> (memory format, fn(x, *params)), parameters); built per
    case (the modules depend on them). "ours" is the block as users get it (backend auto); on a
    GPU "ours <backend>" times each backend that can run the block, so that auto's measured
    choice (the campaign's auto table) has every candidate beside eager."""
    def table(C, dtype, variant="v1"):
        plain = ConvNeXtBlock(C, **VARIANTS[variant]).to(plan.device, dtype)
        fused = ck.FusedConvNeXtBlock(C, **VARIANTS[variant]).to(plan.device, dtype)
        fused.load_state_dict(plain.state_dict())
        cl, nchw = torch.channels_last, torch.contiguous_format
        rows = {"eager NCHW": (nchw, as_function(plain)),
                "eager channels_last": (cl, as_function(plain)), "ours": (cl, as_function(fused))}
        for backend in getattr(plan, "block_backends", BACKENDS if plan.gpu else ()):
            if backend in ck.available_backends():
                pinned = ck.FusedConvNeXtBlock(C, backend=backend, **VARIANTS[variant]).to(
                    plan.device, dtype)
                pinned.load_state_dict(plain.state_dict())
                rows[f"ours {backend}"] = (cl, as_function(pinned))
        rows.update(harness.compile_providers(plan, args, cl, as_function(plain)))
        if plan.compile:
            rows["ours + compile"] = (cl, torch.compile(as_function(fused), dynamic=False))
        if plan.compile and plan.gpu:
            # CUDA graphs: the block's launchers never read device values on the host, so the
            # whole block replays as one graph (tests/test_ledger.py).
            rows["ours + compile reduce-overhead"] = (
                cl, torch.compile(as_function(fused), mode="reduce-overhead", dynamic=False))
        # random parameters, never zeros (V2's GRN starts at zero)
        params = [p.detach() if p.count_nonzero() else torch.randn_like(p) * 0.1
                  for p in plain.parameters()]
        return rows, params
    return table


# The backends timed one by one on a GPU (a plan's block_backends may name others): the
# whole-block Triton op, and the CUDA dwconv+LayerNorm kernel with the Triton MLP.
BACKENDS = ("triton", "cuda")


def cases(plan):
    variants = getattr(plan, "variants", ("v1",))
    return [(dtype, stage, variant) for dtype in plan.dtypes for stage in plan.stages
            for variant in variants]


def describe(plan, case):
    dtype, (name, C, HW), variant = case
    return f"block {variant} {str(dtype)[6:]} {name} {plan.batch}x{C}x{HW}x{HW}"


def block_cost(N, C, HW, elem):
    """(bytes, FLOPs) per pass at the floor: x in and out once per pass (bwd: grad in, grad_x
    out, x re-read), the dwconv's tap FMAs and the MLP's GEMMs (2 FLOPs a multiply-add)."""
    dw = harness.activation_pass_cost(N, C, HW, HW, K * K, elem)
    gemm = 2 * N * HW * HW * C * MLP_RATIO * C
    return {p: (dw[p][0], dw[p][1] + gemm * m) for p, m in
            (("fwd", 2), ("bwd", 4), ("fwd+bwd", 6))}


def run_case(plan, tables, case):
    dtype, (name, C, HW), variant = case
    N, device = plan.batch, plan.device
    table, params = tables(C, dtype, variant)
    elem = torch.tensor([], dtype=dtype).element_size()
    numel = N * C * HW * HW

    def one_set():
        x = torch.randn(N, C, HW, HW, device=device, dtype=dtype)
        return (x, *[p.clone() for p in params], torch.randn_like(x))
    sets = [one_set() for _ in range(harness.rotation(2 * numel * elem, device))]
    row = {"op": "block", "case": f"block {variant} {name} {N}x{C}x{HW}x{HW}", "stage": name,
           "variant": variant, "dtype": str(dtype).replace("torch.", ""),
           "shape": [N, C, HW, HW]}
    # Launches per fwd+bwd (benchmarks/ledger.py), for the providers a dispatch mode can watch
    # without changing what runs (not the compiled ones); on a GPU also the ledger's model of
    # their time at the ceilings this run measured, beside the measured time (its calibration).
    extras = {}
    for provider, (fmt, fn) in table.items():
        if harness.is_compiled(provider) or not plan.runs(provider) or plan.warm:
            continue
        entries = ledger.fwd_bwd_entries(
            fn, [t.contiguous(memory_format=fmt) if t.dim() == 4 else t for t in sets[0][:-1]],
            sets[0][-1].contiguous(memory_format=fmt))
        extras[provider] = {"launches_fwd_bwd": len(entries)}
        if plan.gpu:
            ceilings = ledger.measured_ceilings(plan.results.floors, dtype)
            extras[provider]["modeled_fwd_bwd_ms"] = ledger.modeled_ms(entries, ceilings)
    harness.run_providers(plan, row, table, sets, block_cost(N, C, HW, elem),
                          (plan.floors[0], plan.matmul_rate(dtype)), extras=extras)


def main(argv=None):
    harness.main_for(sys.modules[__name__], argv)


if __name__ == "__main__":
    main()
