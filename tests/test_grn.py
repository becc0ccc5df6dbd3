import pytest
import torch

import convnext_kernels as ck
from convnext_kernels import reference
from numerics import assert_accurate, fresh_generator, kernel_targets, randn, rel_error

# No CUDA kernels exist for this op (the block runs its Triton kernels on a GPU).
TARGETS = kernel_targets(exclude=("cuda",))
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
# (N, H, W, C): a ConvNeXt-V2 hidden width that is not a power of two (160 = 4 × 40), 1×1
# images, one sample, C wider than a channel tile (384 > 256).
SHAPES = [(2, 5, 7, 160), (3, 1, 1, 24), (1, 7, 7, 384), (2, 3, 2, 8)]


def _inputs(gen, shape, dtype, device, param_layout, zero_channel):
    """param_layout: "timm" ([C]), "official" ([1,1,1,C]) or "strided" (every other element of
    a [2C] tensor: not contiguous)."""
    N, H, W, C = shape
    x = randn(gen, N, H, W, C, dtype=dtype, device=device)
    if zero_channel:  # G = 0: no gradient through the norm (as vector_norm's backward)
        x[0, ..., 1] = 0

    def param():
        if param_layout == "strided":
            return randn(gen, 2 * C, dtype=dtype, device=device)[::2]
        return randn(gen, *((1, 1, 1, C) if param_layout == "official" else (C,)), dtype=dtype,
                     device=device)
    weight, bias = param(), param()
    return x, weight, bias, randn(gen, N, H, W, C, dtype=dtype, device=device)


def _forward_backward(fn, x, weight, bias, grad):
    leaves = [t.detach().requires_grad_() for t in (x, weight, bias)]
    y = fn(*leaves)
    y.backward(grad)
    return [y] + [t.grad for t in leaves]


def _grad_scales(x, grad):
    """weight and bias gradients are sums over N*H*W pixels: judged against the sum of the terms'
    magnitudes (a bound for any summation order)."""
    x, grad = x.double().cpu(), grad.double().cpu()
    return {"grad_weight": (grad * x * reference.grn_response(x)).abs().sum((0, 1, 2)).max(),
            "grad_bias": grad.abs().sum((0, 1, 2)).max()}


