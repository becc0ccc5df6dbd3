"""ck.layer_norm_2d (LayerNorm over C of an N,C,H,W tensor) and ck.dwconv_layer_norm (depthwise
conv then that LayerNorm, fused).

Backends: cpp and cuda are the C++ ops convnext_kernels::layer_norm_2d (CPU and CUDA kernels
in _C) and ::dwconv_layer_norm (CPU and CUDA); triton is the Python custom ops
convnext_kernels::layer_norm_2d_triton and ::dwconv_layer_norm_triton. The ops return
(y, mean, rstd) [and the conv output]; autograd saves those and runs the matching backward op.
The C++ ops' autograd is C++ (csrc/autograd.cpp: no Python in their forward or backward, which at
ConvNeXt's small late-stage tensors cost as much as the kernels), with the formulas of the
triton ops' autograd registered here.
dwconv_layer_norm's backward is the LayerNorm backward on the kept conv output followed by the
dwconv backward (the input gradient of the conv needs the LayerNorm gradient of a k×k
neighbourhood, so the two are not fused). With no backward to come (keep_conv false) the conv
output is returned empty: the cpp and triton kernels then never write it.
"""
from typing import Optional, Tuple

import torch
from torch import Tensor

from .. import _ext, backends, reference
from .._checks import check_dwconv_args, check_layer_norm_args
from . import dwconv as dwconv_ops

_NS = "convnext_kernels"


def _layer_norm_fake(x, weight, bias, eps):
    N, _, H, W = x.shape
    stats = x.new_empty(N, H, W, dtype=reference.statistics_dtype(x.dtype))
    return torch.empty_like(x), stats, torch.empty_like(stats)


def _layer_norm_backward_fake(grad_y, x, weight, mean, rstd):
    return torch.empty_like(x), weight.new_empty(weight.shape), weight.new_empty(weight.shape)


def _dwconv_layer_norm_fake(x, dw_weight, dw_bias, ln_weight, ln_bias, eps, keep_conv=True):
    y, mean, rstd = _layer_norm_fake(x, ln_weight, ln_bias, eps)
    return y, torch.empty_like(x) if keep_conv else x.new_empty(0), mean, rstd


def _register_fused_autograd(fused_op, layer_norm_backward_op, dwconv_forward_op,
                             dwconv_input_grad_op, dwconv_backward_weight_op):
    def setup_context(ctx, inputs, output):
        x, dw_weight, dw_bias, ln_weight, _, _, keep_conv = inputs
        _, conv, mean, rstd = output
        ctx.mark_non_differentiable(conv, mean, rstd)
        ctx.set_materialize_grads(False)  # (no zero-filled gradients for the saved outputs)
        # An op called without keep_conv returned it empty: the backward recomputes it.
        kept = conv if keep_conv else None
        ctx.save_for_backward(x, dw_weight, dw_bias, ln_weight, kept, mean, rstd)
        ctx.has_dw_bias = dw_bias is not None

    def backward(ctx, grad_y, _grad_conv, _grad_mean, _grad_rstd):
        if grad_y is None:  # y did not reach the loss
            return None, None, None, None, None, None, None
        x, dw_weight, dw_bias, ln_weight, conv, mean, rstd = ctx.saved_tensors
        if conv is None:
            conv = dwconv_forward_op(x, dw_weight, dw_bias)
        grad_conv, grad_ln_weight, grad_ln_bias = layer_norm_backward_op(
            grad_y, conv, ln_weight, mean, rstd)
        grad_x = grad_dw_weight = grad_dw_bias = None
        if ctx.needs_input_grad[0]:
            grad_x = dwconv_input_grad_op(grad_conv, dw_weight)
        if ctx.needs_input_grad[1] or (ctx.has_dw_bias and ctx.needs_input_grad[2]):
            grad_dw_weight, grad_dw_bias = dwconv_backward_weight_op(grad_conv, x, dw_weight)
        return (grad_x, grad_dw_weight, grad_dw_bias if ctx.has_dw_bias else None,
                grad_ln_weight, grad_ln_bias, None, None)

    torch.library.register_autograd(fused_op, backward, setup_context=setup_context)


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


# auto: cpp on CPU. Alone, the cpp LayerNorm is 0.66-1.20x ATen's forward and 0.72-1.17x its
# fwd+bwd in fp32 at batch 8 (bf16 0.88-1.38x, 1.04-1.39x;
# benchmarks/results/cpu-dwconv-2026-11-30/layer_norm-batch8), and the cpp dwconv_layer_norm
# 0.93-2.70x eager channels_last forward, 1.54-3.90x fwd+bwd; in the whole model, timm's
# convnext_tiny with every op on cpp ran faster than with these two on eager in each case timed
# (python -m benchmarks --model, one run, both beside eager: training step batch 4 1.20x against
# 1.10x eager, inference batch 1/4/32 0.98/1.06/1.24x against 0.87/1.00/1.14x). That run was
# replaced by the one after the switch (benchmarks/results/cpu-x86-64-2-threads-2026-11-30),
# where auto and backend cpp, now the same choices, agree within 5 %.
LAYER_NORM = backends.Op("layer_norm_2d",
                         auto_order={"cpu": ("cpp",), "cuda": ("cuda", "triton")})
