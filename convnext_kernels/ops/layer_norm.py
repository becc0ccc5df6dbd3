"""ck.layer_norm_2d: LayerNorm over the channels of an N,C,H,W tensor (timm's LayerNorm2d, the
official channels_first LayerNorm).

Backends: cpp and cuda are the C++ op convnext_kernels::layer_norm_2d (CPU and CUDA kernels in
_C), with a C++ autograd (csrc/autograd.cpp: no Python in its forward or backward, which at
ConvNeXt's small late-stage tensors cost as much as the kernels); triton is the Python custom op
convnext_kernels::layer_norm_2d_triton, with the same formula registered here. The ops return
(y, mean, rstd); autograd saves the statistics and runs the matching backward op.
"""
from typing import Tuple

import torch
from torch import Tensor

from .. import _ext, backends, reference
from .._checks import check_layer_norm_args

_NS = "convnext_kernels"


def layer_norm_fake(x, weight, bias, eps):
    N, _, H, W = x.shape
    stats = x.new_empty(N, H, W, dtype=reference.statistics_dtype(x.dtype))
    return torch.empty_like(x), stats, torch.empty_like(stats)


def _layer_norm_backward_fake(grad_y, x, weight, mean, rstd):
    return torch.empty_like(x), weight.new_empty(weight.shape), weight.new_empty(weight.shape)


def _register_layer_norm_autograd(forward_op, backward_op):
    def setup_context(ctx, inputs, output):
        x, weight, _, _ = inputs
        _, mean, rstd = output
        ctx.mark_non_differentiable(mean, rstd)
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(x, weight, mean, rstd)

    def backward(ctx, grad_y, _grad_mean, _grad_rstd):
        if grad_y is None:  # y did not reach the loss
            return None, None, None, None
        x, weight, mean, rstd = ctx.saved_tensors
        grad_x, grad_weight, grad_bias = backward_op(grad_y, x, weight, mean, rstd)
        return grad_x, grad_weight, grad_bias, None

    torch.library.register_autograd(forward_op, backward, setup_context=setup_context)


# auto: cpp on CPU, faster than eager there in the op and model benchmarks (docs/PERFORMANCE.md);
# on CUDA by count until the campaign's measured table applies (measured.py).
LAYER_NORM = backends.Op("layer_norm_2d",
                         auto_order={"cpu": ("cpp",), "cuda": ("cuda", "triton")})

if _ext.LOADED:
    torch.library.register_fake(f"{_NS}::layer_norm_2d")(layer_norm_fake)
    torch.library.register_fake(f"{_NS}::layer_norm_2d_backward")(_layer_norm_backward_fake)
    LAYER_NORM.register("cpp", torch.ops.convnext_kernels.layer_norm_2d)
    if _ext.BUILT_WITH_CUDA:
        LAYER_NORM.register("cuda", torch.ops.convnext_kernels.layer_norm_2d)

if backends.triton_importable():
    from ..op_registration import triton_custom_op
    from ..triton import layer_norm as _triton_layer_norm

    @triton_custom_op(f"{_NS}::layer_norm_2d_triton")
    def _layer_norm_2d_triton(x: Tensor, weight: Tensor, bias: Tensor,
                              eps: float) -> Tuple[Tensor, Tensor, Tensor]:
        return _triton_layer_norm.layer_norm_2d_forward(x, weight, bias, eps)

    @triton_custom_op(f"{_NS}::layer_norm_2d_backward_triton")
    def _layer_norm_2d_backward_triton(grad_y: Tensor, x: Tensor, weight: Tensor, mean: Tensor,
                                       rstd: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
        return _triton_layer_norm.layer_norm_2d_backward(grad_y, x, weight, mean, rstd)

    _layer_norm_2d_triton.register_fake(layer_norm_fake)
    _layer_norm_2d_backward_triton.register_fake(_layer_norm_backward_fake)
    _register_layer_norm_autograd(_layer_norm_2d_triton, _layer_norm_2d_backward_triton)
    LAYER_NORM.register("triton", _layer_norm_2d_triton,
                        max_channels=_triton_layer_norm.MAX_CHANNELS)
    BACKWARD = {"triton": _layer_norm_2d_backward_triton}  # backend -> its backward op
else:
    BACKWARD = {}
if _ext.LOADED:
    BACKWARD["cpp"] = torch.ops.convnext_kernels.layer_norm_2d_backward
    if _ext.BUILT_WITH_CUDA:
        BACKWARD["cuda"] = torch.ops.convnext_kernels.layer_norm_2d_backward


def layer_norm_2d(x: Tensor, weight: Tensor, bias: Tensor, eps: float = 1e-6, *,
                  backend: str = "auto") -> Tensor:
    """LayerNorm over the channels of N,C,H,W `x` (timm's LayerNorm2d, the official
    channels_first LayerNorm) with `weight`, `bias` [C]; fp32 statistics. The output keeps x's
    memory format; channels_last is the fast path. Differentiable in x, weight, bias."""
    check_layer_norm_args("layer_norm_2d", x, weight, bias, eps)
    name = LAYER_NORM.resolve(backend, x, x.shape[1])
    if name == "torch":
        return reference.layer_norm_2d(x, weight, bias, eps)
    return LAYER_NORM.impls[name](x, weight, bias, float(eps))[0]
