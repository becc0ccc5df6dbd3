"""ck.mlp: the ConvNeXt pointwise MLP on rows (..., C), with layer scale, drop path and residual
in its epilogue, and optionally ConvNeXt-V2's GRN between GELU and fc2.

Backends: cpp is the C++ op convnext_kernels::mlp (ATen GEMMs + fused C++ passes); triton is the
Python custom op convnext_kernels::mlp_triton (matmul.py's GEMM with prologues/epilogues, a fully
fused forward for small C). Both return (out, kept pre-activation, y2, GRN norm, GRN nx) and share
one autograd formula (the matching backward op). The backward recomputes fc1's pre-activation
where the forward did not keep it (keep_hidden: by default cpp keeps it, triton recomputes):
then the MLP saves its input (and y2 [M, C] with a learnable gamma, GRN's [N, H] statistics),
not its [M, H] hidden tensor.
"""
from typing import Optional, Tuple

import torch
from torch import Tensor

from .. import _ext, backends, reference
from .._checks import check_mlp_args

_NS = "convnext_kernels"


def _forward_fake(x, fc1_w, fc1_b, fc2_w, fc2_b, gamma, residual, drop_scale, grn_weight,
                  grn_bias, rows_per_sample, eps, keep_hidden, save_y2):
    M, H = x.shape[0], fc1_w.shape[0]
    hidden = x.new_empty(M, H) if keep_hidden else x.new_empty(0)
    y2 = torch.empty_like(x) if save_y2 else x.new_empty(0)
    stats_dtype = reference.statistics_dtype(x.dtype)
    if grn_weight is not None:
        stats = x.new_empty(M // rows_per_sample, H, dtype=stats_dtype)
    else:
        stats = x.new_empty(0, dtype=stats_dtype)
    return torch.empty_like(x), hidden, y2, stats, torch.empty_like(stats)


def _backward_fake(grad_out, x, fc1_w, fc1_b, fc2_w, gamma, drop_scale, grn_weight, grn_bias,
                   hidden, y2, grn_norm, grn_nx, rows_per_sample, eps):
    def like(t):
        return torch.empty_like(t) if t is not None else x.new_empty(0)
    # gamma's gradient exists where the forward saved y2 [M, C] (gamma needed its gradient).
    return (torch.empty_like(x), like(fc1_w), like(fc1_b), like(fc2_w),
            x.new_empty(fc2_w.shape[0]), like(gamma if y2.dim() == 2 else None),
            like(grn_weight), like(grn_bias))


def _register_autograd(forward_op, backward_op):
    def setup_context(ctx, inputs, output):
        (x, fc1_w, fc1_b, fc2_w, _, gamma, residual, drop_scale, grn_weight, grn_bias,
         rows_per_sample, eps, _, _) = inputs
        _, hidden, y2, norm, nx = output
        ctx.mark_non_differentiable(hidden, y2, norm, nx)
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(x, fc1_w, fc1_b, fc2_w, gamma, drop_scale, grn_weight, grn_bias,
                              hidden, y2, norm, nx)
        ctx.rows_per_sample, ctx.eps = rows_per_sample, eps
        ctx.has = [t is not None for t in (gamma, residual, grn_weight, grn_bias)]

    def backward(ctx, grad_out, *_unused):
        if grad_out is None:  # the output did not reach the loss
            return (None,) * 14
        (x, fc1_w, fc1_b, fc2_w, gamma, drop_scale, grn_weight, grn_bias, hidden, y2, norm,
         nx) = ctx.saved_tensors
        grads = backward_op(grad_out.contiguous(), x, fc1_w, fc1_b, fc2_w, gamma, drop_scale,
                            grn_weight, grn_bias, hidden, y2, norm, nx, ctx.rows_per_sample,
                            ctx.eps)
        has_gamma, has_residual, has_grn_w, has_grn_b = ctx.has
        grad_x, gw1, gb1, gw2, gb2, ggamma, ggrn_w, ggrn_b = grads
        return (grad_x, gw1, gb1, gw2, gb2, ggamma if has_gamma and y2.dim() == 2 else None,
                grad_out if has_residual else None, None,
                ggrn_w if has_grn_w else None, ggrn_b if has_grn_b else None,
                None, None, None, None)

    torch.library.register_autograd(forward_op, backward, setup_context=setup_context)


# auto: the MLP has no CUDA kernels (triton serves CUDA, and stands in for cuda in a block). On
# CPU, cpp: its forward adds the biases and GELU (a rational erf, csrc/cpu/gelu_kernels.h) in its
# own passes and runs large hiddens in row tiles that stay in cache; its backward keeps the
# hidden (no fc1 recompute). The GEMMs are the same ATen calls as eager's; the rest is faster
# (README: the MLP and model tables).
MLP = backends.Op("mlp", auto_order={"cpu": ("cpp",), "cuda": ("triton",)},
                  block_stand_ins={"cuda": "triton"})

if _ext.LOADED:
    torch.library.register_fake(f"{_NS}::mlp")(_forward_fake)
    torch.library.register_fake(f"{_NS}::mlp_backward")(_backward_fake)
    _register_autograd(torch.ops.convnext_kernels.mlp.default,
                       torch.ops.convnext_kernels.mlp_backward.default)
    MLP.register("cpp", torch.ops.convnext_kernels.mlp)

if backends.triton_importable():
    from ..op_registration import triton_custom_op
    from ..triton import mlp as _triton_mlp

    @triton_custom_op(f"{_NS}::mlp_triton")
    def _mlp_triton(x: Tensor, fc1_w: Tensor, fc1_b: Tensor, fc2_w: Tensor, fc2_b: Tensor,
                    gamma: Optional[Tensor], residual: Optional[Tensor],
                    drop_scale: Optional[Tensor], grn_weight: Optional[Tensor],
                    grn_bias: Optional[Tensor], rows_per_sample: int, eps: float,
                    keep_hidden: bool,
                    save_y2: bool) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        return _triton_mlp.mlp_forward(x, fc1_w, fc1_b, fc2_w, fc2_b, gamma, residual,
                                       drop_scale, grn_weight, grn_bias, rows_per_sample, eps,
                                       keep_hidden, save_y2)

    @triton_custom_op(f"{_NS}::mlp_backward_triton")
    def _mlp_backward_triton(grad_out: Tensor, x: Tensor, fc1_w: Tensor, fc1_b: Tensor,
                             fc2_w: Tensor, gamma: Optional[Tensor],
                             drop_scale: Optional[Tensor], grn_weight: Optional[Tensor],
                             grn_bias: Optional[Tensor], hidden: Tensor, y2: Tensor,
                             grn_norm: Tensor, grn_nx: Tensor, rows_per_sample: int,
                             eps: float) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor,
                                                  Tensor, Tensor]:
        return _triton_mlp.mlp_backward(grad_out, x, fc1_w, fc1_b, fc2_w, gamma, drop_scale,
                                        grn_weight, grn_bias, hidden, y2, grn_norm, grn_nx,
                                        rows_per_sample, eps)

    _mlp_triton.register_fake(_forward_fake)
    _mlp_backward_triton.register_fake(_backward_fake)
    _register_autograd(_mlp_triton, _mlp_backward_triton)
    MLP.register("triton", _mlp_triton)


