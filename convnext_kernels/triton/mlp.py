"""The ConvNeXt MLP on rows [M, C] in Triton: fc1 (C -> H) -> exact GELU [-> GRN] -> fc2 (H -> C),
then [* gamma] [* drop_scale per sample] [+ residual], forward and backward.

Forward strategies:
  fused (C <= FUSED_MAX_CHANNELS, hidden not kept; with GRN up to
      mlp_fused_backward.RECOMPUTE_MAX_CHANNELS): one kernel per row tile loops over the hidden
      dimension in chunks; each chunk's GELU activations stay in registers and are multiplied
      into the fc2 accumulator at once, so the [M, H] hidden tensor never exists. With GRN a
      GEMM first makes only the per-sample sums of GELU's squares (its output not stored), one
      kernel GRN's statistics, and the fused kernel applies GRN's per-sample scale and bias to
      each chunk's GELU output.
  two GEMMs: fc1 with bias + GELU in the epilogue (and GRN's sums of squares, then one kernel
      for GRN's statistics), fc2 with GRN's scale and bias in its prologue and bias, gamma,
      drop_scale and residual in its epilogue. Keeping the hidden for the backward, fc1 stores
      only the pre-activation h (with GRN, and the per-sample sums of gelu(h)²) and fc2 applies
      GELU (and GRN) to its tiles as it loads them.
Backward: at C <= mlp_fused_backward.MAX_CHANNELS in two kernels (below, and that module; V2
two launches more, below); otherwise in matmul.py launches, with no elementwise pass over
[M, H] without GRN:
  h  = x @ fc1_w^T + fc1_b                      recomputed, unless kept by the forward
  gH = (g * ds * gamma) @ fc2_w * gelu'(h)      (GRN: the GEMM stores gY = g' @ fc2_w with
                                                GRN's per-sample sums; one kernel
                                                (grn.grn_backward_launch) makes GRN's backward
                                                statistics, takes gY through GRN and GELU in
                                                place and writes GRN's parameter-gradient
                                                partials)
  fc2_w' = (g * ds * gamma)^T @ gelu(h)[GRN]    split-K, fp32 partials; fc2_b' = its row sums
  fc1_w' = gH^T @ x                             split-K; fc1_b' = its row sums
                                                (in the whole block, a GEMM that takes one
                                                split writes these in the parameters' dtype
                                                straight into the flat gradient buffer:
                                                grad_workspace.GradWorkspace's `direct`)
  x'     = gH @ fc1_w
  gamma' = sum over rows of g * ds * y2, with y2 = fc2's output before the scales (saved): row
           dots in the fc2_w' GEMM, which reads g anyway.

Keeping the hidden off memory in training (docs/PERFORMANCE.md has the ledger's model). At
ConvNeXt-T's stages, batch 64, bf16 (M rows, C channels, H = 4C), every GEMM of the MLP is
2·M·C·H = 14.8 GFLOP (0.019 ms at 790 TFLOP/s; the fused kernels run C in one or two
power-of-two pieces, mlp_fused_backward.channel_pieces: 96 = 64 + 32, 192 = 128 + 64, no
padding) and a pass over the [M, H] hidden moves M·H·2 bytes:
    stage   M       C    H     hidden   one pass at 4.3 TB/s
    T1      200704  96   384   154 MB   0.036 ms
    T2      50176   192  768    77 MB   0.018 ms
    T3      12544   384  1536   39 MB   0.009 ms
    T4      3136    768  3072   19 MB   0.004 ms
The backward GEMMs above make 6 passes over the hidden where the forward was fused (it keeps
none; the backward writes the recomputed h, reads it twice, writes gH, reads it twice) and 7
where it kept h (the forward writes h, fc2 reads it through GELU; the backward reads h twice,
writes gH, reads it twice), in 5 launches (4 with h kept).
  C <= 192 (T1, T2), V1: the forward fused (FUSED_MAX_CHANNELS) and the backward in two kernels
    (mlp_fused_backward.py), both recomputing h from x on chip: gH written once and read once,
    x' and the weight gradients made from tiles on chip. Passes over the hidden: 2; GEMMs: 8
    against eager's 6 (h recomputed by each backward kernel); launches: 3 in place of 6. By the
    ledger's model at T2 this beats the two-GEMM forward keeping h with the same two backward
    kernels reading it (6 passes, 6 GEMMs): 0.219 ms against 0.232 a block. In the block, the
    grad-hidden kernel also takes x' through the LayerNorm that made x
    (mlp_fused_backward.LayerNormBackward): x' is not read again.
  C > 192 (T3, T4): grad_x's [64, C] fp32 accumulator no longer fits in registers (C = 384:
    128 a thread at 8 warps, with the tiles beside it), so the backward stays the GEMMs above,
    reading the kept h: tiling C in the grad-hidden kernel would re-read gH per C tile.
  GRN (V2), C <= 192: its per-sample statistics need every pixel's GELU output before fc2, and
    its backward statistics every pixel's gA·gelu(h) before gH, so neither direction runs in
    one pass. At C <= 128 no h is kept (mlp_fused_backward.recomputes_hidden: bound by bytes
    there, as the ledger's model has it): the forward runs fc1 for GRN's sums of gelu(h)²
    alone, one small kernel GRN's statistics, then the fused kernel with GRN; the backward runs
    one kernel that makes h and gA = g' @ fc2_w on chip and stores only their per-sample sums
    of gA·gelu(h) and gA ([N, H] partials: mlp_fused_backward.grn_sums_launch), one small
    kernel (grn.grn_coefficients_launch) GRN's per-sample scale and coefficient [N, H] and its
    parameter-gradient partials, then the grad-hidden kernel with gA·scale + gelu(h)·coef in
    place of gA and the weight-gradient kernel with gelu(h)·scale + β in place of gelu(h), both
    recomputing h. Passes over the hidden: 2 (gH written and read); GEMMs: 11 against eager's
    6; launches: 3 forward, 4 backward. At C = 192 the forward keeps h (fc1 stores h and the
    sums of gelu(h)², fc2 takes h through GELU and GRN on load) and the sums are a GEMM reading
    h, not storing gA; the two kernels read h. Passes: 7 (forward: h written, read; backward: h
    read three times, gH written and read) against the GEMMs' 10 (forward the same; backward: h
    read and gA written with its sums, both read and gH written in place, h read for fc2_w',
    gH read twice); GEMMs: 7 against eager's 6; backward launches: 4 in place of 5.
  GRN (V2), C > 192: the GEMMs above, the forward keeping h alone.
"""
from dataclasses import replace

