"""The whole ConvNeXt block (V1, and V2 with GRN) as one op with one autograd (triton backend):
the op behind FusedConvNeXtBlock where its backend resolves to triton.

convnext_kernels::block_triton returns (out, and what the backward needs: y rows, conv, mean,
rstd, hidden, y2, GRN's G and nx); convnext_kernels::block_backward_triton returns (grad_x,
every parameter gradient in one flat buffer), which the autograd formula here splits into views
(one buffer, because a custom op's outputs may not alias each other). The flat buffer's layout
is an argument of both ops (`grad_slots`, grad_workspace.slots_string), set where the block
is called: torch.compile's on-disk caches key a graph on its ops' arguments, not on this
module's backward formula, so a layout changed by an upgrade must change the forward graph, or
a cached backward would take its views at the old offsets. See triton/whole_block.py for the
launches.
"""
import math
from typing import NamedTuple, Optional, Tuple

import torch
from torch import Tensor

from .. import backends

if backends.triton_importable():
    from ..op_registration import triton_custom_op
    from ..triton import whole_block as _triton_block
    from ..triton.grad_workspace import slots_shapes, slots_string, unflatten
    from ..triton.layer_norm import MAX_CHANNELS as _TRITON_MAX_CHANNELS

_NS = "convnext_kernels"


class BlockWeights(NamedTuple):
    """A block's weights as its ops take them (None where the block has none: no conv bias, no
    layer scale, no GRN): the one structure FusedConvNeXtBlock.weights makes and the block's
    functions pass down. The whole-block op's schema lists them in this order."""
    dw_weight: Tensor
    dw_bias: Optional[Tensor]
    ln_weight: Tensor
    ln_bias: Tensor
    fc1_w: Tensor
    fc1_b: Tensor
    fc2_w: Tensor
    fc2_b: Tensor
    gamma: Optional[Tensor]
    grn_weight: Optional[Tensor]
    grn_bias: Optional[Tensor]

    def cast(self, dtype):
        """The weights in `dtype` (autocast), None kept."""
        return BlockWeights(*(t.to(dtype) if t is not None else None for t in self))



def _forward_fake(x, dw_weight, dw_bias, ln_weight, ln_bias, fc1_w, fc1_b, fc2_w, fc2_b, gamma,
                  grn_weight, grn_bias, drop_scale, eps, grn_eps, dtype, save_y2, grad_slots):
    N, C, H, W = x.shape
    M = N * H * W
    hid = fc1_w.shape[0]
    out = torch.empty(N, C, H, W, device=x.device, dtype=dtype).contiguous(
        memory_format=torch.channels_last)
    stats = x.new_empty(N, H, W, dtype=torch.float32)
    grn = grn_weight is not None
    kept = _triton_block.keeps_hidden(C, dtype, grn, fc1_w.dtype)
    hidden = x.new_empty(M, hid, dtype=dtype) if kept else x.new_empty(0, dtype=dtype)
    y2 = x.new_empty(M, C, dtype=dtype) if save_y2 else x.new_empty(0, dtype=dtype)
    samples = N if M else 0
    grn_stats = x.new_empty(samples, hid, dtype=torch.float32) if grn else \
        x.new_empty(0, dtype=torch.float32)
    return (out, x.new_empty(M, C, dtype=dtype), torch.empty_like(out), stats,
            torch.empty_like(stats), hidden, y2, grn_stats, torch.empty_like(grn_stats))


def _backward_fake(grad_out, x, dw_weight, ln_weight, fc1_w, fc1_b, fc2_w, gamma, grn_weight,
                   grn_bias, drop_scale, y_rows, conv, mean, rstd, hidden, y2, G, nx, grn_eps,
                   grad_slots):
    shapes = slots_shapes(grad_slots)
    return torch.empty_like(x), fc1_w.new_empty(sum(math.prod(s) for s in shapes.values()))


# The whole-block op where a backend has one; elsewhere the block composes the ops (modules.py).
# On CUDA the Triton op is chosen by count, not yet by a timing: 7 to 10 launches per
# forward+backward in bf16 (V2: 12) against 30 or more (V2: 50) composing the ops
# (benchmarks/ledger.py).
BLOCK = backends.Op("block", auto_order={"cuda": ("triton",)})

