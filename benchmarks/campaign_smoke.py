"""The campaign's smoke step: every op and the block on each GPU backend against float64, one
timing each; and the inputs it builds, which the sanitizer's workload reuses."""
import time
import zlib

from benchmarks.campaign_steps import gpu_or_rehearsal

SMOKE_OPS = ("dwconv2d", "layer_norm_2d", "dwconv_layer_norm", "mlp", "grn", "block")


def smoke_inputs(op, N, C, HW, dtype, device, gen):
    """(inputs, eager(*inputs), ours(backend, *inputs)) of one op at one shape: random data
    (never zeros), the differentiable inputs first."""
    import torch
    import torch.nn.functional as F

    import convnext_kernels as ck
    from benchmarks.bench_block import as_function
    from convnext_kernels import reference
    from convnext_kernels.models import ConvNeXtBlock

    def r(*shape, scale=1.0):
        return (torch.randn(*shape, generator=gen, dtype=torch.float64) * scale).to(device, dtype)
    cl = torch.channels_last
    x = r(N, C, HW, HW).contiguous(memory_format=cl)
    if op == "dwconv2d":
        return ((x, r(C, 1, 7, 7, scale=1 / 7), r(C)),
                lambda *a: F.conv2d(*a, padding=3, groups=C),
                lambda b, *a: ck.dwconv2d(*a, backend=b))
    if op == "layer_norm_2d":
        return ((x, 1 + r(C, scale=0.1), r(C, scale=0.1)), reference.layer_norm_2d,
                lambda b, *a: ck.layer_norm_2d(*a, backend=b))
    if op == "dwconv_layer_norm":
        return ((x, r(C, 1, 7, 7, scale=1 / 7), r(C), 1 + r(C, scale=0.1), r(C, scale=0.1)),
                reference.dwconv_layer_norm, lambda b, *a: ck.dwconv_layer_norm(*a, backend=b))
    H = 4 * C
    if op == "mlp":
        rows = x.permute(0, 2, 3, 1)
        return ((rows, r(H, C, scale=C ** -0.5), r(H), r(C, H, scale=H ** -0.5), r(C), r(C),
                 r(*rows.shape)), reference.mlp, lambda b, *a: ck.mlp(*a, backend=b))
    if op == "grn":
        return ((r(N, HW, HW, H), r(H, scale=0.5), r(H, scale=0.5)), reference.grn,
                lambda b, *a: ck.grn(*a, backend=b))
    plain = ConvNeXtBlock(C, layer_scale_init_value=0.5).to(device, dtype)
    params = tuple(r(*p.shape, scale=p.shape[-1] ** -0.5) for p in plain.parameters())
    fused = {}

    def ours(backend, *a):
        if backend not in fused:
            fused[backend] = ck.FusedConvNeXtBlock(C, layer_scale_init_value=0.5,
                                                   backend=backend).to(device, dtype)
        return as_function(fused[backend])(*a)
    return (x,) + params, as_function(plain), ours


def fwd_bwd(fn, inputs, grad_seed):
    import torch
    leaves = [t.detach().requires_grad_() for t in inputs]
    out = fn(*leaves)
    grad = torch.randn(out.shape, generator=grad_seed, dtype=torch.float64).to(out)
    return [out] + list(torch.autograd.grad(out, leaves, grad))


def smoke_cases(rehearse):
    """[(dtype name, stage, op)] the smoke step checks, in order; stage (name, C, H=W)."""
    from benchmarks import harness
    stages = [("tiny", 16, 8)] if rehearse else harness.STAGES[:4]
    # a rehearsal (the interpreter: seconds a kernel call) checks bf16, the harder tolerance
    dtypes = ("bfloat16",) if rehearse else ("bfloat16", "float32")
    return [(dtype, stage, op) for dtype in dtypes for stage in stages for op in SMOKE_OPS]


def smoke_setup(rehearse):
    """(batch, backends) of the smoke step."""
    return (2, ("triton", "cpp")) if rehearse else (64, ("cuda", "triton"))


def smoke_label(dtype, stage, op, N):
    name, C, HW = stage
    return f"smoke {op} {dtype} {name} {N}x{C}x{HW}x{HW}"


def warm(dtype_name, stage, op, rehearse):
    """The prewarm step's unit for one smoke case: ours, forward and backward, on each backend
    (what the smoke step will launch, compiled here)."""
    import torch
    device = torch.device("cpu" if rehearse else "cuda")
    N, backends = smoke_setup(rehearse)
    gen = torch.Generator().manual_seed(0)
    inputs, _, ours = smoke_inputs(op, N, stage[1], stage[2], getattr(torch, dtype_name),
                                   device, gen)
    for backend in backends:
        try:
            fwd_bwd(lambda *a: ours(backend, *a), inputs, gen)
        except ValueError as error:
            if "cannot serve" not in str(error):
                raise
    return [smoke_label(dtype_name, stage, op, N)]