import torch
import triton
import triton.language as tl

from . import mlp_fused_backward
from .common import INTERPRETED, Launch, cast_for_store, mma, tile
from .grn import grn_backward_launch, grn_coefficients_launch, grn_statistics
from .grad_workspace import GradWorkspace, reduction_splits
from .mlp_fused_backward import channel_pieces, padded_channels, weight_chunk
from .matmul import (GELU, GELU_GRAD, GRN_GRAD, PLAIN, Epilogue, Prologue,
                     dot_in_fp32, gelu, input_precision, matmul_launch, output_epilogue,
                     per_sample_partials, splits_to_fill)

# Widest C the fused forward takes: x, the fc2 accumulator and two weight chunks of
# [128 rows, C] stay on chip (kernel report: no spills at 192, C in pieces of 128 and 64). At
# 192 (ConvNeXt-T stage 2) it and the backward recomputing h beat keeping h in the ledger's
# model (module docstring). Not yet measured against the two-GEMM path on a GPU.
FUSED_MAX_CHANNELS = 192
_FUSED_BLOCK_H = 64


@triton.jit
def _fused_mlp_kernel(x_ptr, w1_ptr, b1_ptr, w2_ptr, b2_ptr, out_ptr, y2_ptr, gamma_ptr,
                      drop_scale_ptr, residual_ptr, grn_scale_ptr, grn_bias_ptr, M, C, HID,
                      rows_per_sample, GRN: tl.constexpr, STORE_Y2: tl.constexpr,
                      HAS_GAMMA: tl.constexpr,
                      HAS_DROP_SCALE: tl.constexpr, HAS_RESIDUAL: tl.constexpr,
                      BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_C2: tl.constexpr,
                      BLOCK_H: tl.constexpr, DOT_FP32: tl.constexpr,
                      INPUT_PRECISION: tl.constexpr, INTERPRETED: tl.constexpr):
    # C in one or two pieces (mlp_fused_backward.channel_pieces): the second piece's tiles
    # carry a "2".
    dtype: tl.constexpr = x_ptr.dtype.element_ty
    rows = (tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)
    row_mask = rows < M
    cols = tl.arange(0, BLOCK_C)
    col_mask = cols < C
    x = tile(x_ptr, rows, row_mask, cols, col_mask, C)
    acc = tl.zeros([BLOCK_M, BLOCK_C], dtype=tl.float32)
    if BLOCK_C2:
        cols2 = BLOCK_C + tl.arange(0, BLOCK_C2)
        col_mask2 = cols2 < C
        x2 = tile(x_ptr, rows, row_mask, cols2, col_mask2, C)
        acc2 = tl.zeros([BLOCK_M, BLOCK_C2], dtype=tl.float32)
    for h0 in range(0, HID, BLOCK_H):
        offs_h, h_mask, w1, w2 = weight_chunk(w1_ptr, w2_ptr, h0, BLOCK_H, HID, cols, col_mask,
                                              C, dtype, INTERPRETED)
        pre = mma(x, tl.trans(w1), tl.zeros([BLOCK_M, BLOCK_H], dtype=tl.float32), DOT_FP32,
                   INPUT_PRECISION)
        if BLOCK_C2:
            _, _, w1_2, w2_2 = weight_chunk(w1_ptr, w2_ptr, h0, BLOCK_H, HID, cols2, col_mask2,
                                            C, dtype, INTERPRETED)
            pre = mma(x2, tl.trans(w1_2), pre, DOT_FP32, INPUT_PRECISION)
        pre += tl.load(b1_ptr + offs_h, mask=h_mask, other=0.0).to(tl.float32)[None, :]
        # Rounded to the input dtype before fc2, as eager stores its hidden tensor.
        act = cast_for_store(gelu(pre), dtype, INTERPRETED)
        if GRN:  # of GELU's output as stored, per sample, as fc2's prologue takes it
            act = cast_for_store(
                act.to(tl.float32) * mlp_fused_backward.per_sample(
                    grn_scale_ptr, rows, row_mask, offs_h, h_mask, HID, rows_per_sample)
                + tl.load(grn_bias_ptr + offs_h, mask=h_mask, other=0.0).to(tl.float32)[None, :],
                dtype, INTERPRETED)
        acc = mma(act, tl.trans(w2), acc, DOT_FP32, INPUT_PRECISION)
        if BLOCK_C2:
            acc2 = mma(act, tl.trans(w2_2), acc2, DOT_FP32, INPUT_PRECISION)
    acc += tl.load(b2_ptr + cols, mask=col_mask, other=0.0).to(tl.float32)[None, :]
    output_epilogue(acc, rows, row_mask, cols, col_mask, C, out_ptr, y2_ptr, gamma_ptr,
                    drop_scale_ptr, residual_ptr, rows_per_sample, STORE_Y2, HAS_GAMMA,
                    HAS_DROP_SCALE, HAS_RESIDUAL, INTERPRETED)
    if BLOCK_C2:
        acc2 += tl.load(b2_ptr + cols2, mask=col_mask2, other=0.0).to(tl.float32)[None, :]
        output_epilogue(acc2, rows, row_mask, cols2, col_mask2, C, out_ptr, y2_ptr, gamma_ptr,
                        drop_scale_ptr, residual_ptr, rows_per_sample, STORE_Y2, HAS_GAMMA,
                        HAS_DROP_SCALE, HAS_RESIDUAL, INTERPRETED)