if backends.triton_importable():
    @triton_custom_op(f"{_NS}::block_triton")
    def _block_triton(x: Tensor, dw_weight: Tensor, dw_bias: Optional[Tensor], ln_weight: Tensor,
                      ln_bias: Tensor, fc1_w: Tensor, fc1_b: Tensor, fc2_w: Tensor,
                      fc2_b: Tensor, gamma: Optional[Tensor], grn_weight: Optional[Tensor],
                      grn_bias: Optional[Tensor], drop_scale: Optional[Tensor], eps: float,
                      grn_eps: float, dtype: torch.dtype, save_y2: bool, grad_slots: str
                      ) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor,
                                 Tensor]:
        return _triton_block.block_forward(x, dw_weight, dw_bias, ln_weight, ln_bias, fc1_w,
                                           fc1_b, fc2_w, fc2_b, gamma, grn_weight, grn_bias,
                                           drop_scale, eps, grn_eps, dtype, save_y2)

    @triton_custom_op(f"{_NS}::block_backward_triton")
    def _block_backward_triton(grad_out: Tensor, x: Tensor, dw_weight: Tensor, ln_weight: Tensor,
                               fc1_w: Tensor, fc1_b: Tensor, fc2_w: Tensor,
                               gamma: Optional[Tensor], grn_weight: Optional[Tensor],
                               grn_bias: Optional[Tensor], drop_scale: Optional[Tensor],
                               y_rows: Tensor, conv: Tensor, mean: Tensor, rstd: Tensor,
                               hidden: Tensor, y2: Tensor, G: Tensor, nx: Tensor,
                               grn_eps: float, grad_slots: str) -> Tuple[Tensor, Tensor]:
        return _triton_block.block_backward(grad_out, x, dw_weight, ln_weight, fc1_w, fc1_b,
                                            fc2_w, gamma, grn_weight, grn_bias, drop_scale,
                                            y_rows, conv, mean, rstd, hidden, y2, G, nx, grn_eps,
                                            slots_shapes(grad_slots))

    # the op's inputs: x, the weights, drop_scale, eps, grn_eps, dtype, save_y2, grad_slots
    _WEIGHTS = slice(1, 1 + len(BlockWeights._fields))
    _INPUTS = _WEIGHTS.stop + 6

    def _setup_context(ctx, inputs, output):
        x, w = inputs[0], BlockWeights(*inputs[_WEIGHTS])
        drop_scale, _, grn_eps, _, _, grad_slots = inputs[_WEIGHTS.stop:]
        _, y_rows, conv, mean, rstd, hidden, y2, G, nx = output
        ctx.mark_non_differentiable(y_rows, conv, mean, rstd, hidden, y2, G, nx)
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(x, w.dw_weight, w.ln_weight, w.fc1_w, w.fc1_b, w.fc2_w, w.gamma,
                              w.grn_weight, w.grn_bias, drop_scale, y_rows, conv, mean, rstd,
                              hidden, y2, G, nx)
        ctx.grn_eps = grn_eps
        ctx.grad_slots = grad_slots
        ctx.param_dtypes = {name: (p.dtype if p is not None else None)
                            for name, p in w._asdict().items()}

    def _backward(ctx, grad_out, *_unused):
        if grad_out is None:  # the output did not reach the loss
            return (None,) * _INPUTS
        (x, dw_weight, ln_weight, fc1_w, fc1_b, fc2_w, gamma, grn_weight, grn_bias, drop_scale,
         y_rows, conv, mean, rstd, hidden, y2, G, nx) = ctx.saved_tensors
        grad_x, flat = _block_backward_triton(grad_out, x, dw_weight, ln_weight, fc1_w, fc1_b,
                                              fc2_w, gamma, grn_weight, grn_bias, drop_scale,
                                              y_rows, conv, mean, rstd, hidden, y2, G, nx,
                                              ctx.grn_eps, ctx.grad_slots)
        grads = unflatten(flat, slots_shapes(ctx.grad_slots))
        # Gradients come in fc1_w's dtype; a parameter of another dtype gets its own (a cast).
        param_grads = [grads[name].to(dtype) if name in grads and dtype is not None else None
                       for name, dtype in ctx.param_dtypes.items()]
        return (grad_x, *param_grads) + (None,) * (_INPUTS - _WEIGHTS.stop)

    def _whole_block_triton(x, w, drop_scale, eps, grn_eps, dtype):
        """The triton implementation of whole_block: the op's arguments, its gradient buffer's
        slots among them (triton/whole_block.py: grad_shapes)."""
        save_y2 = w.gamma is not None and w.gamma.requires_grad and torch.is_grad_enabled()
        grad_slots = slots_string(_triton_block.grad_shapes(
            w.dw_weight, w.fc1_w, w.fc2_w, save_y2, w.grn_weight, w.grn_bias))
        return _block_triton(x, *w, drop_scale, eps, grn_eps, dtype, save_y2, grad_slots)[0]

    _block_triton.register_fake(_forward_fake)
    _block_backward_triton.register_fake(_backward_fake)
    torch.library.register_autograd(_block_triton, _backward, setup_context=_setup_context)
    BLOCK.register("triton", _whole_block_triton, max_channels=_TRITON_MAX_CHANNELS)


def whole_block(x, w, drop_scale, eps, grn_eps, dtype, backend):
    """The block's output (N,C,H,W channels_last, in `dtype`) through the whole-block op of
    `backend` (one that BLOCK.first_serving chose); x N,C,H,W channels_last in its own dtype, the
    weights `w` (BlockWeights) in theirs (fp32 under autocast: converted in the kernels)."""
    return BLOCK.impls[backend](x, w, drop_scale, float(eps), float(grn_eps), dtype)