DWCONV_LAYER_NORM = backends.Op("dwconv_layer_norm",
                                auto_order={"cpu": ("cpp",), "cuda": ("cuda", "triton")})

if _ext.LOADED:
    torch.library.register_fake(f"{_NS}::layer_norm_2d")(_layer_norm_fake)
    torch.library.register_fake(f"{_NS}::layer_norm_2d_backward")(_layer_norm_backward_fake)
    torch.library.register_fake(f"{_NS}::dwconv_layer_norm")(_dwconv_layer_norm_fake)
    LAYER_NORM.register("cpp", torch.ops.convnext_kernels.layer_norm_2d)
    DWCONV_LAYER_NORM.register("cpp", torch.ops.convnext_kernels.dwconv_layer_norm)
    if _ext.BUILT_WITH_CUDA:
        LAYER_NORM.register("cuda", torch.ops.convnext_kernels.layer_norm_2d)
        DWCONV_LAYER_NORM.register("cuda", torch.ops.convnext_kernels.dwconv_layer_norm)

if backends.triton_importable():
    from .triton_registration import triton_custom_op
    from ..triton import dwconv_layer_norm as _triton_fused
    from ..triton import layer_norm as _triton_layer_norm

    @triton_custom_op(f"{_NS}::layer_norm_2d_triton")
    def _layer_norm_2d_triton(x: Tensor, weight: Tensor, bias: Tensor,
                              eps: float) -> Tuple[Tensor, Tensor, Tensor]:
        return _triton_layer_norm.layer_norm_2d_forward(x, weight, bias, eps)

    @triton_custom_op(f"{_NS}::layer_norm_2d_backward_triton")
    def _layer_norm_2d_backward_triton(grad_y: Tensor, x: Tensor, weight: Tensor, mean: Tensor,
                                       rstd: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
        return _triton_layer_norm.layer_norm_2d_backward(grad_y, x, weight, mean, rstd)

    @triton_custom_op(f"{_NS}::dwconv_layer_norm_triton")
    def _dwconv_layer_norm_triton(x: Tensor, dw_weight: Tensor, dw_bias: Optional[Tensor],
                                  ln_weight: Tensor, ln_bias: Tensor, eps: float,
                                  keep_conv: bool = True) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
        return _triton_fused.dwconv_layer_norm_forward(x, dw_weight, dw_bias, ln_weight,
                                                       ln_bias, eps, keep_conv=keep_conv)

    _layer_norm_2d_triton.register_fake(_layer_norm_fake)
    _layer_norm_2d_backward_triton.register_fake(_layer_norm_backward_fake)
    _register_layer_norm_autograd(_layer_norm_2d_triton, _layer_norm_2d_backward_triton)

    _dwconv_layer_norm_triton.register_fake(_dwconv_layer_norm_fake)
    _register_fused_autograd(_dwconv_layer_norm_triton, _layer_norm_2d_backward_triton,
                             dwconv_ops.DWCONV.impls["triton"], dwconv_ops.INPUT_GRAD["triton"],
                             torch.ops.convnext_kernels.dwconv2d_backward_weight_triton)
    LAYER_NORM.register("triton", _layer_norm_2d_triton,
                        max_channels=_triton_layer_norm.MAX_CHANNELS)
    DWCONV_LAYER_NORM.register("triton", _dwconv_layer_norm_triton,
                               max_channels=_triton_layer_norm.MAX_CHANNELS)


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


def dwconv_layer_norm(x: Tensor, dw_weight: Tensor, dw_bias: Optional[Tensor],
                      ln_weight: Tensor, ln_bias: Tensor, eps: float = 1e-6, *,
                      backend: str = "auto") -> Tensor:
    """layer_norm_2d(dwconv2d(x, dw_weight, dw_bias), ln_weight, ln_bias, eps), fused into one
    pass over x on every backend."""
    check_dwconv_args("dwconv_layer_norm", x, dw_weight, dw_bias)
    check_layer_norm_args("dwconv_layer_norm", x, ln_weight, ln_bias, eps)
    name = DWCONV_LAYER_NORM.resolve(backend, x, x.shape[1])
    if name == "torch":
        return reference.dwconv_layer_norm(x, dw_weight, dw_bias, ln_weight, ln_bias, eps)
    # Inference keeps no conv output: one write of x's size less per call.
    keep_conv = backends.gradient_needed(x, dw_weight, dw_bias, ln_weight, ln_bias)
    return DWCONV_LAYER_NORM.impls[name](x, dw_weight, dw_bias, ln_weight, ln_bias,
                                         float(eps), keep_conv)[0]