def fused_launch(x, w1, b1, w2, b2, out, y2, gamma, drop_scale, residual, rows_per_sample,
                 grn_scale=None, grn_bias=None):
    """With GRN: its forward's per-sample scale [samples, H] fp32 (grn.grn_statistics) and its
    bias [H]."""
    M, C = x.shape
    block_c, block_c2 = channel_pieces(C)
    block_m = 64 if INTERPRETED or block_c + block_c2 <= 64 else 128
    return Launch(_fused_mlp_kernel, (triton.cdiv(M, block_m),),
                  (x, w1, b1, w2, b2, out, *(t if t is not None else out for t in
                                             (y2, gamma, drop_scale, residual, grn_scale,
                                              grn_bias)),
                   M, C, w1.shape[0], rows_per_sample),
                  dict(GRN=grn_scale is not None, STORE_Y2=y2 is not None,
                       HAS_GAMMA=gamma is not None,
                       HAS_DROP_SCALE=drop_scale is not None,
                       HAS_RESIDUAL=residual is not None, BLOCK_M=block_m, BLOCK_C=block_c,
                       BLOCK_C2=block_c2, BLOCK_H=_FUSED_BLOCK_H, DOT_FP32=dot_in_fp32(x.dtype),
                       INPUT_PRECISION=input_precision(x.dtype), INTERPRETED=INTERPRETED),
                  num_warps=8 if block_m == 128 else 4,
                  flops=4 * M * padded_channels(C) * w1.shape[0])


