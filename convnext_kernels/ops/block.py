"""The whole ConvNeXt V1 block as one op with one autograd (triton backend): the op behind
FusedConvNeXtBlock where its backend resolves to triton and the block has no GRN.

convnext_kernels::block_triton returns (out, and what the backward needs: y rows, conv, mean,
rstd, hidden, y2); convnext_kernels::block_backward_triton returns (grad_x, every parameter
gradient in one flat buffer), which the autograd formula here splits into views (one buffer,
because a custom op's outputs may not alias each other). See triton/block.py for the launches.
"""
import math
from typing import Optional, Tuple

import torch
from torch import Tensor

from .. import backends

if backends.triton_importable():
    from .triton_registration import triton_custom_op
    from ..triton import block as _triton_block
    from ..triton.grad_workspace import unflatten
    from ..triton.layer_norm import MAX_CHANNELS as _TRITON_MAX_CHANNELS

_NS = "convnext_kernels"
_PARAMS = ("dw_weight", "dw_bias", "ln_weight", "ln_bias", "fc1_w", "fc1_b", "fc2_w", "fc2_b",
           "gamma")


def _forward_fake(x, dw_weight, dw_bias, ln_weight, ln_bias, fc1_w, fc1_b, fc2_w, fc2_b, gamma,
                  drop_scale, eps, dtype, save_y2):
    N, C, H, W = x.shape
    M = N * H * W
    out = torch.empty(N, C, H, W, device=x.device, dtype=dtype).contiguous(
        memory_format=torch.channels_last)
    stats = x.new_empty(N, H, W, dtype=torch.float32)
    kept = _triton_block.keeps_hidden(C, dtype)
    hidden = x.new_empty(M, fc1_w.shape[0], dtype=dtype) if kept else x.new_empty(0, dtype=dtype)
    y2 = x.new_empty(M, C, dtype=dtype) if save_y2 else x.new_empty(0, dtype=dtype)
    return (out, x.new_empty(M, C, dtype=dtype), torch.empty_like(out), stats,
            torch.empty_like(stats), hidden, y2)


def _backward_fake(grad_out, x, dw_weight, ln_weight, fc1_w, fc1_b, fc2_w, gamma, drop_scale,
                   y_rows, conv, mean, rstd, hidden, y2):
    shapes = _triton_block.grad_shapes(dw_weight, fc1_w, fc2_w, gamma, y2)
    return torch.empty_like(x), fc1_w.new_empty(sum(math.prod(s) for s in shapes.values()))


# The whole-block op where a backend has one; elsewhere the block composes the ops (block.py).
# On CUDA the Triton op is chosen by count, not yet by a timing: 12 launches per forward+backward
# against 30 or more composing the ops (benchmarks/ledger.py).
BLOCK = backends.Op("block", auto_order={"cuda": ("triton",)})

if backends.triton_importable():
    @triton_custom_op(f"{_NS}::block_triton")
    def _block_triton(x: Tensor, dw_weight: Tensor, dw_bias: Optional[Tensor], ln_weight: Tensor,
                      ln_bias: Tensor, fc1_w: Tensor, fc1_b: Tensor, fc2_w: Tensor,
                      fc2_b: Tensor, gamma: Optional[Tensor], drop_scale: Optional[Tensor],
                      eps: float, dtype: torch.dtype, save_y2: bool
                      ) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
        return _triton_block.block_forward(x, dw_weight, dw_bias, ln_weight, ln_bias, fc1_w,
                                           fc1_b, fc2_w, fc2_b, gamma, drop_scale, eps, dtype,
                                           save_y2)

    @triton_custom_op(f"{_NS}::block_backward_triton")
    def _block_backward_triton(grad_out: Tensor, x: Tensor, dw_weight: Tensor, ln_weight: Tensor,
                               fc1_w: Tensor, fc1_b: Tensor, fc2_w: Tensor,
                               gamma: Optional[Tensor], drop_scale: Optional[Tensor],
                               y_rows: Tensor, conv: Tensor, mean: Tensor, rstd: Tensor,
                               hidden: Tensor, y2: Tensor) -> Tuple[Tensor, Tensor]:
        return _triton_block.block_backward(grad_out, x, dw_weight, ln_weight, fc1_w, fc1_b,
                                            fc2_w, gamma, drop_scale, y_rows, conv, mean, rstd,
                                            hidden, y2)

    def _setup_context(ctx, inputs, output):
        (x, dw_weight, dw_bias, ln_weight, ln_bias, fc1_w, fc1_b, fc2_w, fc2_b, gamma,
         drop_scale, _, _, _) = inputs
        _, y_rows, conv, mean, rstd, hidden, y2 = output
        ctx.mark_non_differentiable(y_rows, conv, mean, rstd, hidden, y2)
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(x, dw_weight, ln_weight, fc1_w, fc1_b, fc2_w, gamma, drop_scale,
                              y_rows, conv, mean, rstd, hidden, y2)
        params = (dw_weight, dw_bias, ln_weight, ln_bias, fc1_w, fc1_b, fc2_w, fc2_b, gamma)
        ctx.param_dtypes = {name: (p.dtype if p is not None else None)
                            for name, p in zip(_PARAMS, params)}

    def _backward(ctx, grad_out, *_unused):
        if grad_out is None:  # the output did not reach the loss
            return (None,) * 14
        (x, dw_weight, ln_weight, fc1_w, fc1_b, fc2_w, gamma, drop_scale, y_rows, conv, mean,
         rstd, hidden, y2) = ctx.saved_tensors
        grad_x, flat = _block_backward_triton(grad_out, x, dw_weight, ln_weight, fc1_w, fc1_b,
                                              fc2_w, gamma, drop_scale, y_rows, conv, mean, rstd,
                                              hidden, y2)
        grads = unflatten(flat, _triton_block.grad_shapes(dw_weight, fc1_w, fc2_w, gamma, y2))
        # Gradients come in fc1_w's dtype; a parameter of another dtype gets its own (a cast).
        param_grads = [grads[name].to(dtype) if name in grads and dtype is not None else None
                       for name, dtype in ctx.param_dtypes.items()]
        return (grad_x, *param_grads, None, None, None, None)

    _block_triton.register_fake(_forward_fake)
    _block_backward_triton.register_fake(_backward_fake)
    torch.library.register_autograd(_block_triton, _backward, setup_context=_setup_context)
    BLOCK.register("triton", _block_triton, max_channels=_TRITON_MAX_CHANNELS)


def block_v1(x, dw_weight, dw_bias, ln_weight, ln_bias, fc1_w, fc1_b, fc2_w, fc2_b, gamma,
             drop_scale, eps, dtype, backend):
    """The V1 block's output (N,C,H,W channels_last, in `dtype`) through the whole-block op of
    `backend` (one that BLOCK.first_serving chose); x N,C,H,W channels_last in its own dtype, the
    parameters in theirs (fp32 under autocast: converted in the kernels)."""
    save_y2 = gamma is not None and gamma.requires_grad and torch.is_grad_enabled()
    return BLOCK.impls[backend](x, dw_weight, dw_bias, ln_weight, ln_bias, fc1_w, fc1_b, fc2_w,
                                fc2_b, gamma, drop_scale, float(eps), dtype, save_y2)[0]

