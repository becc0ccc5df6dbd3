import pytest
import torch

import convnext_kernels as ck
from convnext_kernels import reference
from numerics import assert_accurate, fresh_generator, kernel_targets, randn

TARGETS = kernel_targets()
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
# (N, C, H, W): ConvNeXt channel counts that are not powers of two (40, 80, 1408), C = 1,
# 1×1 and 7×7 images.
LN_SHAPES = [(2, 40, 5, 7), (1, 80, 3, 3), (1, 1408, 2, 2), (1, 16, 7, 7), (3, 24, 1, 1),
             (2, 1, 3, 2)]
# (N, C, H, W, k) for the fused op; 13 channels: not a whole vector (the cpp kernel's padded rows).
FUSED_SHAPES = [(2, 40, 5, 7, 7), (1, 80, 7, 7, 7), (1, 16, 1, 1, 7), (1, 1408, 2, 3, 3),
                (1, 8, 4, 3, 9), (2, 13, 9, 4, 5)]


def _forward_backward(fn, inputs, grad):
    leaves = [t.detach().requires_grad_() if t is not None else None for t in inputs]
    y = fn(*leaves)
    y.backward(grad)
    return [y] + [t.grad for t in leaves if t is not None]


def _check_all(names, ours, ref, eager, dtype, seed, scales=None, roundings=None):
    scales, roundings = scales or {}, roundings or {}
    for name, o, r, e in zip(names, ours, ref, eager):
        assert o.dtype == dtype and o.shape == r.shape, name
        assert_accurate(name, o, r, e, dtype, seed, scales.get(name), roundings.get(name, 0.5))


def _parameter_grad_scales(x, grad):
    """The weight and bias gradients are sums over pixels that can cancel (C = 1: one sum of
    N*H*W terms). Their error is judged against the sum of the terms' magnitudes, the bound of
    any summation order, not against a result that may be near zero."""
    x, grad = x.double().cpu(), grad.double().cpu()
    C = x.shape[1]
    xhat = reference.layer_norm_2d(x, torch.ones(C, dtype=x.dtype), torch.zeros(C, dtype=x.dtype))
    return {"grad_weight": (grad * xhat).abs().sum((0, 2, 3)).max(),
            "grad_bias": grad.abs().sum((0, 2, 3)).max()}


