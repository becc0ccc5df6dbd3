import pytest
import torch
import torch.nn.functional as F

import convnext_kernels as ck
from benchmarks.bench_mlp import saved_activation_bytes
from convnext_kernels import reference
from numerics import assert_accurate, fresh_generator, kernel_targets, randn

# No CUDA kernels exist for this op (the block runs its Triton kernels on a GPU).
TARGETS = kernel_targets(exclude=("cuda",))
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
# (N, H, W, C, mlp_ratio): ConvNeXt channel counts (40, 80, 96; 1408 with ratio 1 to keep the
# interpreter's time down), rows N*H*W not a multiple of any tile (30, 98, 63, 6).
SHAPES = [(2, 3, 5, 40, 4), (2, 7, 7, 80, 4), (1, 7, 9, 96, 2), (1, 2, 3, 1408, 1)]
# (gamma, residual, drop_scale, grn)
VARIANTS = {"v1": (True, True, True, False), "plain": (False, False, False, False),
            "gamma": (True, False, False, False), "v2": (False, True, True, True)}


def _inputs(gen, shape, variant, dtype, device):
    N, H, W, C, ratio = shape
    hid = C * ratio
    has_gamma, has_residual, has_drop, has_grn = VARIANTS[variant]

    def r(*s, scale=1.0):
        return randn(gen, *s, dtype=dtype, device=device, scale=scale)
    x = r(N, H, W, C)
    params = [r(hid, C, scale=C ** -0.5), r(hid, scale=0.5), r(C, hid, scale=hid ** -0.5),
              r(C, scale=0.5)]
    gamma = r(C) if has_gamma else None
    residual = r(N, H, W, C) if has_residual else None
    # One dropped sample (0) and kept ones (1/keep), as drop path makes.
    drop = (torch.tensor([0.0] + [1 / 0.75] * (N - 1), dtype=dtype, device=device)
            if has_drop else None)
    grn_w, grn_b = (r(hid), r(hid)) if has_grn else (None, None)
    return x, params, gamma, residual, drop, grn_w, grn_b, r(N, H, W, C)


def _run(fn, x, params, gamma, residual, drop, grn_w, grn_b, grad, **kwargs):
    leaves = [t.detach().requires_grad_() if t is not None else None
              for t in [x, *params, gamma, residual, grn_w, grn_b]]
    x_, w1, b1, w2, b2, g_, res_, gw, gb = leaves
    out = fn(x_, w1, b1, w2, b2, g_, res_, drop, grn_weight=gw, grn_bias=gb, **kwargs)
    out.backward(grad)
    names = ["out", "x", "fc1_w", "fc1_b", "fc2_w", "fc2_b", "gamma", "residual", "grn_weight",
             "grn_bias"]
    values = [out] + [t.grad if t is not None else None for t in leaves]
    return {n: v for n, v in zip(names, values) if v is not None}


