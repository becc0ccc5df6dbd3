"""The CUDA kernels' thread bodies, run thread by thread (and lane by lane) on the CPU
(tests/cuda_emulation.cpp) over the same launch plans as the GPU glue: indexing, the 16-byte and
scalar paths, the k-specialised and generic kernels, the LayerNorm lanes, the fused kernel's two
phases and the two-stage weight-gradient reductions, checked without a GPU."""
import os

import pytest
import torch
from torch.utils.cpp_extension import load

from convnext_kernels import reference
from numerics import assert_accurate, fresh_generator, randn

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def emulation():
    build_dir = os.path.join(ROOT, "build", "cuda_emulation")
    os.makedirs(build_dir, exist_ok=True)
    return load("ck_cuda_emulation", [os.path.join(ROOT, "tests", "cuda_emulation.cpp")],
                build_directory=build_dir, extra_cflags=["-O2"])


# (N, C, H, W): W not a multiple of the 4-pixel strip; C = 40 takes 16-byte vectors in every
# dtype, C = 12 only in fp32 (8 bf16/fp16 per vector), C = 5 never.
SHAPES = [(2, 40, 9, 11), (1, 12, 6, 7), (2, 5, 3, 2)]


@pytest.mark.parametrize("scalar_path", [False, True], ids=["vec", "scalar"])
@pytest.mark.parametrize("k", [3, 5, 7, 9])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
def test_cuda_thread_bodies(emulation, dtype, shape, k, scalar_path, poisoned):
    gen, seed = fresh_generator()
    N, C, H, W = shape
    x = randn(gen, N, C, H, W, dtype=dtype)
    weight = randn(gen, C, 1, k, k, dtype=dtype, scale=1 / k)
    bias = randn(gen, C, dtype=dtype)
    grad = randn(gen, N, C, H, W, dtype=dtype)
    x_nhwc = x.permute(0, 2, 3, 1).contiguous()
    taps = weight.reshape(C, k * k).t().float().contiguous()
    y = emulation.forward(x_nhwc, taps, bias.float(), k, scalar_path).permute(0, 3, 1, 2)
    sums = emulation.backward_weight(grad.permute(0, 2, 3, 1).contiguous(), x_nhwc, k,
                                     scalar_path)

    leaves = [t.double().requires_grad_() for t in (x, weight, bias)]
    y_ref = reference.dwconv2d(*leaves)
    y_ref.backward(grad.double())
    y_eager = reference.dwconv2d(x, weight, bias)
    assert_accurate("y", y, y_ref, y_eager, dtype, seed)
    # The weight gradient is kept in fp32 until the glue casts it: judge it as fp32.
    assert_accurate("grad_weight", sums[: k * k].t().reshape(C, 1, k, k), leaves[1].grad, None,
                    torch.float32, seed)
    assert_accurate("grad_bias", sums[k * k], leaves[2].grad, None, torch.float32, seed)


# (rows, C): C = 40 and 1408 take 16-byte vectors in every dtype (and more than 32 vectors a row
# for 1408), C = 12 only in fp32, C = 5 and 1 never.
LN_SHAPES = [(37, 40), (5, 1408), (9, 12), (7, 5), (4, 1)]


@pytest.mark.parametrize("scalar_path", [False, True], ids=["vec", "scalar"])
@pytest.mark.parametrize("shape", LN_SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
def test_cuda_layer_norm_lanes(emulation, dtype, shape, scalar_path, poisoned):
    gen, seed = fresh_generator()
    rows, C = shape
    x = randn(gen, rows, C, dtype=dtype, scale=2.0) + 1.0
    weight, bias, grad = (randn(gen, *s, dtype=dtype) for s in ((C,), (C,), (rows, C)))
    y, mean, rstd = emulation.layer_norm_forward(x, weight, bias, 1e-6, scalar_path)
    grad_x, sums = emulation.layer_norm_backward(grad, x, weight, mean, rstd, scalar_path)

    def as_nchw(t):  # rows of C -> 1,C,rows,1 for the 2-D reference
        return t.t().reshape(1, C, rows, 1)

    leaves = [as_nchw(x).double().requires_grad_(), weight.double().requires_grad_(),
              bias.double().requires_grad_()]
    y_ref = reference.layer_norm_2d(*leaves)
    y_ref.backward(as_nchw(grad).double())
    y_eager = reference.layer_norm_2d(as_nchw(x), weight, bias)
    assert_accurate("y", as_nchw(y), y_ref, y_eager, dtype, seed)
    x_eager = as_nchw(x).requires_grad_()
    reference.layer_norm_2d(x_eager, weight, bias).backward(as_nchw(grad))
    assert_accurate("grad_x", as_nchw(grad_x), leaves[0].grad, x_eager.grad, dtype, seed)
    assert_accurate("grad_weight", sums[0], leaves[1].grad, None, torch.float32, seed)
    # A sum over rows: judged against the size of its terms (with few rows, e.g. 4, the sum
    # itself can cancel to near zero, and fp32 rounding of the terms is then a large part of it).
    assert_accurate("grad_bias", sums[1], leaves[2].grad, None, torch.float32, seed,
                    scale=grad.double().abs().sum(0).max())


# (N, C, H, W): many strips per block (C = 40), one strip per block with its channel groups
# looped (C = 520 on the scalar path), W not a multiple of the strip width.
FUSED_SHAPES = [(2, 40, 5, 11), (1, 520, 3, 5), (1, 16, 1, 1)]


@pytest.mark.parametrize("scalar_path", [False, True], ids=["vec", "scalar"])
@pytest.mark.parametrize("k", [3, 7, 9])
@pytest.mark.parametrize("shape", FUSED_SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_cuda_fused_dwconv_layer_norm(emulation, dtype, shape, k, scalar_path, poisoned):
    gen, seed = fresh_generator()
    N, C, H, W = shape
    x = randn(gen, N, C, H, W, dtype=dtype)
    dw_weight = randn(gen, C, 1, k, k, dtype=dtype, scale=1 / k)
    dw_bias, ln_weight, ln_bias = (randn(gen, C, dtype=dtype) for _ in range(3))
    taps = dw_weight.reshape(C, k * k).t().float().contiguous()
    y, conv, mean, rstd = emulation.dwconv_layer_norm_forward(
        x.permute(0, 2, 3, 1).contiguous(), taps, dw_bias.float(), ln_weight, ln_bias, k, 1e-6,
        scalar_path)
    inputs = (x, dw_weight, dw_bias, ln_weight, ln_bias)
    conv_ref = reference.dwconv2d(*(t.double() for t in inputs[:3]))
    y_ref = reference.layer_norm_2d(conv_ref, ln_weight.double(), ln_bias.double())
    assert_accurate("conv", conv.permute(0, 3, 1, 2), conv_ref, reference.dwconv2d(*inputs[:3]),
                    dtype, seed)
    assert_accurate("y", y.permute(0, 3, 1, 2), y_ref, reference.dwconv_layer_norm(*inputs),
                    dtype, seed)
    assert torch.isfinite(mean).all() and torch.isfinite(rstd).all()