def _ln_inputs(gen, shape, dtype, device, channels_last):
    N, C, H, W = shape
    x = randn(gen, N, C, H, W, dtype=dtype, device=device, scale=3.0) + 0.5
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    weight = randn(gen, C, dtype=dtype, device=device)
    bias = randn(gen, C, dtype=dtype, device=device)
    return x, weight, bias, randn(gen, N, C, H, W, dtype=dtype, device=device)


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("shape", LN_SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("backend,device", TARGETS)
def test_layer_norm_matches_float64_reference(backend, device, dtype, shape, channels_last,
                                              poisoned):
    gen, seed = fresh_generator()
    x, weight, bias, grad = _ln_inputs(gen, shape, dtype, device, channels_last)
    ours = _forward_backward(lambda *a: ck.layer_norm_2d(*a, backend=backend),
                             (x, weight, bias), grad)
    ref = _forward_backward(reference.layer_norm_2d,
                            [t.double().cpu() for t in (x, weight, bias)], grad.double().cpu())
    eager = _forward_backward(reference.layer_norm_2d, (x, weight, bias), grad)
    _check_all(["y", "grad_x", "grad_weight", "grad_bias"], ours, ref, eager, dtype, seed,
               _parameter_grad_scales(x, grad))
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    assert ours[0].is_contiguous(memory_format=fmt)


@pytest.mark.parametrize("shape", FUSED_SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("backend,device", TARGETS)
def test_dwconv_layer_norm_matches_float64_reference(backend, device, dtype, shape, poisoned):
    gen, seed = fresh_generator()
    N, C, H, W, k = shape
    x, ln_weight, ln_bias, grad = _ln_inputs(gen, (N, C, H, W), dtype, device, True)
    dw_weight = randn(gen, C, 1, k, k, dtype=dtype, device=device, scale=1 / k)
    dw_bias = randn(gen, C, dtype=dtype, device=device)
    inputs = (x, dw_weight, dw_bias, ln_weight, ln_bias)
    ours = _forward_backward(lambda *a: ck.dwconv_layer_norm(*a, backend=backend), inputs, grad)
    ref = _forward_backward(reference.dwconv_layer_norm, [t.double().cpu() for t in inputs],
                            grad.double().cpu())
    eager = _forward_backward(reference.dwconv_layer_norm, inputs, grad)
    # The LayerNorm's parameter gradients are sums over pixels, judged as in the unfused test
    # (seen: bf16 grad_ln_weight over 12 pixels, 9.1e-3 of its cancelled max against 8.7e-3).
    conv = reference.dwconv2d(*[t.double().cpu() for t in (x, dw_weight, dw_bias)])
    sums = _parameter_grad_scales(conv, grad)
    # The backward reads the conv as kept, rounded to the dtype (as eager's does): the gradients
    # computed from it carry that rounding and their own, so eager's error counts as at least two
    # roundings there (seen: fp16 grad_ln_weight of one 16-channel pixel, 1.16 eps against
    # eager's lucky < 0.5). grad_ln_bias, a sum of grad_y alone, keeps one.
    _check_all(["y", "grad_x", "grad_dw_weight", "grad_dw_bias", "grad_ln_weight",
                "grad_ln_bias"], ours, ref, eager, dtype, seed,
               {"grad_ln_weight": sums["grad_weight"], "grad_ln_bias": sums["grad_bias"]},
               dict.fromkeys(["grad_x", "grad_dw_weight", "grad_dw_bias", "grad_ln_weight"], 1.0))
    assert ours[0].is_contiguous(memory_format=torch.channels_last)


def _fused_op(backend):
    name = "dwconv_layer_norm_triton" if backend == "triton" else "dwconv_layer_norm"
    return getattr(torch.ops.convnext_kernels, name).default


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("backend,device", TARGETS)
def test_dwconv_layer_norm_inference_keeps_no_conv(backend, device, dtype, poisoned):
    """Without a backward to come the op is called without keep_conv: it returns the conv output
    empty, and y, mean and rstd bit for bit those of the call that keeps it (13 channels: the
    cpp kernel's padded rows; 32: rows computed in place)."""
    gen, _ = fresh_generator()
    for C in (13, 32):
        x, ln_weight, ln_bias, _ = _ln_inputs(gen, (2, C, 6, 5), dtype, device, True)
        dw_weight = randn(gen, C, 1, 7, 7, dtype=dtype, device=device, scale=1 / 7)
        dw_bias = randn(gen, C, dtype=dtype, device=device)
        args = (x, dw_weight, dw_bias, ln_weight, ln_bias, 1e-6)
        kept = _fused_op(backend)(*args, True)
        dropped = _fused_op(backend)(*args, False)
        assert kept[1].shape == x.shape and dropped[1].numel() == 0
        for name, i in (("y", 0), ("mean", 2), ("rstd", 3)):
            assert torch.equal(kept[i], dropped[i]), name
        calls = []
        original = ck.ops.dwconv_layer_norm.DWCONV_LAYER_NORM.impls[backend]
        ck.ops.dwconv_layer_norm.DWCONV_LAYER_NORM.impls[backend] = \
            lambda *a: calls.append(a[-1]) or original(*a)
        try:
            with torch.no_grad():
                y = ck.dwconv_layer_norm(*args, backend=backend)
        finally:
            ck.ops.dwconv_layer_norm.DWCONV_LAYER_NORM.impls[backend] = original
        assert calls == [False] and torch.equal(y, kept[0])


@pytest.mark.parametrize("backend,device", TARGETS)
def test_dwconv_layer_norm_backward_without_kept_conv(backend, device, poisoned):
    """The op called without keep_conv while gradients are wanted: the backward recomputes the
    conv output, and every gradient is the one of the call that kept it."""
    gen, _ = fresh_generator()
    x, ln_weight, ln_bias, grad = _ln_inputs(gen, (2, 24, 6, 5), torch.float32, device, True)
    dw_weight = randn(gen, 24, 1, 7, 7, dtype=torch.float32, device=device, scale=1 / 7)
    dw_bias = randn(gen, 24, dtype=torch.float32, device=device)
    inputs = (x, dw_weight, dw_bias, ln_weight, ln_bias)
    kept, dropped = (_forward_backward(lambda *a: _fused_op(backend)(*a, 1e-6, keep)[0], inputs,
                                       grad) for keep in (True, False))
    for name, a, b in zip(("y", "grad_x", "grad_dw_weight", "grad_dw_bias", "grad_ln_weight",
                           "grad_ln_bias"), kept, dropped):
        assert torch.equal(a, b), name


@pytest.mark.skipif("cpp" not in ck.available_backends(), reason="needs the cpp backend")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("keep_conv", [True, False], ids=["kept", "recomputed"])
@pytest.mark.parametrize("has_bias", [True, False], ids=["bias", "no_bias"])
def test_cpp_autograd_is_the_one_backward_formula(dtype, keep_conv, has_bias):
    """csrc/autograd.cpp states ops/dwconv_layer_norm.backward in C++: given the cpp ops as its
    terms, the Python definition gives every gradient of the C++ autograd, term by term and bit
    for bit (kept and recomputed conv, with and without the conv bias)."""
    from convnext_kernels.ops import dwconv_layer_norm as fused
    gen, _ = fresh_generator()
    x, ln_weight, ln_bias, grad = _ln_inputs(gen, (2, 24, 6, 5), dtype, "cpu", True)
    dw_weight = randn(gen, 24, 1, 7, 7, dtype=dtype, scale=1 / 7)
    dw_bias = randn(gen, 24, dtype=dtype) if has_bias else None
    inputs = [t for t in (x, dw_weight, dw_bias, ln_weight, ln_bias)]
    leaves = [t.detach().requires_grad_() if t is not None else None for t in inputs]
    op = torch.ops.convnext_kernels.dwconv_layer_norm
    y = op(*leaves, 1e-6, keep_conv)[0]
    wanted = [t for t in leaves if t is not None]
    autograd = dict(zip([n for n, t in zip(("x", "dw_weight", "dw_bias", "ln_weight", "ln_bias"),
                                           leaves) if t is not None],
                        torch.autograd.grad(y, wanted, grad)))
    with torch.no_grad():
        _, conv, mean, rstd = op(*inputs, 1e-6, True)
    python = dict(zip(("x", "dw_weight", "dw_bias", "ln_weight", "ln_bias"), fused.backward(
        fused.terms("cpp"), grad, x, dw_weight, dw_bias, ln_weight,
        conv if keep_conv else None, mean, rstd)))
    assert (python["dw_bias"] is None) == (not has_bias)
    for name, value in autograd.items():
        assert torch.equal(value, python[name]), name


@pytest.mark.parametrize("backend,device", TARGETS)
def test_fused_without_conv_bias(backend, device, poisoned):
    gen, seed = fresh_generator()
    x, ln_weight, ln_bias, grad = _ln_inputs(gen, (2, 24, 6, 5), torch.float32, device, False)
    dw_weight = randn(gen, 24, 1, 3, 3, dtype=torch.float32, device=device)
    ours = _forward_backward(lambda x, w, lw, lb: ck.dwconv_layer_norm(
        x, w, None, lw, lb, backend=backend), (x, dw_weight, ln_weight, ln_bias), grad)
    ref = _forward_backward(lambda x, w, lw, lb: reference.dwconv_layer_norm(x, w, None, lw, lb),
                            [t.double().cpu() for t in (x, dw_weight, ln_weight, ln_bias)],
                            grad.double().cpu())
    _check_all(["y", "grad_x", "grad_dw_weight", "grad_ln_weight", "grad_ln_bias"], ours, ref,
               ref, torch.float32, seed)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("backend,device", TARGETS)
def test_constant_pixel_gives_finite_output(backend, device, dtype):
    x = torch.full((1, 40, 2, 3), 3.25, dtype=dtype, device=device)
    weight = torch.randn(40, dtype=dtype, device=device)
    bias = torch.randn(40, dtype=dtype, device=device)
    y = ck.layer_norm_2d(x, weight, bias, backend=backend)
    assert torch.isfinite(y).all()
    torch.testing.assert_close(y, bias[None, :, None, None].expand_as(y), rtol=0, atol=0)


@pytest.mark.parametrize("backend,device", TARGETS)
def test_weight_grads_are_deterministic(backend, device):
    gen, _ = fresh_generator()
    x, weight, bias, grad = _ln_inputs(gen, (2, 48, 9, 7), torch.float32, device, True)
    runs = [_forward_backward(lambda *a: ck.layer_norm_2d(*a, backend=backend),
                              (x, weight, bias), grad) for _ in range(2)]
    for a, b in zip(*runs):
        assert torch.equal(a, b)


@pytest.mark.parametrize("wanted", ["x", "weight", "bias", "weight+bias"])
@pytest.mark.parametrize("backend,device", TARGETS)
def test_layer_norm_gradients_of_a_subset_of_the_inputs(backend, device, wanted):
    """Only some inputs require a gradient (a frozen norm, a frozen trunk): those get the float64
    reference's gradients, the others none; the C++ op's autograd is C++ (csrc/autograd.cpp)."""
    gen, seed = fresh_generator()
    x, weight, bias, grad = _ln_inputs(gen, (2, 40, 5, 7), torch.float32, device, True)
    names = ("x", "weight", "bias")
    leaves = [t.detach().requires_grad_(name in wanted.split("+")) for name, t in
              zip(names, (x, weight, bias))]
    y = ck.layer_norm_2d(*leaves, backend=backend)
    y.backward(grad)
    ref = [t.detach().double().requires_grad_() for t in (x, weight, bias)]
    reference.layer_norm_2d(*ref).backward(grad.double())
    eager = [t.detach().requires_grad_() for t in (x, weight, bias)]
    reference.layer_norm_2d(*eager).backward(grad)
    for name, leaf, r, e in zip(names, leaves, ref, eager):
        if name not in wanted.split("+"):
            assert leaf.grad is None, name
            continue
        scale = _parameter_grad_scales(x, grad).get(f"grad_{name}")
        assert_accurate(f"grad_{name}", leaf.grad, r.grad, e.grad, torch.float32, seed, scale)


def test_gradcheck_cpp_float64():
    gen, _ = fresh_generator()
    x = randn(gen, 2, 5, 3, 4, dtype=torch.float64).requires_grad_()
    ln_w, ln_b = (randn(gen, 5, dtype=torch.float64).requires_grad_() for _ in range(2))
    dw_w = randn(gen, 5, 1, 3, 3, dtype=torch.float64).requires_grad_()
    dw_b = randn(gen, 5, dtype=torch.float64).requires_grad_()
    assert torch.autograd.gradcheck(lambda *a: ck.layer_norm_2d(*a, backend="cpp"),
                                    (x, ln_w, ln_b))
    assert torch.autograd.gradcheck(lambda *a: ck.dwconv_layer_norm(*a, backend="cpp"),
                                    (x, dw_w, dw_b, ln_w, ln_b))


def _opcheck_cases():
    cases = []
    available = ck.available_backends()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if "cpp" in available:
        cases.append(("cpp", torch.ops.convnext_kernels.layer_norm_2d.default,
                      torch.ops.convnext_kernels.layer_norm_2d_backward.default, "cpu"))
    if "triton" in available:
        cases.append(("triton", torch.ops.convnext_kernels.layer_norm_2d_triton.default,
                      torch.ops.convnext_kernels.layer_norm_2d_backward_triton.default, device))
    if "cuda" in available:
        cases.append(("cuda", torch.ops.convnext_kernels.layer_norm_2d.default,
                      torch.ops.convnext_kernels.layer_norm_2d_backward.default, "cuda"))
    return cases


@pytest.mark.parametrize("name,forward_op,backward_op,device", _opcheck_cases(),
                         ids=lambda v: v if isinstance(v, str) else "")
def test_opcheck(name, forward_op, backward_op, device):
    x = torch.randn(1, 24, 3, 4, device=device).contiguous(memory_format=torch.channels_last)
    w = torch.randn(24, device=device, requires_grad=True)
    b = torch.randn(24, device=device, requires_grad=True)
    torch.library.opcheck(forward_op, (x.requires_grad_(), w, b, 1e-6))
    y, mean, rstd = forward_op(x.detach(), w.detach(), b.detach(), 1e-6)
    torch.library.opcheck(backward_op, (torch.randn_like(x), x.detach(), w.detach(), mean, rstd))
    fused = {"triton": "dwconv_layer_norm_triton"}.get(name, "dwconv_layer_norm")
    fused = getattr(torch.ops.convnext_kernels, fused).default
    dw = torch.randn(24, 1, 3, 3, device=device, requires_grad=True)
    torch.library.opcheck(fused, (x, dw, None, w, b, 1e-6))
    torch.library.opcheck(fused, (x, dw, None, w, b, 1e-6, False))


@pytest.mark.parametrize("backend,device", TARGETS)
def test_torch_compile_fullgraph(backend, device):
    torch._dynamo.reset()
    gen, _ = fresh_generator()
    x, w, b, _ = _ln_inputs(gen, (2, 16, 4, 5), torch.float32, device, True)
    dw = randn(gen, 16, 1, 3, 3, dtype=torch.float32, device=device)

    def fn(x, dw, w, b):
        y = ck.dwconv_layer_norm(x, dw, None, w, b, backend=backend)
        return ck.layer_norm_2d(y, w, b, backend=backend).square().sum()

    leaves_c = [t.detach().requires_grad_() for t in (x, dw, w, b)]
    leaves_e = [t.detach().requires_grad_() for t in (x, dw, w, b)]
    torch.compile(fn, fullgraph=True)(*leaves_c).backward()
    fn(*leaves_e).backward()
    for c, e in zip(leaves_c, leaves_e):
        torch.testing.assert_close(c.grad, e.grad, rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------------------------- bad input

def _good():
    return torch.randn(1, 4, 3, 3), torch.randn(4), torch.randn(4)


LN_BAD = [
    ("weight size", lambda x, w, b: (x, torch.randn(5), b, 1e-6), ValueError,
     "weight must have shape"),
    ("bias size", lambda x, w, b: (x, w, torch.randn(3), 1e-6), ValueError, "bias must have shape"),
    ("bias None", lambda x, w, b: (x, w, None, 1e-6), TypeError, "bias must be a tensor"),
    ("eps zero", lambda x, w, b: (x, w, b, 0.0), ValueError, "eps must be > 0"),
    ("eps negative", lambda x, w, b: (x, w, b, -1e-5), ValueError, "eps must be > 0"),
    ("eps str", lambda x, w, b: (x, w, b, "1e-6"), TypeError, "eps must be a float"),
    ("3-D x", lambda x, w, b: (x[0], w, b, 1e-6), ValueError, "4-D"),
    ("int x", lambda x, w, b: (x.long(), w, b, 1e-6), TypeError, "floating"),
    ("dtype mix", lambda x, w, b: (x, w.half(), b, 1e-6), TypeError, "weight has dtype"),
    ("device mix", lambda x, w, b: (x, w, b.to("meta"), 1e-6), ValueError, "bias is on meta"),
]


@pytest.mark.parametrize("backend", ["auto", "torch", "cpp", "triton"])
@pytest.mark.parametrize("case,make,error,match", LN_BAD, ids=[c[0] for c in LN_BAD])
def test_layer_norm_bad_input(backend, case, make, error, match):
    with pytest.raises(error, match=match):
        ck.layer_norm_2d(*make(*_good()), backend=backend)


@pytest.mark.parametrize("backend", ["auto", "torch", "cpp", "triton"])
def test_dwconv_layer_norm_bad_input(backend):
    x, w, b = _good()
    dw = torch.randn(4, 1, 3, 3)
    with pytest.raises(ValueError, match="odd"):
        ck.dwconv_layer_norm(x, torch.randn(4, 1, 2, 2), None, w, b, backend=backend)
    with pytest.raises(ValueError, match="ln_weight|weight must have shape"):
        ck.dwconv_layer_norm(x, dw, None, torch.randn(5), b, backend=backend)
    with pytest.raises(ValueError, match="eps must be > 0"):
        ck.dwconv_layer_norm(x, dw, None, w, b, eps=0.0, backend=backend)


def test_cuda_backend_refused_by_name():
    with pytest.raises(ValueError, match="backend 'cuda' cannot serve"):
        ck.layer_norm_2d(*_good(), backend="cuda")


def test_cpp_op_checks_its_arguments_too():
    x, w, b = _good()
    with pytest.raises(ValueError, match="eps must be > 0"):
        torch.ops.convnext_kernels.layer_norm_2d(x, w, b, 0.0)
    with pytest.raises(ValueError, match="weight must have shape"):
        torch.ops.convnext_kernels.layer_norm_2d(x, torch.randn(3), b, 1e-6)


@pytest.mark.skipif("triton" not in ck.available_backends(), reason="needs the triton backend")
def test_triton_channel_limit_is_refused_by_resolve_before_a_launch(monkeypatch):
    """The Triton LayerNorm's channel limit is declared on the op, so resolve refuses a wider
    tensor by name (no launch: the implementations are replaced by ones that fail)."""
    from convnext_kernels.ops.dwconv_layer_norm import DWCONV_LAYER_NORM
    from convnext_kernels.ops.layer_norm import LAYER_NORM
    from convnext_kernels.triton.layer_norm import MAX_CHANNELS

    def no_launch(*args):
        raise AssertionError("launched past the channel limit")

    for op in (LAYER_NORM, DWCONV_LAYER_NORM):
        assert op.max_channels["triton"] == MAX_CHANNELS
        monkeypatch.setitem(op.impls, "triton", no_launch)
    C = MAX_CHANNELS + 1
    x, w = torch.randn(1, C, 1, 1), torch.randn(C)
    with pytest.raises(ValueError, match=f"at most {MAX_CHANNELS} channels, got {C}"):
        ck.layer_norm_2d(x, w, w, backend="triton")
    with pytest.raises(ValueError, match=f"at most {MAX_CHANNELS} channels, got {C}"):
        ck.dwconv_layer_norm(x, torch.randn(C, 1, 3, 3), None, w, w, backend="triton")


@pytest.mark.skipif("cpp" not in ck.available_backends(), reason="needs the cpp backend")
def test_auto_falls_back_by_declared_limits():
    """`auto` takes the first backend of the device's order that can serve: one whose channel
    limit is passed is skipped; where none serves, eager torch runs with a warning naming why."""
    op = ck.backends.Op("demo", auto_order={"cpu": ("cpp", "torch")})
    op.register("cpp", lambda x: x, max_channels=8)
    narrow, wide = torch.randn(2, 8), torch.randn(2, 9)
    assert op.resolve("auto", narrow, narrow.shape[1]) == "cpp"
    assert op.resolve("auto", wide, wide.shape[1]) == "torch"
    strict = ck.backends.Op("demo", auto_order={"cpu": ("cpp",)})
    strict.register("cpp", lambda x: x, max_channels=8)
    with pytest.warns(UserWarning, match="cpp: its kernels take at most 8 channels, got 9"):
        assert strict.resolve("auto", wide, 9) == "torch"
    with pytest.raises(ValueError, match="demo: backend 'cpp' cannot serve.*at most 8"):
        strict.resolve("cpp", wide, 9)