def _magnitude_scales(x, params, gamma, drop, grn_w, grn_b, grad):
    """The parameter gradients are sums over rows that can cancel; their error is judged
    against the sum of the terms' magnitudes (the bound of any summation order), in float64:
    fc1's terms are the gradient of GELU's output (through GRN's backward in V2) times its
    input, fc2's the gradient of the output times fc2's input, GRN's the gradient of its output
    times what its parameter multiplies."""
    x, grad = x.double().cpu(), grad.double().cpu()
    w1, b1, w2, b2 = (p.double().cpu() for p in params)
    C = x.shape[-1]
    rows = x.reshape(-1, C)
    act = F.gelu(F.linear(rows, w1, b1))
    g = grad.reshape(-1, C)
    g_out = g.clone()
    if gamma is not None:
        g_out = g_out * gamma.double().cpu()
    if drop is not None:
        g_out = g_out * drop.double().cpu().repeat_interleave(rows.shape[0] // x.shape[0])[:, None]
    g_fc2_input = g_out @ w2
    scales = {}
    if grn_w is not None:
        act_nhwc = act.detach().reshape(*x.shape[:3], -1).requires_grad_()
        fc2_input = reference.grn(act_nhwc, grn_w.double().cpu(),
                                  grn_b.double().cpu()).reshape(act.shape)
        (g_grad_act,) = torch.autograd.grad(fc2_input, act_nhwc, g_fc2_input)
        g_grad_act = g_grad_act.reshape(act.shape)
        act_nx = act_nhwc.detach() * reference.grn_response(act_nhwc.detach())
        scales["grn_weight"] = (g_fc2_input * act_nx.reshape(act.shape)).abs().sum(0).max()
        scales["grn_bias"] = g_fc2_input.abs().sum(0).max()
    else:
        fc2_input, g_grad_act = act, g_fc2_input
    scales.update({"fc2_w": (g_out.abs().t() @ fc2_input.abs()).max(),
                   "fc2_b": g_out.abs().sum(0).max(),
                   "fc1_w": (g_grad_act.abs().t() @ rows.abs()).max(),
                   "fc1_b": g_grad_act.abs().sum(0).max()})
    if gamma is not None:
        y2 = F.linear(fc2_input, w2, b2)
        scales["gamma"] = (g * y2).abs().sum(0).max()
    return scales


def _check(ours, ref, eager, dtype, seed, scales):
    assert ours.keys() == ref.keys()
    for name in ref:
        assert ours[name].shape == ref[name].shape, name
        assert ours[name].dtype == dtype, name
        assert_accurate(name, ours[name], ref[name], eager[name], dtype, seed, scales.get(name))


def _accuracy_cases():
    """Every dtype × shape × variant, except that C = 1408 runs in fp32 for V1 and V2 only (the
    interpreter's time)."""
    return [(dtype, shape, variant) for dtype in DTYPES for shape in SHAPES for variant in VARIANTS
            if shape[3] != 1408 or (dtype == torch.float32 and variant in ("v1", "v2"))]


@pytest.mark.parametrize("dtype,shape,variant", _accuracy_cases(),
                         ids=lambda v: "x".join(map(str, v)) if isinstance(v, tuple) else str(v))
@pytest.mark.parametrize("backend,device", TARGETS)
def test_mlp_matches_float64_reference(backend, device, dtype, shape, variant, poisoned):
    gen, seed = fresh_generator()
    x, params, gamma, residual, drop, grn_w, grn_b, grad = _inputs(gen, shape, variant, dtype,
                                                                   device)
    args = (x, params, gamma, residual, drop, grn_w, grn_b, grad)
    ours = _run(ck.mlp, *args, backend=backend)
    ref = _run(reference.mlp, *[_to64(a) for a in args])
    eager = _run(reference.mlp, *args)
    _check(ours, ref, eager, dtype, seed, _magnitude_scales(x, params, gamma, drop, grn_w,
                                                            grn_b, grad))


def _to64(a):
    if isinstance(a, list):
        return [_to64(t) for t in a]
    return a.double().cpu() if a is not None else None


@pytest.mark.parametrize("keep_hidden", [False, True], ids=["recompute", "keep"])
@pytest.mark.parametrize("variant", ["v1", "v2"])
@pytest.mark.parametrize("backend,device,backward", [
    (backend, device, backward) for backend, device in TARGETS
    for backward in (("fused", "gemms") if backend == "triton" else ("",))])
def test_keep_hidden_and_both_triton_strategies(backend, device, variant, keep_hidden, backward,
                                                poisoned, monkeypatch):
    """The kept-hidden backward, and (triton) the two-GEMM forward at a C the fused forward
    would take and the GEMMs' backward at a C the fused backward would take, agree with the
    reference."""
    if backend == "triton":
        from convnext_kernels.triton import mlp as triton_mlp
        from convnext_kernels.triton import mlp_fused_backward
        monkeypatch.setattr(triton_mlp, "FUSED_MAX_CHANNELS", 0 if keep_hidden else 192)
        monkeypatch.setattr(mlp_fused_backward, "MAX_CHANNELS", 192 if backward == "fused" else 0)
        # a kept h read by the fused backward (at this C it would recompute it)
        monkeypatch.setattr(mlp_fused_backward, "RECOMPUTE_MAX_CHANNELS", 0)
    gen, seed = fresh_generator()
    args = _inputs(gen, (2, 3, 5, 40, 4), variant, torch.float32, device)
    ours = _run(ck.mlp, *args, backend=backend, keep_hidden=keep_hidden)
    ref = _run(reference.mlp, *[_to64(a) for a in args])
    _check(ours, ref, ref, torch.float32, seed, _magnitude_scales(*args[:3], *args[4:]))


@pytest.mark.parametrize("variant,keep_hidden,reads", [
    ("v1", False, False), ("v1", True, True), ("v2", False, False), ("v2", True, False),
    ("v2", True, True)],
    ids=["v1-recompute", "v1-keep-read", "v2-recompute", "v2-keep-recompute", "v2-keep-read"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("device", [d for b, d in TARGETS if b == "triton"])
def test_fused_backward_over_row_splits_and_hidden_tails(device, dtype, variant, keep_hidden,
                                                         reads, poisoned, monkeypatch):
    """The fused backward (grad-hidden and weight-gradient kernels) where its weight gradients
    take three row splits, the last one short (2100 rows: 704, 704, 692), and its hidden chunks
    end in a tail (H = 100: 64 + 36 in the weight-gradient kernel, 4 x 32 with 28 masked in the
    grad-hidden one), C = 20 padded to 32, with GRN samples of 700 rows that end inside row
    tiles; h recomputed from x or the kept h read (`reads`); with GRN and no h kept, GRN in the
    fused forward and its backward sums from h recomputed (grn_sums_launch): against float64,
    and a second run equal bit for bit (the reduction order is fixed)."""
    from convnext_kernels.triton import mlp_fused_backward
    shape = (3, 20, 35, 20, 5)
    assert mlp_fused_backward.takes(20, variant == "v2", dtype, dtype, hidden_kept=keep_hidden)
    if reads:
        monkeypatch.setattr(mlp_fused_backward, "RECOMPUTE_MAX_CHANNELS", 0)
    assert mlp_fused_backward.recomputes_hidden(20, dtype, dtype, keep_hidden) != reads
    assert mlp_fused_backward.weight_grad_splits(2100, 100, device) == 3
    sums_launch, sums_calls = mlp_fused_backward.grn_sums_launch, []

    def counted(*launch_args):
        sums_calls.append(launch_args)
        return sums_launch(*launch_args)

    monkeypatch.setattr(mlp_fused_backward, "grn_sums_launch", counted)
    gen, seed = fresh_generator()
    args = _inputs(gen, shape, variant, dtype, device)
    ours = _run(ck.mlp, *args, backend="triton", keep_hidden=keep_hidden)
    again = _run(ck.mlp, *args, backend="triton", keep_hidden=keep_hidden)
    assert len(sums_calls) == (2 if variant == "v2" and not keep_hidden else 0)
    ref = _run(reference.mlp, *[_to64(a) for a in args])
    eager = _run(reference.mlp, *args)
    _check(ours, ref, eager, dtype, seed, _magnitude_scales(*args[:3], *args[4:]))
    for name in ours:
        assert torch.equal(ours[name], again[name]), (name, seed)


def test_triton_picks_the_fused_backward_up_to_192_channels():
    pytest.importorskip("triton")
    from convnext_kernels.triton.mlp_fused_backward import takes
    bf16, fp32 = torch.bfloat16, torch.float32
    assert takes(96, False, bf16, bf16, hidden_kept=False)
    assert takes(192, False, torch.float16, torch.float16, hidden_kept=False)
    assert not takes(384, False, bf16, bf16, hidden_kept=True)
    # GRN: where the forward kept h, or where h is recomputed (its backward sums too)
    assert takes(192, True, bf16, bf16, hidden_kept=True)
    assert takes(96, True, bf16, bf16, hidden_kept=False)
    assert not takes(192, True, bf16, bf16, hidden_kept=False)
    assert not takes(384, True, bf16, bf16, hidden_kept=True)
    # autocast (fp32 weights): recomputing h up to 128 channels, reading it up to 192
    assert takes(128, False, bf16, fp32, hidden_kept=False)
    assert not takes(192, False, bf16, fp32, hidden_kept=False)
    assert takes(192, False, bf16, fp32, hidden_kept=True)


def test_fused_backward_recomputes_a_kept_hidden_up_to_128_channels():
    pytest.importorskip("triton")
    from convnext_kernels.triton.mlp_fused_backward import recomputes_hidden
    bf16, fp32 = torch.bfloat16, torch.float32
    assert recomputes_hidden(96, bf16, bf16, hidden_kept=True)
    assert recomputes_hidden(128, bf16, fp32, hidden_kept=True)
    assert not recomputes_hidden(192, bf16, bf16, hidden_kept=True)
    assert recomputes_hidden(192, bf16, bf16, hidden_kept=False)


@pytest.mark.parametrize("keep_hidden", [None, True], ids=["default", "keep"])
@pytest.mark.parametrize("shape", [(2, 10, 10, 8, 4), (70, 1, 1, 8, 2)],
                         ids=["sample-over-3-tiles", "64-samples-per-tile"])
@pytest.mark.parametrize("backend,device", TARGETS)
def test_grn_sums_across_row_tiles(backend, device, shape, keep_hidden, poisoned):
    """GRN's per-sample sums from GEMM row tiles (triton: 64 rows a tile under the
    interpreter, 128 on a GPU): a sample over three tiles (100 rows per sample), and one row
    per sample, so that a tile holds 64 samples; keeping h (triton: the fused backward, whose
    tiles read the per-sample statistics row by row)."""
    gen, seed = fresh_generator()
    args = _inputs(gen, shape, "v2", torch.float32, device)
    ours = _run(ck.mlp, *args, backend=backend, keep_hidden=keep_hidden)
    ref = _run(reference.mlp, *[_to64(a) for a in args])
    _check(ours, ref, ref, torch.float32, seed, _magnitude_scales(*args[:3], *args[4:]))


@pytest.mark.parametrize("backend,device", TARGETS)
def test_strided_grn_parameters(backend, device, poisoned):
    """GRN's weight and bias as views with a stride (every other element of a [2H] tensor): the
    kernels read them as [H] vectors, so the op must hand them over contiguous."""
    gen, seed = fresh_generator()
    x, params, gamma, residual, drop, grn_w, grn_b, grad = _inputs(gen, (2, 3, 5, 40, 4), "v2",
                                                                   torch.float32, device)
    grn_w, grn_b = (torch.stack([t, randn(gen, *t.shape, device=device)], 1).flatten()[::2]
                    for t in (grn_w, grn_b))
    assert not grn_w.is_contiguous()
    args = (x, params, gamma, residual, drop, grn_w, grn_b, grad)
    ours = _run(ck.mlp, *args, backend=backend)
    ref = _run(reference.mlp, *[_to64(a) for a in args])
    _check(ours, ref, ref, torch.float32, seed, _magnitude_scales(x, params, gamma, drop, grn_w,
                                                                  grn_b, grad))


@pytest.mark.skipif("cpp" not in ck.available_backends(), reason="needs _C")
@pytest.mark.parametrize("keep_hidden", [False, True], ids=["recompute", "keep"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cpp_forward_in_row_tiles(dtype, keep_hidden, poisoned):
    """The cpp forward runs fc1, GELU, fc2 and the output pass in row tiles once the hidden holds
    over 4M elements (csrc/cpu/mlp.cpp, tile_rows): 3 x 210 x 210 pixels x 32 hidden channels
    make 5 tiles whose edges fall inside samples (drop_scale's per-sample index)."""
    gen, seed = fresh_generator()
    args = _inputs(gen, (3, 210, 210, 8, 4), "v1", dtype, "cpu")
    ours = _run(ck.mlp, *args, backend="cpp", keep_hidden=keep_hidden)
    ref = _run(reference.mlp, *[_to64(a) for a in args])
    eager = _run(reference.mlp, *args)
    _check(ours, ref, eager, dtype, seed, _magnitude_scales(*args[:3], *args[4:]))


@pytest.mark.skipif("cpp" not in ck.available_backends(), reason="needs _C")
def test_cpp_gelu_over_the_float_range():
    """The cpp GELU (csrc/cpu/gelu_kernels.h, a rational erf) and its derivative against float64
    over [-20, 20], inf and NaN, through the MLP with one channel and unit weights (fc1 and fc2
    exact): as accurate as ATen's fp32 GELU (which the tolerance measures) to within a rounding
    of the output."""
    x = torch.cat([torch.linspace(-20, 20, 40956), torch.tensor([float("inf"), -float("inf"),
                                                                  float("nan"), 0.0])])
    rows = x.reshape(-1, 1)
    eye, zero = torch.ones(1, 1), torch.zeros(1)
    grad = randn(fresh_generator()[0], *rows.shape)
    none = torch.empty(0)
    out = torch.ops.convnext_kernels.mlp(rows, eye, zero, eye, zero, None, None, None, None, None,
                                         1, 1e-6, False, False)[0]
    grad_x = torch.ops.convnext_kernels.mlp_backward(grad, rows, eye, zero, eye, None, None,
                                                     None, None, none, none, none, none, 1,
                                                     1e-6)[0]
    x64 = rows.double().requires_grad_()
    ref = F.gelu(x64)
    ref_grad, = torch.autograd.grad(ref, x64, grad.double())
    finite = rows.isfinite()
    for ours, eager, exact in [(out, F.gelu(rows), ref.detach()),
                               (grad_x, torch.ops.aten.gelu_backward(grad, rows), ref_grad)]:
        ulp = exact.abs().clamp_min(1e-30) * 2.0 ** -23
        error = ((ours.double() - exact).abs())[finite]
        eager_error = ((eager.double() - exact).abs())[finite]
        assert error.max() <= eager_error.max() + ulp[finite].max()
        assert (error <= 4 * eager_error.max() + 2 * ulp[finite]).all()
    # inf and NaN as the formulas give them in IEEE arithmetic, which ATen's scalar GELU follows:
    # gelu = x Phi(x): inf at inf, -inf * 0 = NaN at -inf; gelu' = Phi(x) + x phi(x): inf * 0 =
    # NaN at both. Not compared with eager: ATen's vectorised loop gives NaN for gelu(inf) too
    # (torch 2.14.1 on an AVX-512 CPU) while its scalar tail gives inf.
    nan = float("nan")
    torch.testing.assert_close(out[~finite], torch.tensor([float("inf"), nan, nan]),
                               equal_nan=True, rtol=0, atol=0)
    assert grad_x[~finite].isnan().all()


def test_gelu_fit_is_the_committed_one():
    """The coefficients in csrc/cpu/gelu_kernels.h are what tests/gelu_fit.py fits."""
    import pathlib
    import re

    import gelu_fit
    numerator, denominator, error = gelu_fit.fit()
    assert error < 3e-8
    header = (pathlib.Path(__file__).parents[1] / "csrc/cpu/gelu_kernels.h").read_text()
    for name, fitted in [("kErfNumerator", numerator), ("kErfDenominator", denominator)]:
        body = re.search(name + r"\[\] = \{([^}]*)\}", header).group(1)
        committed = [float(v.strip().rstrip("f")) for v in body.split(",")]
        assert len(committed) == len(fitted), name
        assert max(abs(a - b) / abs(b) for a, b in zip(committed, fitted)) < 1e-6, name
    assert f"kErfMaxArg = {gelu_fit.Z_MAX}f" in header


def test_triton_picks_the_fused_forward_for_small_c_only():
    pytest.importorskip("triton")
    from convnext_kernels.triton.mlp import uses_fused_forward
    assert uses_fused_forward(96, grn=False, keep_hidden=False)
    assert uses_fused_forward(192, grn=False, keep_hidden=False)
    assert not uses_fused_forward(384, grn=False, keep_hidden=False)
    # GRN: up to 128 channels (after a GEMM for its sums of squares), where h is recomputed
    assert uses_fused_forward(96, grn=True, keep_hidden=False)
    assert not uses_fused_forward(192, grn=True, keep_hidden=False)
    assert not uses_fused_forward(96, grn=False, keep_hidden=True)
    assert not uses_fused_forward(192, grn=False, keep_hidden=False, weight_dtype=torch.float32)


@pytest.mark.parametrize("backend,device", TARGETS)
def test_recompute_saves_input_sized_activations(backend, device):
    """Without keep_hidden the MLP keeps its input (and y2 for a learnable gamma), not the
    [M, 4C] hidden tensor; keep_hidden saves it, and is the default on cpp only. Measured on
    what autograd actually saves."""
    gen, _ = fresh_generator()
    x, params, gamma, residual, drop, _, _, _ = _inputs(gen, (2, 7, 7, 40, 4), "v1",
                                                        torch.float32, device)
    inputs = [x, *params, gamma]

    def ours(**kwargs):
        return lambda *a: ck.mlp(*a, residual, drop, backend=backend, **kwargs)
    recompute = saved_activation_bytes(ours(keep_hidden=False), inputs)
    kept = saved_activation_bytes(ours(keep_hidden=True), inputs)
    assert saved_activation_bytes(ours(), inputs) == (kept if backend == "cpp" else recompute)
    eager = saved_activation_bytes(lambda *a: reference.mlp(*a, residual, drop), inputs)
    assert recompute <= 2 * x.numel() * 4 + 64  # x and y2
    assert kept >= recompute + 4 * x.numel() * 4  # + the [M, 4C] pre-activation
    assert recompute <= 0.3 * eager


@pytest.mark.parametrize("backend,device", TARGETS)
def test_nothing_kept_without_a_backward(backend, device, monkeypatch):
    """With no gradient to come (no_grad, or no input that requires one) the MLP keeps no
    [M, H] pre-activation, even when asked to: keeping writes the hidden to memory (on cpp, past
    the row tiles that hold it in cache). With one to come, cpp's default keeps it. Observed on
    what the backend's op returns."""
    from convnext_kernels.ops.mlp import MLP
    gen, seed = fresh_generator()
    x, params, gamma, residual, drop, _, _, _ = _inputs(gen, (2, 7, 7, 40, 4), "v1",
                                                        torch.float32, device)
    op, kept = MLP.impls[backend], []

    def spy(*args):
        outs = op(*args)
        kept.append(outs[1].numel())
        return outs
    monkeypatch.setitem(MLP.impls, backend, spy)

    def run(*leaves, **kwargs):
        return ck.mlp(*leaves[:5], leaves[5], residual, drop, backend=backend, **kwargs)
    leaves = [x, *params, gamma]
    with torch.no_grad():
        expected = run(*leaves, keep_hidden=True)
        assert torch.equal(run(*leaves), expected), seed
    run(*leaves, keep_hidden=True)  # grad mode on, but nothing requires a gradient
    assert kept == [0, 0, 0], seed
    run(*[t.detach().requires_grad_() for t in leaves])
    assert kept[-1] == (x.numel() * 4 if backend == "cpp" else 0), seed


def test_gradcheck_cpp_float64():
    gen, _ = fresh_generator()
    x, params, gamma, residual, drop, _, _, _ = _inputs(gen, (2, 2, 3, 4, 2), "v1",
                                                        torch.float64, "cpu")
    leaves = [t.requires_grad_() for t in [x, *params, gamma, residual]]
    assert torch.autograd.gradcheck(
        lambda *a: ck.mlp(*a[:7], drop, backend="cpp"), leaves)
    grn_w, grn_b = (randn(gen, 8, dtype=torch.float64).requires_grad_() for _ in range(2))
    assert torch.autograd.gradcheck(
        lambda *a: ck.mlp(*a[:5], None, a[5], drop, grn_weight=a[6], grn_bias=a[7],
                          backend="cpp"), leaves[:5] + [residual, grn_w, grn_b])


def _opcheck_cases():
    cases = []
    available = ck.available_backends()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if "cpp" in available:
        cases.append(("cpp", torch.ops.convnext_kernels.mlp.default,
                      torch.ops.convnext_kernels.mlp_backward.default, "cpu"))
    if "triton" in available:
        cases.append(("triton", torch.ops.convnext_kernels.mlp_triton.default,
                      torch.ops.convnext_kernels.mlp_backward_triton.default, device))
    return cases


@pytest.mark.parametrize("grn", [False, True], ids=["v1", "v2"])
@pytest.mark.parametrize("name,forward_op,backward_op,device", _opcheck_cases(),
                         ids=lambda v: v if isinstance(v, str) else "")
def test_opcheck(name, forward_op, backward_op, device, grn):
    gen, _ = fresh_generator()
    x, params, gamma, residual, drop, grn_w, grn_b, grad = _inputs(
        gen, (2, 2, 3, 16, 2), "v2" if grn else "v1", torch.float32, device)
    rows = x.reshape(-1, 16)
    args = (rows.requires_grad_(), *[p.requires_grad_() for p in params],
            gamma.requires_grad_() if gamma is not None else None,
            residual.reshape(-1, 16), drop, grn_w, grn_b, 6, 1e-6, False, gamma is not None)
    torch.library.opcheck(forward_op, args)
    out, hidden, y2, norm, nx = forward_op(*[a.detach() if isinstance(a, torch.Tensor) else a
                                             for a in args])
    torch.library.opcheck(backward_op, (grad.reshape(-1, 16), rows.detach(),
                                        params[0].detach(), params[1].detach(),
                                        params[2].detach(),
                                        gamma.detach() if gamma is not None else None, drop,
                                        grn_w, grn_b, hidden, y2, norm, nx, 6, 1e-6))


@pytest.mark.parametrize("backend,device", TARGETS)
def test_torch_compile_fullgraph(backend, device):
    torch._dynamo.reset()
    gen, _ = fresh_generator()
    x, params, gamma, residual, drop, _, _, _ = _inputs(gen, (2, 3, 4, 16, 4), "v1",
                                                        torch.float32, device)

    def fn(x, w1, b1, w2, b2, gamma, residual):
        return ck.mlp(x, w1, b1, w2, b2, gamma, residual, drop, backend=backend).square().sum()

    base = [x, *params, gamma, residual]
    leaves_c = [t.detach().requires_grad_() for t in base]
    leaves_e = [t.detach().requires_grad_() for t in base]
    torch.compile(fn, fullgraph=True)(*leaves_c).backward()
    fn(*leaves_e).backward()
    for c, e in zip(leaves_c, leaves_e):
        torch.testing.assert_close(c.grad, e.grad, rtol=1e-4, atol=1e-4)


def test_empty_rows():
    for backend, device in TARGETS:
        gen, _ = fresh_generator()
        x, params, gamma, _, _, _, _, _ = _inputs(gen, (1, 1, 1, 8, 2), "gamma", torch.float32,
                                                  device)
        x = x[:0].detach().requires_grad_()
        out = ck.mlp(x, *params, gamma, backend=backend)
        assert out.shape == x.shape
        out.sum().backward()
        assert x.grad.shape == x.shape


# ---------------------------------------------------------------------------------- bad input

def _good():
    x = torch.randn(2, 3, 3, 8)
    return dict(x=x, fc1_w=torch.randn(32, 8), fc1_b=torch.randn(32), fc2_w=torch.randn(8, 32),
                fc2_b=torch.randn(8))


MLP_BAD = [
    ("fc1 C mismatch", dict(fc1_w=torch.randn(32, 7)), ValueError, "fc1_w must have shape"),
    ("fc2 H mismatch", dict(fc2_w=torch.randn(8, 31)), ValueError, "fc2_w must have shape"),
    ("fc2 transposed", dict(fc2_w=torch.randn(32, 8)), ValueError, "fc2_w must have shape"),
    ("fc1_b size", dict(fc1_b=torch.randn(8)), ValueError, "fc1_b must have shape"),
    ("fc2_b size", dict(fc2_b=torch.randn(32)), ValueError, "fc2_b must have shape"),
    ("gamma size", dict(gamma=torch.randn(7)), ValueError, "gamma must hold 8 values"),
    ("residual shape", dict(residual=torch.randn(2, 3, 3, 7)), ValueError, "residual must"),
    ("drop_scale size", dict(drop_scale=torch.ones(3)), ValueError, "drop_scale must"),
    ("grn half", dict(grn_weight=torch.randn(32)), TypeError, "both grn_weight and grn_bias"),
    ("grn size", dict(grn_weight=torch.randn(8), grn_bias=torch.randn(8)), ValueError,
     "grn_weight must hold 32"),
    ("int x", dict(x=torch.ones(2, 3, 3, 8, dtype=torch.long)), TypeError, "floating"),
    ("dtype mix", dict(fc2_w=torch.randn(8, 32, dtype=torch.float64)), TypeError,
     "fc2_w has dtype"),
    ("device mix", dict(fc1_b=torch.randn(32, device="meta")), ValueError, "fc1_b is on meta"),
]


@pytest.mark.parametrize("backend", ["auto", "torch", "cpp", "triton"])
@pytest.mark.parametrize("case,change,error,match", MLP_BAD, ids=[c[0] for c in MLP_BAD])
def test_mlp_bad_input(backend, case, change, error, match):
    kwargs = {**_good(), **change}
    with pytest.raises(error, match=match):
        ck.mlp(**kwargs, backend=backend)


def test_grn_mlp_needs_nhwc():
    kwargs = _good()
    kwargs["x"] = kwargs["x"].reshape(18, 8)
    with pytest.raises(ValueError, match="with GRN, x must be 4-D"):
        ck.mlp(**kwargs, grn_weight=torch.randn(32), grn_bias=torch.randn(32))


def test_cuda_backend_refused_by_name():
    with pytest.raises(ValueError, match="backend 'cuda' cannot serve"):
        ck.mlp(**_good(), backend="cuda")


@pytest.mark.parametrize("backend,device", TARGETS)
def test_frozen_layer_scale(backend, device):
    """A gamma that needs no gradient: y2 is not saved and no gamma gradient is computed (the
    backward must not read the absent y2); the other gradients are eager's."""
    gen, _ = fresh_generator()
    x, params, gamma, residual, _, _, _, _ = _inputs(gen, (2, 3, 4, 16, 4), "v1",
                                                     torch.float32, device)
    grads = []
    for fn in (lambda *a: ck.mlp(*a, backend=backend), reference.mlp):
        leaves = [t.detach().requires_grad_() for t in (x, *params)]
        fn(*leaves, gamma.detach(), residual).square().sum().backward()
        grads.append([t.grad for t in leaves])
    for ours, eager in zip(*grads):
        torch.testing.assert_close(ours, eager, rtol=1e-4, atol=1e-4)
