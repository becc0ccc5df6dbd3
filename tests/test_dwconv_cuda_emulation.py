"""The CUDA dwconv kernels' thread bodies, run thread by thread on the CPU (tests/cuda_emulation.cpp)
over the same launch plan as the GPU glue: indexing, the 16-byte and scalar paths, the k-specialised
and generic kernels, and the two-stage weight-gradient reduction, checked without a GPU."""
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