@pytest.mark.parametrize("param_layout", ["timm", "official", "strided"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("backend,device", TARGETS)
def test_grn_matches_float64_reference(backend, device, dtype, shape, param_layout, poisoned):
    gen, seed = fresh_generator()
    x, w, b, grad = _inputs(gen, shape, dtype, device, param_layout, zero_channel=True)
    ours = _forward_backward(lambda *a: ck.grn(*a, backend=backend), x, w, b, grad)
    ref = _forward_backward(reference.grn, *[t.double().cpu() for t in (x, w, b, grad)])
    eager = _forward_backward(reference.grn, x, w, b, grad)
    scales = _grad_scales(x, grad)
    for name, o, r, e in zip(["y", "grad_x", "grad_weight", "grad_bias"], ours, ref, eager):
        assert o.shape == r.shape and o.dtype == dtype, name
        assert_accurate(name, o, r, e, dtype, seed, scales.get(name))


def test_gradcheck_cpp_float64():
    gen, _ = fresh_generator()
    x, w, b, _ = _inputs(gen, (2, 3, 2, 5), torch.float64, "cpu", "timm", zero_channel=False)
    assert torch.autograd.gradcheck(lambda *a: ck.grn(*a, backend="cpp"),
                                    [t.requires_grad_() for t in (x, w, b)])


def _opcheck_cases():
    cases = []
    available = ck.available_backends()
    if "cpp" in available:
        cases.append((torch.ops.convnext_kernels.grn.default,
                      torch.ops.convnext_kernels.grn_backward.default, "cpu"))
    if "triton" in available:
        cases.append((torch.ops.convnext_kernels.grn_triton.default,
                      torch.ops.convnext_kernels.grn_backward_triton.default,
                      "cuda" if torch.cuda.is_available() else "cpu"))
    return cases


@pytest.mark.parametrize("forward_op,backward_op,device", _opcheck_cases())
def test_opcheck(forward_op, backward_op, device):
    x = torch.randn(2, 3, 4, 24, device=device)
    w = torch.randn(24, device=device, requires_grad=True)
    b = torch.randn(24, device=device, requires_grad=True)
    torch.library.opcheck(forward_op, (x.requires_grad_(), w, b, 1e-6))
    _, norm, nx = forward_op(x.detach(), w.detach(), b.detach(), 1e-6)
    torch.library.opcheck(backward_op, (torch.randn_like(x), x.detach(), w.detach(), norm, nx,
                                        1e-6))


@pytest.mark.parametrize("backend,device", TARGETS)
def test_torch_compile_fullgraph(backend, device):
    torch._dynamo.reset()
    gen, _ = fresh_generator()
    x, w, b, _ = _inputs(gen, (2, 3, 4, 16), torch.float32, device, "timm", False)

    def fn(x, w, b):
        return ck.grn(x, w, b, backend=backend).square().sum()

    leaves_c = [t.detach().requires_grad_() for t in (x, w, b)]
    leaves_e = [t.detach().requires_grad_() for t in (x, w, b)]
    torch.compile(fn, fullgraph=True)(*leaves_c).backward()
    fn(*leaves_e).backward()
    for c, e in zip(leaves_c, leaves_e):
        torch.testing.assert_close(c.grad, e.grad, rtol=1e-4, atol=1e-4)


GRN_BAD = [
    ("3-D x", lambda x, w, b: (x[0], w, b), ValueError, "4-D"),
    ("weight size", lambda x, w, b: (x, torch.randn(5), b), ValueError, "weight must hold 4"),
    ("bias None", lambda x, w, b: (x, w, None), TypeError, "bias must be a tensor"),
    ("dtype mix", lambda x, w, b: (x, w.double(), b), TypeError, "weight has dtype"),
    ("int x", lambda x, w, b: (x.long(), w, b), TypeError, "floating"),
]


@pytest.mark.parametrize("backend", ["auto", "torch", "cpp", "triton"])
@pytest.mark.parametrize("case,make,error,match", GRN_BAD, ids=[c[0] for c in GRN_BAD])
def test_grn_bad_input(backend, case, make, error, match):
    with pytest.raises(error, match=match):
        ck.grn(*make(torch.randn(2, 3, 3, 4), torch.randn(4), torch.randn(4)), backend=backend)


def test_grn_eps_checked():
    with pytest.raises(ValueError, match="eps must be > 0"):
        ck.grn(torch.randn(1, 2, 2, 4), torch.randn(4), torch.randn(4), eps=0.0)


@pytest.mark.skipif(not {"cpp", "triton"} <= set(ck.available_backends()),
                    reason="needs both the cpp and the triton backend")
def test_cpu_and_triton_statistics_agree():
    """The [N, C] statistics exist twice (csrc/cpu/grn_stats.h, triton/grn.py): the same input,
    with an all-zero channel and a channel of tiny values, gives the same G, nx and gradients."""
    gen, seed = fresh_generator()
    x = randn(gen, 2, 3, 5, 16)
    x[..., 3] = 0.0
    x[..., 7] *= 1e-19
    w, b = randn(gen, 16), randn(gen, 16)
    grad = randn(gen, *x.shape)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    cpp = torch.ops.convnext_kernels.grn.default(x, w, b, 1e-6)
    tri = torch.ops.convnext_kernels.grn_triton.default(x.to(device), w.to(device),
                                                        b.to(device), 1e-6)
    # G and nx elementwise; y as every output is judged (max error over max |y|): an element of
    # y near zero (x * scale cancelling the bias) magnifies a 1-ulp difference of G (seen:
    # torch's vectorised fp32 sqrt, which the cpp backend uses, against the interpreter's numpy
    # one) beyond any elementwise bound.
    for name, a, t in zip(("G", "nx"), cpp[1:], tri[1:]):
        assert torch.allclose(a, t.cpu(), rtol=1e-5, atol=0), f"{name} (seed {seed})"
    assert rel_error(tri[0], cpp[0]) <= 1e-5, f"y (seed {seed})"
    assert cpp[1][:, 3].eq(0).all() and cpp[1][:, 7].gt(0).all()
    grads = [torch.ops.convnext_kernels.grn_backward.default(grad, x, w, cpp[1], cpp[2], 1e-6),
             torch.ops.convnext_kernels.grn_backward_triton.default(
                 grad.to(device), x.to(device), w.to(device), tri[1], tri[2], 1e-6)]
    for name, a, t in zip(("grad_x", "grad_w", "grad_b"), *grads):
        assert rel_error(t, a) <= 1e-5, f"{name} (seed {seed})"


@pytest.mark.skipif("triton" not in ck.available_backends(), reason="needs triton")
def test_triton_backward_with_more_splits_than_sample_chunks():
    """The backward kernel's programs: a sample over two row chunks (529 > 512 rows), and more
    gradient splits than (sample, chunk) programs, whose extra programs write only their
    workspace rows (poisoned first). fp32 against the float64 reference."""
    from convnext_kernels.triton import grn as tgrn
    from convnext_kernels.triton.grad_workspace import GradWorkspace
    gen, seed = fresh_generator()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    N, H, W, C, eps = 2, 23, 23, 8, 1e-6
    x, w, b, grad = (randn(gen, *s, device=device) for s in ((N, H, W, C), (C,), (C,),
                                                            (N, H, W, C)))
    _, G, nx = tgrn.grn_forward(x, w, b, eps)
    x3, g3 = x.reshape(N, H * W, C), grad.reshape(N, H * W, C)
    sums = torch.empty(2, N, C, device=device)
    tgrn.column_sums_launch(g3, x3, sums[0], sums[1])()
    grad_dot, grad_sum = (tgrn._column_sums_as_partials(t, H * W) for t in sums)
    ws = GradWorkspace({"weight": (C,), "bias": (C,)}, 7, torch.float32, device)
    ws.partial.fill_(float("nan"))
    grad_x = torch.full_like(x3, float("nan"))
    launch = tgrn.grn_backward_launch(g3, x3, G, nx, w, grad_dot, grad_sum, grad_x,
                                      ws["weight"], ws["bias"], eps)
    assert launch.grid[0] == 7 and launch.args[18:20] == (2, 265), launch.args[17:21]
    launch()
    grads = ws.finalize_each()
    leaves = [t.detach().double().cpu().requires_grad_() for t in (x, w, b)]
    reference.grn(*leaves, eps).backward(grad.double().cpu())
    for name, out, ref in zip(("grad_x", "grad_w", "grad_b"),
                              (grad_x.reshape(x.shape), grads["weight"], grads["bias"]),
                              (t.grad for t in leaves)):
        assert rel_error(out, ref) <= 1e-5, f"{name} (seed {seed})"
