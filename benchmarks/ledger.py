"""The ledger: every launch a ConvNeXt block's forward+backward makes (ours and eager PyTorch's),
with the bytes each one is handed and the FLOPs it does, at the ConvNeXt-T stage shapes; totals
for ours, eager and the ideal.

    python -m benchmarks.ledger [--batch N] [--stages 1 2 3 4] [--dtype bf16 autocast]
                                [--backend triton] [--variant v1 v2] [--device cpu|cuda]
                                [--list] [--json FILE]

A launch is anything that runs on the device: one of our Triton kernels (a `Launch` record) or
a torch op that does work (a fill, a cast, a copy, a reduction, a GEMM...); allocations and
views are not launches. Counted the same way on the CPU and on a
GPU: torch ops through a dispatch mode, our Triton kernels through the launch observer, *without
running them* (a dry run: the tensors are real, the kernels are recorded and skipped; eager runs
for real), so on the CPU the full stage shapes cost seconds, not hours of interpreter. A dry
run's numbers are counts, not timings; on a GPU the campaign's profile step times them.

Bytes: the sizes of the distinct tensors a launch is handed (inputs and outputs), an upper bound
of what it moves. The ideal touches, once each: the block's input, output, output gradient,
input gradient, parameters, parameter gradients and the activations autograd saves.

The model (labelled a model wherever it is printed): each launch takes
max(bytes / bandwidth, FLOPs / rate) + a per-launch cost, the rate the tensor cores' for a GEMM
and the fp32 FMA rate for the rest; a block is the sum of its launches. The floor is the ideal
bytes against the block's FLOPs (eager's count: no recompute): max(ideal bytes / bandwidth,
GEMM FLOPs / tensor rate + other FLOPs / FMA rate). The ceilings are arguments, by default an
H200's (CEILINGS); the GPU campaign passes the ceilings it measured and sets the model's block
time beside each measured one, which calibrates the model.
"""
import argparse
import json
from contextlib import contextmanager

import torch
from torch.utils._python_dispatch import TorchDispatchMode

import convnext_kernels as ck
from benchmarks.provenance import describe as describe_commit
from convnext_kernels.models import ConvNeXtBlock
from convnext_kernels.triton import common

STAGES = {1: (96, 56), 2: (192, 28), 3: (384, 14), 4: (768, 7)}  # ConvNeXt-T at 224 px
_ALLOCATIONS = {"empty", "empty_like", "empty_strided", "new_empty", "new_empty_strided",
                "detach", "alias", "lift_fresh", "set_", "resize_", "_reshape_alias"}
_SYNCS = {"_local_scalar_dense", "item"}  # the host waits for the device

# An H200's ceilings: device-to-device copy and bf16 matmul on random data as measured on such a
# machine (TOOLCHAIN.md), fp32 FMA from the datasheet; the cost of a launch beyond its work (the
# gap a kernel's start and tail leave on the device, the host's launch when the device waits).
CEILINGS = {"bandwidth_GBps": 4300.0, "tensor_TFLOPs": 790.0, "fma_TFLOPs": 67.0,
            "launch_us": 4.0}
# The launches that are GEMMs on tensor cores (in bf16 and under autocast): torch's matmuls and
# our Triton matmul kernels, the fused MLP's among them.
GEMMS = {"mm", "addmm", "bmm", "_matmul_kernel", "_fused_mlp_kernel", "_grad_hidden_kernel",
         "_weight_grad_kernel", "_grn_sums_kernel"}


def _tensors(tree):
    found = []

    def visit(value):
        if isinstance(value, torch.Tensor):
            found.append(value)
        elif isinstance(value, (list, tuple)):
            for item in value:
                visit(item)
        elif isinstance(value, dict):
            for item in value.values():
                visit(item)
    visit(tree)
    return found


def _distinct_bytes(tensors):
    seen, total = set(), 0
    for t in tensors:
        if t.device.type == "meta":
            continue
        key = (t.data_ptr(), t.numel(), t.dtype)
        if key not in seen:
            seen.add(key)
            total += t.numel() * t.element_size()
    return total


