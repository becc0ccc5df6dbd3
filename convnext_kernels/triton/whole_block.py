"""The whole ConvNeXt block (V1, and V2 with GRN) in Triton, forward and backward, in the fewest
launches its math needs.

Forward (V1: 2-3 launches; V2: 4):
  dwconv + LayerNorm       one kernel: y (LN output rows), conv output, mean, rstd
  MLP                      V1: fused (C <= FUSED_MAX_CHANNELS: the hidden never leaves the chip)
                           or fc1+GELU (keeping the pre-activation) then fc2 with layer scale,
                           drop path and residual in its epilogue. V2: GRN needs every pixel's
                           GELU output before fc2, so fc1 makes the per-sample sums of gelu's
                           squares (per row tile: matmul.py), one kernel GRN's statistics, and
                           at C <= 128 the fused kernel applies GRN to each hidden chunk; above,
                           fc1 also stores the pre-activation and fc2 applies GELU and GRN to
                           its input tiles as it loads them
Backward (V1: 4 launches at C <= 192 in fp16/bf16, else 7; V2: 6 and 8; all parameter gradients
as fp32 partials in one GradWorkspace, but the weight gradients where they take one split: those
are written in their dtype into the flat buffer):
  MLP backward             V1 at C <= 192 (mlp_fused_backward.py): a grad-hidden kernel (gH
                           and grad_conv: grad_y taken through the LayerNorm backward in its
                           epilogue, its rows being whole there; h recomputed on chip where the
                           forward was fused) and a weight-gradient kernel (fc1 and fc2
                           weights, their biases and layer scale's gradient). V2 at C <= 192:
                           the same two kernels, after a GEMM (at C <= 128 a kernel recomputing
                           h and gA) that makes only GRN's per-sample sums of gA (not stored)
                           and one kernel GRN's backward scale and coefficient. Otherwise
                           GEMMs: [fc1 recomputed where the forward was fused], gH (V2: with
                           GRN's per-sample sums per row tile, then one kernel that makes GRN's
                           backward statistics, takes gH through GRN and GELU in place and
                           writes GRN's parameter-gradient partials), fc2 and fc1 weight
                           gradients (split-K partials + bias row sums; the fc2 one also layer
                           scale's gradient, as row dots of its A with y2), grad_y
  LayerNorm backward       where the MLP backward is not fused: grad_conv, ln weight/bias
                           partials
  dwconv backward          one launch, two kinds of program: the weight gradient's partials in
                           the weight's [C, k*k] order and the bias's, and the input gradient
                           (grad_conv conv the weight read flipped, + grad_out: the residual)
  finalize                 every parameter gradient, summed in a fixed order, in its dtype
Keep or recompute the hidden: the fused forward cannot keep it (it never exists), so the backward
recomputes it on chip; the two-GEMM forward keeps the pre-activation (written once by fc1's
epilogue, read by fc2 and by the backward). benchmarks/ledger.py, bf16: V1 6 launches at
C <= 192, 10 above; V2 10 and 12.

Mixed precision: parameters and x may be fp32 under autocast; kernels read them in their dtype
and convert in registers, so there is no cast launch. Activations are in `dtype`.
"""
import torch

from . import dwconv, dwconv_layer_norm, layer_norm, mlp, mlp_fused_backward
from .common import nhwc_buffer
from .grad_workspace import GradWorkspace


def grad_shapes(dw_weight, fc1_w, fc2_w, gamma_grad, grn_weight=None, grn_bias=None):
    """Every block parameter gradient reduced over rows, in the order of the flat buffer the
    backward returns (gamma's where `gamma_grad`: mlp.grad_shapes; GRN's with GRN). The order
    makes at most three runs of split counts (GradWorkspace): the row reductions (dwconv, GRN),
    the LayerNorm's (one split a row tile where the fused MLP backward makes them), the weight
    GEMMs' (mlp.GEMM_GRADS)."""
    C = dw_weight.shape[0]
    mlp_shapes = mlp.grad_shapes(fc1_w, fc2_w, gamma_grad, grn_weight, grn_bias)
    grn = {name: mlp_shapes.pop(name) for name in ("grn_weight", "grn_bias")
           if name in mlp_shapes}
    return {**dwconv.grad_shapes(dw_weight), **grn, "ln_weight": (C,), "ln_bias": (C,),
            **mlp_shapes}


def _gemm_tail(shapes):
    """The weight GEMMs' gradients at the end of `shapes` (grad_shapes' order puts them there):
    those a GradWorkspace may take as `direct`."""
    names = list(shapes)
    first = len(names)
    while first and names[first - 1] in mlp.GEMM_GRADS:
        first -= 1
    return names[first:]