def uses_fused_forward(C, grn, keep_hidden, dtype=torch.bfloat16, weight_dtype=None):
    """The fused forward keeps no hidden, so its backward recomputes h: it serves where the fused
    backward does that (mlp_fused_backward.takes: in fp16/bf16, as in IEEE fp32 the products
    run on FMA units and its tiles spilled at every size tried; not above 128 channels with
    weights in another dtype; with GRN up to mlp_fused_backward.RECOMPUTE_MAX_CHANNELS, after
    a GEMM that makes only GRN's sums of squares)."""
    weight_dtype = dtype if weight_dtype is None else weight_dtype
    return (C <= FUSED_MAX_CHANNELS and not keep_hidden
            and mlp_fused_backward.takes(C, grn, dtype, weight_dtype, hidden_kept=False))


def mlp_forward(x, fc1_w, fc1_b, fc2_w, fc2_b, gamma, residual, drop_scale, grn_weight,
                grn_bias, rows_per_sample, eps, keep_hidden, save_y2):
    """(out [M, C], hidden pre-activation [M, H] if keep_hidden, y2 [M, C] if save_y2,
    GRN's G [N, H] fp32, GRN's nx [N, H] fp32); absent outputs are empty."""
    M, C = x.shape
    H = fc1_w.shape[0]
    grn = grn_weight is not None
    out = torch.empty_like(x)
    y2 = torch.empty_like(x) if save_y2 else x.new_empty(0)
    hidden = x.new_empty(M, H) if keep_hidden else x.new_empty(0)
    samples = M // rows_per_sample if M else 0
    G, nx = (x.new_empty(0, dtype=torch.float32) for _ in range(2))
    if M == 0:
        if grn:
            G, nx = (torch.zeros(0, H, device=x.device, dtype=torch.float32) for _ in range(2))
        return out, hidden, y2, G, nx
    y2_arg = y2 if save_y2 else None
    if uses_fused_forward(C, grn, keep_hidden, x.dtype, fc1_w.dtype):
        grn_scale = grn_bias_rows = None
        if grn:  # its statistics need every pixel's GELU output first: fc1 makes their sums only
            sumsq = per_sample_partials(1, M, H, rows_per_sample, x.dtype, x.device)[0]
            matmul_launch(x, fc1_w.t(), x.new_empty(0),
                          epilogue=Epilogue(GELU, bias=fc1_b, sums=sumsq, sumsq=True,
                                            store=False),
                          rows_per_sample=rows_per_sample)()
            G, nx, grn_scale = grn_statistics(sumsq, samples, grn_weight, eps)
            grn_bias_rows = grn_bias.reshape(-1).contiguous()
        fused_launch(x, fc1_w, fc1_b, fc2_w, fc2_b, out, y2_arg, gamma, drop_scale, residual,
                     rows_per_sample, grn_scale, grn_bias_rows)()
        return out, hidden, y2, G, nx
    # Keeping the hidden, fc1 stores the pre-activation alone (with GRN, and the per-sample sums
    # of its GELU's squares) and fc2 takes it through GELU as it loads it: one pass over [M, H]
    # less than storing both, and gelu(h) of the stored h, rounded, as eager computes it from
    # its stored fc1 output.
    if keep_hidden and not grn:
        matmul_launch(x, fc1_w.t(), hidden, epilogue=Epilogue(PLAIN, bias=fc1_b))()
        act, fc2_prologue = hidden, Prologue(a_gelu=True)
    else:
        act = hidden if keep_hidden else x.new_empty(M, H)
        sumsq = (per_sample_partials(1, M, H, rows_per_sample, x.dtype, x.device)[0] if grn
                 else None)
        matmul_launch(x, fc1_w.t(), act,
                      epilogue=Epilogue(GELU, bias=fc1_b, pre=hidden if keep_hidden else None,
                                        sums=sumsq, sumsq=grn, store=not keep_hidden),
                      rows_per_sample=rows_per_sample)()
        fc2_prologue = Prologue(a_gelu=keep_hidden)
        if grn:
            G, nx, grn_scale = grn_statistics(sumsq, samples, grn_weight, eps)
            fc2_prologue = replace(fc2_prologue, a_grn_scale=grn_scale,
                                   a_grn_bias=grn_bias.reshape(-1).contiguous())
    matmul_launch(act, fc2_w.t(), out, fc2_prologue,
                  Epilogue(bias=fc2_b, y2=y2_arg, out_col_scale=gamma,
                           out_row_scale=drop_scale, residual=residual),
                  rows_per_sample=rows_per_sample)()
    return out, hidden, y2, G, nx