def mlp(x: Tensor, fc1_w: Tensor, fc1_b: Tensor, fc2_w: Tensor, fc2_b: Tensor,
        gamma: Optional[Tensor] = None, residual: Optional[Tensor] = None,
        drop_scale: Optional[Tensor] = None, *, grn_weight: Optional[Tensor] = None,
        grn_bias: Optional[Tensor] = None, grn_eps: float = 1e-6,
        keep_hidden: Optional[bool] = None, backend: str = "auto") -> Tensor:
    """[residual +] [drop_scale (per sample) *] [gamma *] fc2(gelu(fc1(x))) on rows (..., C),
    exact-erf GELU; fc1_w [H, C], fc1_b [H], fc2_w [C, H], fc2_b [C], gamma [C], residual like x,
    drop_scale [x.shape[0]] (drop path's per-sample factor; not differentiated). With
    grn_weight/grn_bias (H values, [H] or [1,1,1,H]) x is N,H,W,C and GRN (ConvNeXt V2) runs
    between GELU and fc2. keep_hidden saves fc1's [M, H] pre-activation for the backward instead
    of recomputing it; None leaves it to the backend: cpp keeps it (host memory is plentiful and
    the recompute is a GEMM, a seventh of the MLP's GEMM work), triton recomputes (GPU memory:
    eager saves two [M, H] tensors); with no gradient to compute nothing is kept.
    Differentiable in x, the weights, gamma, residual and GRN's parameters."""
    check_mlp_args("mlp", x, fc1_w, fc1_b, fc2_w, fc2_b, gamma, residual, drop_scale,
                   grn_weight, grn_bias, grn_eps)
    name = MLP.resolve(backend, x, x.shape[-1], "v2" if grn_weight is not None else "v1")
    if name == "torch":
        return reference.mlp(x, fc1_w, fc1_b, fc2_w, fc2_b, gamma, residual, drop_scale,
                             grn_weight=grn_weight, grn_bias=grn_bias, grn_eps=grn_eps)
    C = x.shape[-1]
    rows = x.reshape(-1, C)
    per_sample = drop_scale is not None or grn_weight is not None
    rows_per_sample = max(1, rows.shape[0] // x.shape[0]) if per_sample and x.shape[0] else 1
    save_y2 = gamma is not None and gamma.requires_grad and torch.is_grad_enabled()
    # With no backward to come there is nothing to keep it for, and keeping would write the
    # [M, H] hidden to memory (on cpp, past the row tiles that hold it in cache, into a fresh
    # tensor faulted in page by page).
    backward = backends.gradient_needed(x, fc1_w, fc1_b, fc2_w, fc2_b, gamma, residual,
                                        grn_weight, grn_bias)
    keep_hidden = backward and (name == "cpp" if keep_hidden is None else keep_hidden)
    out = MLP.impls[name](rows.contiguous(), fc1_w.contiguous(), fc1_b.contiguous(),
                     fc2_w.contiguous(), fc2_b.contiguous(),
                     gamma.reshape(-1) if gamma is not None else None,
                     residual.reshape(-1, C).contiguous() if residual is not None else None,
                     drop_scale.contiguous() if drop_scale is not None else None, grn_weight,
                     grn_bias, rows_per_sample, float(grn_eps),
                     keep_hidden, save_y2)[0]
    return out.view(x.shape)