def _depthwise_flops(func, args, out):
    """2 FLOPs a multiply-add of a grouped (depthwise) convolution and of each gradient its
    backward computes; torch's counter counts a grouped convolution_backward as a dense one (at
    ConvNeXt-T stage 1: 183 GFLOP where the depthwise gradients are ~4)."""
    name = func._opname
    weight = args[2] if name == "convolution_backward" else args[1]
    per_output = weight.shape[1] * weight.shape[2] * weight.shape[3]  # (C/groups) * k * k
    if name == "convolution":
        return 2 * out.numel() * per_output
    grad_output, mask = args[0], args[10]
    return 2 * grad_output.numel() * per_output * (int(mask[0]) + int(mask[1]))


def _flops(func, args, kwargs, out):
    from torch.utils.flop_counter import flop_registry  # (imports sympy; only when counting)
    if func._opname in ("convolution", "convolution_backward"):
        groups = args[-1] if func._opname == "convolution" else args[9]
        if groups > 1:
            return _depthwise_flops(func, args, out)
    formula = flop_registry.get(func._overloadpacket)
    if formula is None:
        return 0
    try:
        return int(formula(*args, **kwargs, out_val=out))
    except Exception:  # a formula that does not take these arguments: not a GEMM/conv we count
        return 0


class Ledger(TorchDispatchMode):
    """Records launches: (source, name, bytes, flops, host_sync). Our custom ops are opened up:
    their Python bodies run under the ledger, so what they launch is counted, not the op."""

    def __init__(self, dry=True):
        super().__init__()
        self.dry = dry
        self.entries = []
        self._depth = 0  # re-entered for each custom op opened up; observe once

    def _observe(self, launch):
        self.entries.append({"source": "ours", "name": launch.name,
                             "bytes": _distinct_bytes(_tensors(launch.args)),
                             "flops": launch.flops, "host_sync": False})
        return self.dry  # True: the launch is recorded and not run

    def __enter__(self):
        if self._depth == 0:
            common.LAUNCH_OBSERVERS.append(self._observe)
        self._depth += 1
        return super().__enter__()

    def __exit__(self, *exc):
        self._depth -= 1
        if self._depth == 0:
            common.LAUNCH_OBSERVERS.remove(self._observe)
        return super().__exit__(*exc)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        body = _custom_op_body(func)
        if body is not None:
            with self:
                return body(*args, **kwargs)
        out = func(*args, **kwargs)
        name = func._opname if hasattr(func, "_opname") else str(func)
        if func.is_view or name in _ALLOCATIONS or func.namespace == "prim":
            return out
        moved = _tensors(args) + _tensors(kwargs) + _tensors(out)
        self.entries.append({"source": f"torch.{func.namespace}", "name": name,
                             "bytes": _distinct_bytes(moved),
                             "flops": _flops(func, args, kwargs, out),
                             "host_sync": name in _SYNCS or _to_host(func, args, kwargs)})
        return out


def _to_host(func, args, kwargs):
    """A copy from a device to the host (the host then waits for the device)."""
    device = kwargs.get("device")
    return (func._opname == "_to_copy" and device is not None
            and torch.device(device).type == "cpu" and args[0].device.type != "cpu")


def _triton_version():
    import triton
    return triton.__version__


def _custom_op_body(func):
    """The Python implementation of one of our torch.library.custom_op ops, or None."""
    if getattr(func, "namespace", None) != "convnext_kernels":
        return None
    from torch._library.custom_ops import OPDEFS
    opdef = OPDEFS.get(f"convnext_kernels::{func._opname}")
    return opdef._init_fn if opdef is not None else None


@contextmanager
def _autocast_if(enabled, device):
    if enabled:
        with torch.autocast(device, dtype=torch.bfloat16):
            yield
    else:
        yield


def block_fwd_bwd(block, x, grad_outs, autocast):
    """Runs block forward+backward; returns the activations autograd saved (not x, not params).
    Gradients by autograd.grad: accumulating them into .grad is the optimizer's business, and
    under the ledger's mode (which holds references) AccumulateGrad would copy what it steals.
    grad_outs: the output gradient in each dtype the output may have (eager under autocast
    returns fp32, ours bf16): a gradient in another dtype would add a cast to either."""
    saved = []
    known = {id(x)} | {id(p) for p in block.parameters()}

    def pack(t):
        if id(t) not in known:
            saved.append(t)
        return t
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        with _autocast_if(autocast, x.device.type):
            out = block(x)
    torch.autograd.grad(out, [x, *block.parameters()], grad_outs[out.dtype])
    return saved