def smoke(campaign):
    """Every op and the block on each GPU backend at the T stage shapes (batch 64), bf16 and
    fp32, forward and every gradient against float64: error within the tests' rule (fp32: 1e-5,
    or 2× eager's error where cuDNN's own fp32 sums at these sizes err more; the block's output
    and parameter gradients against their sums' magnitudes, as in its tests), synchronised
    after each op so that a fault names its op; fwd+bwd timed once against eager. TF32 is off
    and cuDNN's autotuner too, for this step only (harness.case_settings). Each case (op, dtype,
    stage, both backends) is a unit of the budget."""
    import torch

    from benchmarks import harness
    from convnext_kernels.testing import FP32_TOLERANCE, rel_error, tolerance
    device = gpu_or_rehearsal(campaign)
    N, backends = smoke_setup(campaign.rehearse)
    rows, failed, not_started = [], [], []
    for dtype_name, stage, op in smoke_cases(campaign.rehearse):
        name, C, HW = stage
        dtype = getattr(torch, dtype_name)
        label = smoke_label(dtype_name, stage, op, N)
        if not campaign.budget.admit("smoke", label):
            not_started.append(label)
            continue
        start = time.monotonic()
        with harness.case_settings(tf32=False, cudnn_benchmark=False):
            gen = torch.Generator().manual_seed(zlib.crc32(f"{op} {C} {dtype}".encode()))
            inputs, eager, ours = smoke_inputs(op, N, C, HW, dtype, device, gen)
            grad_gen = torch.Generator().manual_seed(1)
            ref = fwd_bwd(eager, [t.double() for t in inputs], grad_gen.manual_seed(1))
            base = fwd_bwd(eager, inputs, grad_gen.manual_seed(1))
            scales = _error_scales(op, inputs, grad_gen.manual_seed(1))
            for backend in backends:
                row = [op, backend, str(dtype)[6:], f"{name} {N}x{C}x{HW}x{HW}"]
                try:
                    got = fwd_bwd(lambda *a: ours(backend, *a), inputs,
                                  grad_gen.manual_seed(1))
                    harness.sync(device)
                except ValueError as error:  # the op has no kernel on this backend
                    if "cannot serve" in str(error):
                        continue
                    raise
                except Exception as error:
                    failed.append(f"{op}/{backend}: {type(error).__name__}")
                    rows.append(row + ["ERROR", f"{type(error).__name__}: {error}"[:200]])
                    campaign.record("smoke", rows=rows)
                    continue
                worst = 0.0
                for g, b, f, scale in zip(got, base, ref, scales):
                    eager_error = rel_error(b, f, scale)
                    tol = tolerance(dtype, eager_error) if dtype != torch.float32 else \
                        max(FP32_TOLERANCE, 2 * eager_error)
                    worst = max(worst, rel_error(g, f, scale) / tol)
                sets = [inputs + (torch.randn_like(got[0]),)]
                reps = 1 if campaign.rehearse else 5
                ms = _fwd_bwd_ms(lambda *a: ours(backend, *a), sets, device, reps)
                eager_ms = _fwd_bwd_ms(eager, sets, device, reps)
                ok = worst <= 1.0
                if not ok:
                    failed.append(f"{op}/{backend}/{row[2]}/{name}")
                rows.append(row + [f"err/tol {worst:.2f}", f"{ms:.3f} ms",
                                   f"eager {eager_ms:.3f} ms", "ok" if ok else "FAIL"])
                campaign.record("smoke", rows=rows)
        campaign.budget.spent("smoke", label, time.monotonic() - start)
    campaign.record("smoke", not_started=not_started)
    if failed:
        return "failed", "; ".join(failed), rows
    return ("partial", f"{len(not_started)} cases not started (budget)", rows) if not_started \
        else ("ok", "", rows)


def _error_scales(op, inputs, grad_seed):
    """The scale of each of fwd_bwd's results (rel_error's; None: max |ref|): the block's output
    and parameter gradients are judged against their sums' magnitudes, as in its tests
    (testing.block_sum_scales); `grad_seed` draws the output gradient fwd_bwd drew."""
    import torch

    from convnext_kernels.models import ConvNeXtBlock
    from convnext_kernels.testing import block_sum_scales
    if op != "block":
        return [None] * (len(inputs) + 1)
    x, params = inputs[0].detach().double(), inputs[1:]
    plain = ConvNeXtBlock(x.shape[1], layer_scale_init_value=0.5).to(x.device, x.dtype)
    names = [n for n, _ in plain.named_parameters()]
    with torch.no_grad():
        for (_, p), value in zip(plain.named_parameters(), params):
            p.copy_(value.detach())
    grad = torch.randn(x.shape, generator=grad_seed, dtype=torch.float64).to(x.device)
    scales = block_sum_scales(plain, x, grad)
    return [scales["out"], None] + [scales.get(n) for n in names]


def _fwd_bwd_ms(fn, sets, device, reps):
    import torch

    from benchmarks import harness
    leaves = [tuple(t.detach().requires_grad_() for t in s[:-1]) + (s[-1],) for s in sets]

    def step(*args):
        torch.autograd.grad(fn(*args[:-1]), args[:-1], args[-1])
    times = harness.time_calls(step, leaves, device, warmup=min(2, reps - 1), reps=reps)
    return harness.summarize(times)["median_ms"]
