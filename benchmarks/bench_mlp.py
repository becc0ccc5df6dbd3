"""MLP benchmark: ck.mlp (fc1 -> GELU -> fc2, * gamma, + residual: the ConvNeXt V1 block's
pointwise half) against eager PyTorch (Linear, GELU, Linear, mul, add), torch.compile and the
floor (FLOPs over the measured matmul rate, bytes over the measured copy bandwidth), at the
ConvNeXt-T/B stage shapes; each provider's activation memory saved for the backward, measured.

    python -m benchmarks.bench_mlp [--quick] [--autotune] [--out DIR] [--dtype bf16 fp32]

On a GPU: batch 64 at 224 px, rows N*H*W of C channels, ours = triton. On a CPU: a short run,
labelled CPU, ours = cpp.
"""
import sys

import torch

import convnext_kernels as ck
from benchmarks import harness
from convnext_kernels import reference

NAME = "mlp"
MLP_RATIO = 4


def _eager(x, w1, b1, w2, b2, gamma, residual):
    return reference.mlp(x, w1, b1, w2, b2, gamma, residual)


add_options = harness.add_autotune_option


def providers(plan, args):
    fmt = torch.contiguous_format  # rows: N,H,W,C tensors, C contiguous
    table = {"eager": (fmt, _eager), **harness.compile_providers(plan, args, fmt, _eager)}
    for backend in ("triton",) if plan.gpu else ("cpp",):
        if backend in ck.available_backends():
            table[f"ours {backend}"] = (fmt, lambda *a, backend=backend: ck.mlp(
                *a, backend=backend))
    return table


def cases(plan):
    return [(dtype, stage) for dtype in plan.dtypes for stage in plan.stages]


def describe(plan, case):
    dtype, (name, C, HW) = case
    return f"MLP {str(dtype)[6:]} {name} {plan.batch}x{HW}x{HW}x{C}"


def make_inputs(plan, case):
    """x, fc1_w, fc1_b, fc2_w, fc2_b, gamma, residual, output gradient."""
    dtype, (_, C, HW) = case
    H = MLP_RATIO * C

    def r(*shape, scale=1.0):
        return torch.randn(*shape, device=plan.device, dtype=dtype) * scale
    x = r(plan.batch, HW, HW, C)
    return (x, r(H, C, scale=C ** -0.5), r(H), r(C, H, scale=H ** -0.5), r(C), r(C), r(*x.shape),
            r(*x.shape))


def mlp_cost(M, C, H, elem):
    """(bytes, FLOPs) per pass at the floor: the GEMMs' FLOPs (2 per multiply-add: fwd fc1 and
    fc2, bwd the four gradient GEMMs) and the row tensors moved once (fwd: x, residual in, out;
    bwd: grad in, grad_x out), the hidden tensor never leaving the chip."""
    gemm = 2 * M * C * H
    return {"fwd": (3 * M * C * elem, 2 * gemm), "bwd": (2 * M * C * elem, 4 * gemm),
            "fwd+bwd": (5 * M * C * elem, 6 * gemm)}


def saved_activation_bytes(fn, inputs):
    """Bytes autograd keeps for the backward of fn(*inputs), parameters (1-D/2-D leaves)
    excluded: the activation memory of the op."""
    leaves = [t.detach().requires_grad_() for t in inputs]
    params = {t.untyped_storage().data_ptr() for t in leaves if t.dim() <= 2}
    seen = {}

    def pack(t):
        ptr = t.untyped_storage().data_ptr()
        if ptr not in params:
            seen[ptr] = t.untyped_storage().nbytes()
        return t
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn(*leaves)
    return sum(seen.values())


def run_case(plan, table, case):
    dtype, (name, C, HW) = case
    N, device = plan.batch, plan.device
    M, H = N * HW * HW, MLP_RATIO * C
    elem = torch.tensor([], dtype=dtype).element_size()
    sets = [make_inputs(plan, case) for _ in range(harness.rotation(3 * M * C * elem, device))]
    row = {"op": "mlp", "case": f"MLP {name} {N}x{HW}x{HW}x{C}", "stage": name,
           "dtype": str(dtype).replace("torch.", ""), "shape": [M, C, H]}
    # Under saved_tensors_hooks a compiled function does not save what it saves without them,
    # so the compile rows carry no activation-memory figure (None) rather than a wrong one.
    extras = {provider: {"saved_activation_MiB": None if provider.startswith("compile") else
                         saved_activation_bytes(fn, sets[0][:-1]) / 2**20}
              for provider, (_, fn) in table.items() if plan.runs(provider) and not plan.warm}
    floors = (plan.floors[0], plan.matmul_rate(dtype))
    harness.run_providers(plan, row, table, sets, mlp_cost(M, C, H, elem), floors,
                          baselines=("eager", "compile default", "compile max-autotune"),
                          extras=extras)


def table_for(table, case):
    return table


def main(argv=None):
    harness.main_for(sys.modules[__name__], argv)


if __name__ == "__main__":
    main()