def fwd_bwd_entries(fn, inputs, grad_out):
    """The launches of one fn(*inputs) forward + gradients of every input, as ledger entries
    (kernels run, not dry): a benchmark row's launch count and modeled time."""
    leaves = [t.detach().requires_grad_() for t in inputs]
    with Ledger(dry=False) as ledger:
        torch.autograd.grad(fn(*leaves), leaves, grad_out)
    return ledger.entries


def measured_ceilings(floors, dtype):
    """The model's ceilings from the floors a benchmark run measured (harness.measure_floors),
    for GEMMs in `dtype`; the per-launch cost stays CEILINGS'."""
    rate = floors.get(f"{str(dtype).replace('torch.', '')}_matmul_TFLOPs",
                      floors.get("bfloat16_matmul_TFLOPs"))
    return {"bandwidth_GBps": floors["copy_bandwidth_GBps"], "tensor_TFLOPs": rate,
            "fma_TFLOPs": floors["fma_TFLOPs"], "launch_us": CEILINGS["launch_us"]}


def ideal_bytes(block, x, saved):
    params = list(block.parameters())
    once = sum(t.numel() * t.element_size() for t in params) * 2  # parameters and their grads
    return once + 4 * x.numel() * x.element_size() + _distinct_bytes(saved)


def measure(stage, batch, dtype, variant, backend, device="cpu"):
    """{provider: {launches, bytes, flops, host_syncs, entries}} and the ideal, for one stage."""
    C, HW = STAGES[stage]
    autocast = dtype == "autocast"
    param_dtype = torch.float32 if autocast else torch.bfloat16
    torch.manual_seed(0)
    v2 = variant == "v2"
    plain = ConvNeXtBlock(C, use_grn=v2).to(device, param_dtype)
    fused = ck.FusedConvNeXtBlock(C, use_grn=v2, backend=backend).to(device, param_dtype)
    fused.load_state_dict(plain.state_dict())
    x_dtype = torch.float32 if autocast else torch.bfloat16
    x = torch.randn(batch, C, HW, HW, device=device, dtype=x_dtype).contiguous(
        memory_format=torch.channels_last)
    grad_out = torch.randn_like(x)
    grad_outs = {dtype: grad_out.to(dtype) for dtype in (torch.float32, torch.bfloat16)}
    result = {}
    for provider, block, dry in (("eager", plain, False), ("ours", fused, True)):
        inp = x.detach().requires_grad_()
        with Ledger(dry=dry) as ledger:
            saved = block_fwd_bwd(block, inp, grad_outs, autocast)
        if provider == "ours":
            result["ideal_bytes"] = ideal_bytes(block, inp, saved)
        entries = ledger.entries
        result[provider] = {"launches": len(entries),
                            "bytes": sum(e["bytes"] for e in entries),
                            "flops": sum(e["flops"] for e in entries),
                            "host_syncs": sum(e["host_sync"] for e in entries),
                            "entries": entries}
    return result


def launch_ms(entry, ceilings):
    """The model's time of one launch (see the module docstring)."""
    rate = ceilings["tensor_TFLOPs"] if entry["name"] in GEMMS else ceilings["fma_TFLOPs"]
    work = max(entry["bytes"] / (ceilings["bandwidth_GBps"] * 1e9),
               entry["flops"] / (rate * 1e12))
    return 1e3 * work + 1e-3 * ceilings["launch_us"]


def modeled_ms(entries, ceilings=CEILINGS):
    """The model's time of a list of launches (ledger entries)."""
    return sum(launch_ms(e, ceilings) for e in entries)


def floor_ms(result, ceilings=CEILINGS):
    """The block's floor: its ideal bytes against its FLOPs (eager's count: no recompute)."""
    gemm = sum(e["flops"] for e in result["eager"]["entries"] if e["name"] in GEMMS)
    other = sum(e["flops"] for e in result["eager"]["entries"] if e["name"] not in GEMMS)
    compute = gemm / (ceilings["tensor_TFLOPs"] * 1e12) + other / (ceilings["fma_TFLOPs"] * 1e12)
    return 1e3 * max(result["ideal_bytes"] / (ceilings["bandwidth_GBps"] * 1e9), compute)