# The gradients the split-K weight GEMMs write (weights, biases as their row sums, layer scale's
# as the fc2 weight GEMM's row dots): last in grad_shapes, so that they make one run of a
# GradWorkspace with their own split count.
GEMM_GRADS = ("gamma", "fc1_w", "fc1_b", "fc2_w", "fc2_b")


def grad_shapes(fc1_w, fc2_w, gamma_grad, grn_weight=None, grn_bias=None):
    """Shapes of the MLP parameter gradients reduced over rows (a GradWorkspace's `shapes`);
    layer scale's where `gamma_grad` (the forward saved y2 for it)."""
    H, C = fc1_w.shape
    shapes = {}
    if grn_weight is not None:
        shapes.update(grn_weight=tuple(grn_weight.shape), grn_bias=tuple(grn_bias.shape))
    if gamma_grad:
        shapes["gamma"] = (C,)
    shapes.update(fc1_w=(H, C), fc1_b=(H,), fc2_w=(C, H), fc2_b=(C,))
    return shapes


def grad_splits(shapes, M, H, C, dtype, device, fused):
    """Each gradient's split count (a GradWorkspace's `splits`): the weight GEMMs' from their
    output tiles (matmul.splits_to_fill, the same for both, at most a reduction over M rows
    takes; where the backward is `fused`, mlp_fused_backward's from its hidden chunks), the rest
    reduction_splits(M)."""
    rows = reduction_splits(M)
    if fused:
        gemm = mlp_fused_backward.weight_grad_splits(M, H, device)
    else:
        gemm = max(splits_to_fill(C, H, dtype, device, rows),
                   splits_to_fill(H, C, dtype, device, rows))
    return {name: gemm if name in GEMM_GRADS else rows for name in shapes}


