"""ck.dwconv2d: depthwise k×k convolution, stride 1, padding k//2 (= F.conv2d(..., groups=C)).

Backends: cpp and cuda are the C++ op convnext_kernels::dwconv2d (CPU and CUDA kernels in _C);
triton is the Python custom op convnext_kernels::dwconv2d_triton. Both pairs share one autograd
formula: grad_x is grad_out convolved with the flipped weight (cpp and cuda: the forward op on a
flipped copy; triton: its own op reading the weight flipped), and one backward op returns
(grad_weight, grad_bias).
"""
from typing import Optional, Tuple

import torch
from torch import Tensor

from .. import _ext, backends, reference
from .._checks import check_dwconv_args

_NS = "convnext_kernels"


def _forward_fake(x, weight, bias):
    return torch.empty_like(x)


def _backward_weight_fake(grad_out, x, weight):
    return weight.new_empty(weight.shape), weight.new_empty(weight.shape[0])


def _input_grad_fake(grad_out, weight):
    return torch.empty_like(grad_out)


def _register_autograd(forward_op, input_grad_op, backward_weight_op):
    def setup_context(ctx, inputs, output):
        x, weight, bias = inputs
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None

    def backward(ctx, grad_out):
        x, weight = ctx.saved_tensors
        grad_x = grad_weight = grad_bias = None
        if ctx.needs_input_grad[0]:
            grad_x = input_grad_op(grad_out, weight)
        if ctx.needs_input_grad[1] or (ctx.has_bias and ctx.needs_input_grad[2]):
            grad_weight, grad_bias = backward_weight_op(grad_out, x, weight)
        return grad_x, grad_weight, grad_bias if ctx.has_bias else None

    torch.library.register_autograd(forward_op, backward, setup_context=setup_context)


# auto: cpp on CPU, faster than oneDNN's channels_last conv forward and far faster in the
# backward (README: the dwconv table); on CUDA by count until the campaign's measured table
# applies (measured.py).
DWCONV = backends.Op("dwconv2d", auto_order={"cpu": ("cpp",), "cuda": ("cuda", "triton")})
# backend -> the input-gradient op and the weight-gradient op its autograd uses (the fused op's
# backward reuses them: ops/dwconv_layer_norm.py)
INPUT_GRAD = {}
BACKWARD_WEIGHT = {}


def flipped_input_grad(grad_out, weight):
    """grad_x of the C++ ops: their forward on grad_out with a flipped copy of the weight."""
    return torch.ops.convnext_kernels.dwconv2d(grad_out, weight.flip([-2, -1]), None)


if _ext.LOADED:
    torch.library.register_fake(f"{_NS}::dwconv2d")(_forward_fake)
    torch.library.register_fake(f"{_NS}::dwconv2d_backward_weight")(_backward_weight_fake)
    _register_autograd(torch.ops.convnext_kernels.dwconv2d.default, flipped_input_grad,
                       torch.ops.convnext_kernels.dwconv2d_backward_weight.default)
    DWCONV.register("cpp", torch.ops.convnext_kernels.dwconv2d)
    INPUT_GRAD["cpp"] = flipped_input_grad
    BACKWARD_WEIGHT["cpp"] = torch.ops.convnext_kernels.dwconv2d_backward_weight
    if _ext.BUILT_WITH_CUDA:
        DWCONV.register("cuda", torch.ops.convnext_kernels.dwconv2d)
        INPUT_GRAD["cuda"] = flipped_input_grad
        BACKWARD_WEIGHT["cuda"] = torch.ops.convnext_kernels.dwconv2d_backward_weight

if backends.triton_importable():
    from ..op_registration import triton_custom_op
    from ..triton import dwconv as _triton_dwconv

    @triton_custom_op(f"{_NS}::dwconv2d_triton")
    def _dwconv2d_triton(x: Tensor, weight: Tensor, bias: Optional[Tensor]) -> Tensor:
        return _triton_dwconv.dwconv2d_forward(x, weight, bias)

    @triton_custom_op(f"{_NS}::dwconv2d_backward_weight_triton")
    def _dwconv2d_backward_weight_triton(grad_out: Tensor, x: Tensor,
                                         weight: Tensor) -> Tuple[Tensor, Tensor]:
        return _triton_dwconv.dwconv2d_backward_weight(grad_out, x, weight)

    @triton_custom_op(f"{_NS}::dwconv2d_input_grad_triton")
    def _dwconv2d_input_grad_triton(grad_out: Tensor, weight: Tensor) -> Tensor:
        return _triton_dwconv.dwconv2d_input_grad(grad_out, weight)

    _dwconv2d_triton.register_fake(_forward_fake)
    _dwconv2d_input_grad_triton.register_fake(_input_grad_fake)
    _dwconv2d_backward_weight_triton.register_fake(_backward_weight_fake)
    _register_autograd(_dwconv2d_triton, _dwconv2d_input_grad_triton,
                       _dwconv2d_backward_weight_triton)
    DWCONV.register("triton", _dwconv2d_triton)
    INPUT_GRAD["triton"] = _dwconv2d_input_grad_triton
    BACKWARD_WEIGHT["triton"] = _dwconv2d_backward_weight_triton


def dwconv2d(x: Tensor, weight: Tensor, bias: Optional[Tensor] = None, *,
             backend: str = "auto") -> Tensor:
    """Depthwise conv of N,C,H,W `x` with `weight` [C,1,k,k] (odd k ≤ 31), stride 1, padding
    k//2, optional `bias` [C]. The output keeps x's memory format; channels_last is the fast path
    (other memory formats are converted to it inside the kernels). Differentiable in x, weight,
    bias."""
    check_dwconv_args("dwconv2d", x, weight, bias)
    name = DWCONV.resolve(backend, x, x.shape[1])
    if name == "torch":
        return reference.dwconv2d(x, weight, bias)
    return DWCONV.impls[name](x, weight, bias)
