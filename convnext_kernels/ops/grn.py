"""ck.grn: ConvNeXt-V2 Global Response Normalisation on N,H,W,C (timm's GlobalResponseNorm).

Backends: cpp is the C++ op convnext_kernels::grn; triton the custom op ::grn_triton. Both return
(y, norm, nx), the [N, C] statistics saved for the backward op.
"""
from typing import Tuple

import torch
from torch import Tensor

from .. import _ext, backends, reference
from .._checks import check_grn_args

_NS = "convnext_kernels"


def _forward_fake(x, weight, bias, eps):
    stats = x.new_empty(x.shape[0], x.shape[3], dtype=reference.statistics_dtype(x.dtype))
    return x.new_empty(x.shape), stats, torch.empty_like(stats)


def _backward_fake(grad_y, x, weight, norm, nx, eps):
    return x.new_empty(x.shape), torch.empty_like(weight), torch.empty_like(weight)


def _register_autograd(forward_op, backward_op):
    def setup_context(ctx, inputs, output):
        x, weight, _, eps = inputs
        _, norm, nx = output
        ctx.mark_non_differentiable(norm, nx)
        ctx.save_for_backward(x, weight, norm, nx)
        ctx.eps = eps

    def backward(ctx, grad_y, _grad_norm, _grad_nx):
        x, weight, norm, nx = ctx.saved_tensors
        grad_x, grad_w, grad_b = backward_op(grad_y.contiguous(), x, weight, norm, nx, ctx.eps)
        return grad_x, grad_w, grad_b, None

    torch.library.register_autograd(forward_op, backward, setup_context=setup_context)


# auto: cpp on CPU (faster than eager in every pass timed there); GRN has no CUDA kernels (triton
# serves CUDA).
GRN = backends.Op("grn", auto_order={"cpu": ("cpp",), "cuda": ("triton",)})

if _ext.LOADED:
    torch.library.register_fake(f"{_NS}::grn")(_forward_fake)
    torch.library.register_fake(f"{_NS}::grn_backward")(_backward_fake)
    _register_autograd(torch.ops.convnext_kernels.grn.default,
                       torch.ops.convnext_kernels.grn_backward.default)
    GRN.register("cpp", torch.ops.convnext_kernels.grn)

if backends.triton_importable():
    from ..op_registration import triton_custom_op
    from ..triton import grn as _triton_grn

    @triton_custom_op(f"{_NS}::grn_triton")
    def _grn_triton(x: Tensor, weight: Tensor, bias: Tensor,
                    eps: float) -> Tuple[Tensor, Tensor, Tensor]:
        return _triton_grn.grn_forward(x, weight, bias, eps)

    @triton_custom_op(f"{_NS}::grn_backward_triton")
    def _grn_backward_triton(grad_y: Tensor, x: Tensor, weight: Tensor, norm: Tensor,
                             nx: Tensor, eps: float) -> Tuple[Tensor, Tensor, Tensor]:
        return _triton_grn.grn_backward(grad_y, x, weight, norm, nx, eps)

    _grn_triton.register_fake(_forward_fake)
    _grn_backward_triton.register_fake(_backward_fake)
    _register_autograd(_grn_triton, _grn_backward_triton)
    GRN.register("triton", _grn_triton)


def grn(x: Tensor, weight: Tensor, bias: Tensor, eps: float = 1e-6, *,
        backend: str = "auto") -> Tensor:
    """GRN of N,H,W,C `x`: x * (1 + weight * nx) + bias with nx = G / (mean_C G + eps) and G the
    L2 norm over H,W per (sample, channel); weight and bias hold C values ([C] as timm, or
    [1,1,1,C] as the official code). fp32 statistics. Differentiable in x, weight, bias."""
    check_grn_args("grn", x, weight, bias, eps)
    name = GRN.resolve(backend, x, x.shape[-1])
    if name == "torch":
        return reference.grn(x, weight, bias, eps)
    return GRN.impls[name](x.contiguous(), weight, bias, float(eps))[0]