def model(result, ceilings=CEILINGS):
    """{ours_ms, eager_ms, floor_ms} of one measured stage, modeled at `ceilings`."""
    return {"ours_ms": modeled_ms(result["ours"]["entries"], ceilings),
            "eager_ms": modeled_ms(result["eager"]["entries"], ceilings),
            "floor_ms": floor_ms(result, ceilings)}


def _summary_row(stage, dtype, variant, result):
    ours, eager, ideal = result["ours"], result["eager"], result["ideal_bytes"]
    return (f"| T stage {stage} | {dtype} | {variant} | {ours['launches']} | "
            f"{eager['launches']} | {ours['bytes'] / 1e6:.1f} | {eager['bytes'] / 1e6:.1f} | "
            f"{ideal / 1e6:.1f} | {ours['bytes'] / eager['bytes']:.2f} | "
            f"{ours['bytes'] / ideal:.2f} | {ours['host_syncs']} |")


def _model_row(stage, dtype, variant, modeled):
    floor = modeled["floor_ms"]
    return (f"| T stage {stage} | {dtype} | {variant} | {modeled['ours_ms']:.3f} | "
            f"{modeled['eager_ms']:.3f} | {floor:.3f} | {modeled['ours_ms'] / floor:.2f} | "
            f"{modeled['eager_ms'] / floor:.2f} |")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--stages", type=int, nargs="+", default=sorted(STAGES))
    parser.add_argument("--dtype", nargs="+", default=["bf16", "autocast"],
                        choices=["bf16", "autocast"])
    parser.add_argument("--variant", nargs="+", default=["v1", "v2"], choices=["v1", "v2"])
    parser.add_argument("--backend", default="triton")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--list", action="store_true", help="every launch, not only totals")
    parser.add_argument("--json", help="write every entry to this file")
    for name, value in CEILINGS.items():
        parser.add_argument(f"--{name.replace('_', '-')}", type=float, default=value,
                            help=f"the model's ceiling (default: an H200's, {value:g})")
    args = parser.parse_args(argv)
    ceilings = {name: getattr(args, name) for name in CEILINGS}
    print(f"block fwd+bwd, batch {args.batch}, backend {args.backend}, on {args.device}; our "
          "kernels in a dry run: counts, not timings. bytes: MB handed to launches (an upper "
          f"bound). torch {torch.__version__}, triton {_triton_version()}, "
          f"commit {describe_commit()}")
    print("| shape | dtype | block | launches ours | launches eager | MB ours | MB eager | "
          "MB ideal | ours/eager | ours/ideal | host syncs |")
    print("|" + "---|" * 11)
    everything, models = [], []
    for dtype in args.dtype:
        for variant in args.variant:
            for stage in args.stages:
                result = measure(stage, args.batch, dtype, variant, args.backend, args.device)
                print(_summary_row(stage, dtype, variant, result), flush=True)
                if args.list:
                    for e in result["ours"]["entries"]:
                        print(f"    {e['source']:>12} {e['name']:<40} {e['bytes'] / 1e6:9.2f} MB"
                              f" {e['flops'] / 1e9:8.2f} GFLOP"
                              f" {launch_ms(e, ceilings) * 1e3:8.1f} us modeled")
                modeled = model(result, ceilings)
                models.append((stage, dtype, variant, modeled))
                everything.append({"stage": stage, "dtype": dtype, "variant": variant,
                                   "model": {**modeled, "ceilings": ceilings}, **result})
    print()
    print(f"A MODEL, not a measurement: each launch max(bytes / {ceilings['bandwidth_GBps']:g} "
          f"GB/s, FLOPs / ({ceilings['tensor_TFLOPs']:g} TFLOP/s on tensor cores for GEMMs, "
          f"{ceilings['fma_TFLOPs']:g} TFLOP/s fp32 FMA otherwise)) + "
          f"{ceilings['launch_us']:g} us; the floor: the ideal bytes against the block's FLOPs.")
    print("| shape | dtype | block | model ms ours | model ms eager | floor ms | ours/floor | "
          "eager/floor |")
    print("|" + "---|" * 8)
    for stage, dtype, variant, modeled in models:
        print(_model_row(stage, dtype, variant, modeled))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(everything, f, indent=1)


if __name__ == "__main__":
    main()
