"""ck.dwconv_layer_norm: the depthwise conv, then the LayerNorm over C, fused into one pass over
x on every backend.

Backends: cpp and cuda are the C++ op convnext_kernels::dwconv_layer_norm (CPU and CUDA kernels
in _C), with a C++ autograd (csrc/autograd.cpp); triton is the Python custom op
convnext_kernels::dwconv_layer_norm_triton. The op returns (y, conv output, mean, rstd); with no
backward to come (keep_conv false) the conv output is returned empty and the cpp and triton
kernels never write it.

The backward is defined once, in `backward` below: the LayerNorm backward on the conv output
(kept, or recomputed), then the dwconv backward of its result (the conv's input gradient needs
the LayerNorm gradient of a whole k×k neighbourhood, so the two are not fused). The triton op's
autograd calls it with the triton ops as its terms; csrc/autograd.cpp states it in C++ for the
cpp and cuda ops, and tests/test_layer_norm.py holds the two equal, bit for bit, on the cpp ops.
"""
from typing import NamedTuple, Optional, Tuple

import torch
from torch import Tensor

from .. import _ext, backends, reference
from .._checks import check_dwconv_args, check_layer_norm_args
from . import dwconv as dwconv_ops
from . import layer_norm as layer_norm_ops

_NS = "convnext_kernels"


class Terms(NamedTuple):
    """The ops one backend computes the backward's terms with."""
    dwconv: object  # (x, weight, bias) -> conv output
    layer_norm_backward: object  # (grad_y, conv, ln_weight, mean, rstd) -> grad_conv, gw, gb
    dwconv_input_grad: object  # (grad_conv, weight) -> grad_x
    dwconv_backward_weight: object  # (grad_conv, x, weight) -> grad_weight, grad_bias


def terms(backend):
    """The backward's terms on `backend` (cpp, cuda, triton)."""
    return Terms(dwconv_ops.DWCONV.impls[backend], layer_norm_ops.BACKWARD[backend],
                 dwconv_ops.INPUT_GRAD[backend], dwconv_ops.BACKWARD_WEIGHT[backend])


def backward(t, grad_y, x, dw_weight, dw_bias, ln_weight, conv, mean, rstd, needs_x=True,
             needs_dw=True):
    """(grad_x, grad_dw_weight, grad_dw_bias, grad_ln_weight, grad_ln_bias) of dwconv_layer_norm
    from the output gradient, with the terms `t` (Terms): conv is the kept conv output or None
    (recomputed); needs_x / needs_dw: whether x's and the conv's gradients are wanted (None
    where not)."""
    if conv is None:
        conv = t.dwconv(x, dw_weight, dw_bias)
    grad_conv, grad_ln_weight, grad_ln_bias = t.layer_norm_backward(grad_y, conv, ln_weight,
                                                                    mean, rstd)
    grad_x = t.dwconv_input_grad(grad_conv, dw_weight) if needs_x else None
    grad_dw_weight = grad_dw_bias = None
    if needs_dw:
        grad_dw_weight, grad_dw_bias = t.dwconv_backward_weight(grad_conv, x, dw_weight)
    return (grad_x, grad_dw_weight, grad_dw_bias if dw_bias is not None else None,
            grad_ln_weight, grad_ln_bias)


def _dwconv_layer_norm_fake(x, dw_weight, dw_bias, ln_weight, ln_bias, eps, keep_conv=True):
    y, mean, rstd = layer_norm_ops.layer_norm_fake(x, ln_weight, ln_bias, eps)
    return y, torch.empty_like(x) if keep_conv else x.new_empty(0), mean, rstd


def _register_autograd(fused_op, backend):
    def setup_context(ctx, inputs, output):
        x, dw_weight, dw_bias, ln_weight, _, _, keep_conv = inputs
        _, conv, mean, rstd = output
        ctx.mark_non_differentiable(conv, mean, rstd)
        ctx.set_materialize_grads(False)  # (no zero-filled gradients for the saved outputs)
        # An op called without keep_conv returned it empty: the backward recomputes it.
        ctx.save_for_backward(x, dw_weight, dw_bias, ln_weight, conv if keep_conv else None,
                              mean, rstd)

    def autograd_backward(ctx, grad_y, _grad_conv, _grad_mean, _grad_rstd):
        if grad_y is None:  # y did not reach the loss
            return (None,) * 7
        x, dw_weight, dw_bias, ln_weight, conv, mean, rstd = ctx.saved_tensors
        needs_dw = ctx.needs_input_grad[1] or (dw_bias is not None and ctx.needs_input_grad[2])
        grads = backward(terms(backend), grad_y, x, dw_weight, dw_bias, ln_weight, conv, mean,
                         rstd, needs_x=ctx.needs_input_grad[0], needs_dw=needs_dw)
        return grads + (None, None)

    torch.library.register_autograd(fused_op, autograd_backward, setup_context=setup_context)


# auto: as the LayerNorm's (ops/layer_norm.py).
DWCONV_LAYER_NORM = backends.Op("dwconv_layer_norm",
                                auto_order={"cpu": ("cpp",), "cuda": ("cuda", "triton")})

if _ext.LOADED:
    torch.library.register_fake(f"{_NS}::dwconv_layer_norm")(_dwconv_layer_norm_fake)
    DWCONV_LAYER_NORM.register("cpp", torch.ops.convnext_kernels.dwconv_layer_norm)
    if _ext.BUILT_WITH_CUDA:
        DWCONV_LAYER_NORM.register("cuda", torch.ops.convnext_kernels.dwconv_layer_norm)

if backends.triton_importable():
    from ..op_registration import triton_custom_op
    from ..triton import dwconv_layer_norm as _triton_fused
    from ..triton.layer_norm import MAX_CHANNELS as _TRITON_MAX_CHANNELS

    @triton_custom_op(f"{_NS}::dwconv_layer_norm_triton")
    def _dwconv_layer_norm_triton(x: Tensor, dw_weight: Tensor, dw_bias: Optional[Tensor],
                                  ln_weight: Tensor, ln_bias: Tensor, eps: float,
                                  keep_conv: bool = True) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
        return _triton_fused.dwconv_layer_norm_forward(x, dw_weight, dw_bias, ln_weight,
                                                       ln_bias, eps, keep_conv=keep_conv)

    _dwconv_layer_norm_triton.register_fake(_dwconv_layer_norm_fake)
    _register_autograd(_dwconv_layer_norm_triton, "triton")
    DWCONV_LAYER_NORM.register("triton", _dwconv_layer_norm_triton,
                               max_channels=_TRITON_MAX_CHANNELS)


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