def mlp_backward(grad_out, x, fc1_w, fc1_b, fc2_w, gamma, drop_scale, grn_weight, grn_bias,
                 hidden, y2, G, nx, rows_per_sample, eps):
    """(grad_x, grad_fc1_w, grad_fc1_b, grad_fc2_w, grad_fc2_b, grad_gamma, grad_grn_weight,
    grad_grn_bias); the grads of absent parameters are empty."""
    M = x.shape[0]
    gamma_grad = gamma is not None and y2.dim() == 2  # (the forward saved y2 for it)
    if M == 0:
        def zeros_or_empty(t):
            return torch.zeros_like(t) if t is not None else x.new_empty(0)
        return (torch.empty_like(x), *(zeros_or_empty(t) for t in (
            fc1_w, fc1_b, fc2_w, fc2_w[:, 0], gamma if gamma_grad else None, grn_weight,
            grn_bias)))
    shapes = grad_shapes(fc1_w, fc2_w, gamma_grad, grn_weight, grn_bias)
    fused = mlp_fused_backward.takes(x.shape[1], grn_weight is not None, x.dtype, fc1_w.dtype,
                                     hidden.numel() > 0)
    ws = GradWorkspace(shapes, grad_splits(shapes, M, *fc1_w.shape, x.dtype, x.device, fused),
                       fc1_w.dtype, x.device)
    grad_x = mlp_backward_into(ws, grad_out, x, fc1_w, fc1_b, fc2_w, gamma, drop_scale,
                               grn_weight, grn_bias, hidden, y2, G, nx, rows_per_sample, eps,
                               fused)
    grads = ws.finalize_each()
    return (grad_x, *(grads.get(name, x.new_empty(0)) for name in (
        "fc1_w", "fc1_b", "fc2_w", "fc2_b", "gamma", "grn_weight", "grn_bias")))


def _output_grad_scales(gamma, drop_scale, rows_per_sample):
    """The output gradient times drop path's per-sample scale and layer scale, on load."""
    return Prologue(a_row_scale=drop_scale, a_row_div=rows_per_sample, a_col_scale=gamma)


def _grn_coefficients(ws, g, x, fc1_w, fc1_b, fc2_w, gamma, drop_scale, grn_weight, hidden, G,
                      nx, rows_per_sample, eps):
    """GRN's backward statistics for the fused backward, no [M, H] tensor written: the
    per-sample sums of gY * gelu(h) and of gY, gY = g' @ fc2_w (gY itself not stored), from one
    GEMM reading the kept h or, where the forward kept none, one kernel recomputing h
    (mlp_fused_backward.grn_sums_launch); then one kernel the per-sample scale and coef
    [samples, H] fp32 from them (and GRN's parameter-gradient partials into ws). Returns
    (scale, coef)."""
    M = g.shape[0]
    H = fc2_w.shape[1]
    samples = M // rows_per_sample
    if hidden.numel():
        grad_dot, grad_sum = per_sample_partials(2, M, H, rows_per_sample, g.dtype, g.device)
        matmul_launch(g, fc2_w, hidden, _output_grad_scales(gamma, drop_scale, rows_per_sample),
                      Epilogue(GRN_GRAD, aux=hidden, sums=grad_dot, sums2=grad_sum,
                               store=False),
                      rows_per_sample=rows_per_sample)()
    else:
        grad_dot, grad_sum = mlp_fused_backward.grn_sums_partials(M, H, rows_per_sample,
                                                                  g.device)
        mlp_fused_backward.grn_sums_launch(g, x, fc1_w, fc1_b, fc2_w, gamma, drop_scale,
                                           rows_per_sample, grad_dot, grad_sum)()
    scale, coef = (torch.empty(samples, H, device=g.device, dtype=torch.float32)
                   for _ in range(2))
    grn_coefficients_launch(G, nx, grn_weight, grad_dot, grad_sum, scale, coef,
                            ws["grn_weight"], ws["grn_bias"], eps)()
    return scale, coef