def keeps_hidden(C, dtype, grn, weight_dtype):
    return not mlp.uses_fused_forward(C, grn=grn, keep_hidden=False, dtype=dtype,
                                      weight_dtype=weight_dtype)


def block_forward(x, dw_weight, dw_bias, ln_weight, ln_bias, fc1_w, fc1_b, fc2_w, fc2_b, gamma,
                  grn_weight, grn_bias, drop_scale, eps, grn_eps, dtype, save_y2):
    """(out N,C,H,W channels_last in `dtype`, y rows [M, C], conv N,C,H,W, mean, rstd [N,H,W]
    fp32, hidden [M, 4C] or empty, y2 [M, C] or empty, GRN's G and nx [N, 4C] fp32 or empty).
    x is N,C,H,W channels_last."""
    N, C, H, W = x.shape
    y, conv, mean, rstd = dwconv_layer_norm.dwconv_layer_norm_forward(
        x, dw_weight, dw_bias, ln_weight, ln_bias, eps, dtype=dtype)
    y_rows = y.permute(0, 2, 3, 1).reshape(-1, C)
    residual = x.permute(0, 2, 3, 1).reshape(-1, C)
    out_rows, hidden, y2, G, nx = mlp.mlp_forward(
        y_rows, fc1_w, fc1_b, fc2_w, fc2_b, gamma, residual, drop_scale, grn_weight, grn_bias,
        max(1, H * W), grn_eps, keeps_hidden(C, dtype, grn_weight is not None, fc1_w.dtype),
        save_y2)
    out = out_rows.view(N, H, W, C).permute(0, 3, 1, 2)
    return out, y_rows, conv, mean, rstd, hidden, y2, G, nx


def block_backward(grad_out, x, dw_weight, ln_weight, fc1_w, fc1_b, fc2_w, gamma, grn_weight,
                   grn_bias, drop_scale, y_rows, conv, mean, rstd, hidden, y2, G, nx, grn_eps,
                   shapes):
    """(grad_x in x's dtype and memory format, every parameter gradient in one flat buffer in
    fc1_w's dtype, in the order of `shapes`, grad_shapes' map)."""
    N, C, H, W = x.shape
    M = N * H * W
    grad_x = torch.empty_like(x)
    fused = mlp_fused_backward.takes(C, grn_weight is not None, y_rows.dtype, fc1_w.dtype,
                                     hidden.numel() > 0)
    splits = mlp.grad_splits(shapes, M, *fc1_w.shape, grad_out.dtype, x.device, fused)
    if fused:  # the grad-hidden kernel takes grad_y through the LayerNorm, a split a program
        splits.update(dict.fromkeys(("ln_weight", "ln_bias"),
                                    mlp_fused_backward.grad_hidden_programs(M)))
    ws = GradWorkspace(shapes, splits, fc1_w.dtype, x.device, direct=_gemm_tail(shapes))
    if M == 0:
        flat = torch.zeros(ws.columns, device=x.device, dtype=fc1_w.dtype)
        return grad_x.zero_(), flat
    g = grad_out.contiguous(memory_format=torch.channels_last)
    g_rows = g.permute(0, 2, 3, 1).reshape(-1, C)
    ln_grads = (ws["ln_weight"], ws["ln_bias"])
    ln_backward = mlp_fused_backward.LayerNormBackward(
        conv.permute(0, 2, 3, 1).reshape(-1, C), ln_weight, mean.reshape(-1), rstd.reshape(-1),
        *ln_grads) if fused else None
    grad_rows = mlp.mlp_backward_into(ws, g_rows, y_rows, fc1_w, fc1_b, fc2_w, gamma, drop_scale,
                                      grn_weight, grn_bias, hidden, y2, G, nx, max(1, H * W),
                                      grn_eps, fused, ln_backward)
    grad_rows_nchw = grad_rows.view(N, H, W, C).permute(0, 3, 1, 2)
    if fused:
        grad_conv = grad_rows_nchw
    else:
        grad_conv = torch.empty_like(conv)
        layer_norm.backward_launch(grad_rows_nchw, conv, ln_weight, mean, rstd, grad_conv,
                                   *ln_grads)()
    k = dw_weight.shape[-1]
    x_nhwc = x.contiguous(memory_format=torch.channels_last)
    gx = nhwc_buffer(grad_x)
    dwconv.backward_launch(grad_conv, x_nhwc, dw_weight, gx, ws["dw_weight"], ws["dw_bias"], k,
                           residual=g)()
    if gx is not grad_x:
        grad_x.copy_(gx)
    return grad_x, ws.finalize_flat()