def mlp_backward_into(ws, grad_out, x, fc1_w, fc1_b, fc2_w, gamma, drop_scale, grn_weight,
                      grn_bias, hidden, y2, G, nx, rows_per_sample, eps, fused, layer_norm=None):
    """The MLP backward with its parameter gradients left as partials in `ws` (names of
    grad_shapes, split as grad_splits with the same `fused`: mlp_fused_backward.takes); returns
    grad_x. M > 0. Where `fused`, a mlp_fused_backward.LayerNormBackward `layer_norm` makes the
    result the gradient of the input of the LayerNorm that made x."""
    assert fused or layer_norm is None, "the LayerNorm backward rides on the fused kernels"
    M, C = x.shape
    H = fc1_w.shape[0]
    grn = grn_weight is not None
    if fused:
        grn_scale = grn_coef = grn_bias_rows = None
        if grn:
            grn_scale, grn_coef = _grn_coefficients(ws, grad_out, x, fc1_w, fc1_b, fc2_w,
                                                    gamma, drop_scale, grn_weight, hidden, G,
                                                    nx, rows_per_sample, eps)
            grn_bias_rows = grn_bias.reshape(-1).contiguous()
        if mlp_fused_backward.recomputes_hidden(C, x.dtype, fc1_w.dtype, hidden.numel() > 0):
            hidden = hidden[:0]  # the kernels recompute h (with GRN, after the sums read it)
        grad_hidden, grad_x = x.new_empty(M, H), torch.empty_like(x)
        mlp_fused_backward.grad_hidden_launch(grad_out, x, fc1_w, fc1_b, fc2_w, hidden,
                                              grad_hidden, grad_x, gamma, drop_scale,
                                              rows_per_sample, grn_scale, grn_coef,
                                              layer_norm)()
        mlp_fused_backward.weight_grad_launch(
            grad_out, x, fc1_w, fc1_b, hidden, grad_hidden, y2, gamma, drop_scale,
            {name: ws[name] for name in GEMM_GRADS if name in ws.shapes}, rows_per_sample,
            grn_scale, grn_bias_rows)()
        return grad_x
    if hidden.numel() == 0:
        hidden = x.new_empty(M, H)
        matmul_launch(x, fc1_w.t(), hidden, epilogue=Epilogue(PLAIN, bias=fc1_b))()
    g = grad_out
    grad_scales = _output_grad_scales(gamma, drop_scale, rows_per_sample)
    grad_hidden = x.new_empty(M, H)
    b_prologue = Prologue(a_row_scale=gamma, a_col_scale=drop_scale, a_col_div=rows_per_sample,
                          b_gelu=True)
    if grn:
        samples = M // rows_per_sample
        # gY = g' @ fc2_w, with GRN's per-sample sums of gY * gelu(h) and of gY on the fly.
        grad_dot, grad_sum = per_sample_partials(2, M, H, rows_per_sample, g.dtype, x.device)
        matmul_launch(g, fc2_w, grad_hidden, grad_scales,
                      Epilogue(GRN_GRAD, aux=hidden, sums=grad_dot, sums2=grad_sum),
                      rows_per_sample=rows_per_sample)()
        scale = torch.empty(samples, H, device=x.device, dtype=torch.float32)
        h3, gh3 = (t.reshape(samples, rows_per_sample, H) for t in (hidden, grad_hidden))
        grn_backward_launch(gh3, h3, G, nx, grn_weight, grad_dot, grad_sum, gh3,
                            ws["grn_weight"], ws["grn_bias"], eps, scale=scale,
                            x_is_pre_gelu=True)()
        b_prologue = replace(b_prologue, b_grn_scale=scale,
                             b_grn_bias=grn_bias.reshape(-1).contiguous())
    else:
        matmul_launch(g, fc2_w, grad_hidden, grad_scales, Epilogue(GELU_GRAD, aux=hidden))()
    # fc2_w' = (g * ds * gamma)^T @ act, fc2_b' its row sums; fc1_w' = gH^T @ x, fc1_b' likewise.
    # (gamma' = sum over rows of g * ds * y2: the row dots of this GEMM's A, before gamma.)
    gamma_dot = (y2.t(), ws["gamma"]) if "gamma" in ws.shapes else None
    matmul_launch(g.t(), hidden, ws["fc2_w"], b_prologue, rows_per_sample=rows_per_sample,
                  partials=True, row_sum=ws["fc2_b"], row_dot=gamma_dot)()
    matmul_launch(grad_hidden.t(), x, ws["fc1_w"], partials=True, row_sum=ws["fc1_b"])()
    grad_x = torch.empty_like(x)
    matmul_launch(grad_hidden, fc1_w, grad_x)()
    return grad_x
