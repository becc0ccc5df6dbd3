"""The MLP backward in two kernels that keep the [M, H] hidden on chip but for one pass each way:
the grad-hidden kernel writes gH and the weight-gradient kernel reads it (the plan and its
arithmetic are in mlp.py's docstring; with GRN, where the forward kept h, both take GRN's
per-sample scale and coefficient, made before them, into gA and gelu(h): GRN below). g' below
is the output gradient times drop path's per-sample scale and layer scale, rounded to the
activations' dtype; h the pre-activation x @ fc1_w^T + fc1_b, recomputed from x on chip or read
where the forward kept it (HIDDEN_KEPT), in either case rounded to the activations' dtype as
eager stores it.

Grad-hidden kernel, a program per tile of BLOCK_M rows, looping over the hidden in BLOCK_H
chunks: h, gA = g' @ fc2_w[:, chunk] and gH = gA * gelu'(h) on chip, gH stored, and
grad_x += gH @ fc1_w[chunk] in an fp32 [BLOCK_M, C] accumulator stored at the end, or, in the
block (LayerNormBackward), taken through the LayerNorm that made x: its rows are whole there,
so the LayerNorm backward's row sums need no other pass, and its parameter gradients are
per-program partials (grad_hidden_programs splits).

Weight-gradient kernel, two programs per (hidden chunk, row split), each with one fp32
accumulator, over the split's rows: one makes fc1_w'[chunk] = gH^T @ x and fc1_b' (gH's row
sums), the other h again (or reads it) and fc2_w'[:, chunk] = g'^T @ gelu(h), and in the first
chunk also fc2_b' (g''s row sums) and layer scale's gradient (sum of g * ds * y2). A split's
programs are adjacent in the grid, so its rows of x come from L2 after the first read. Each
split writes its rows of a grad_workspace.GradWorkspace (fp32 partials, or with one split the
gradients themselves in the parameters' dtype), every element it owns, so the workspace needs
no zero fill and finalize sums in a fixed order.

GRN: the grad-hidden kernel's gA becomes gA * scale + gelu(h) * coef, the weight-gradient
kernel's gelu(h) becomes gelu(h) * scale + β (rounded as eager stores GRN's output), scale and
coef read per row's sample from [samples, H] fp32 (grn.grn_coefficients_launch).

Each program holds one [64, C] fp32 accumulator, C in one or two power-of-two pieces
(channel_pieces: 96 = 64 + 32, 192 = 128 + 64, where one tile would pad to 128 and 256 and run a
third more tensor-core work): channels up to MAX_CHANNELS. The launches count the FLOPs of the
pieces as run.
"""
from typing import NamedTuple

import torch
import triton
import triton.language as tl

from .common import INTERPRETED, Launch, cast_for_store, mma, sm_count, tile
from .grad_workspace import reduction_splits
from .matmul import (as_operand, dot_in_fp32, gelu, gelu_grad, input_precision,
                     per_sample_partials, store_per_sample_sums)

# The widest C whose accumulators fit on chip: [64, 192] fp32 is 48 registers a thread at
# 8 warps.
MAX_CHANNELS = 192
# Tiles (rows, hidden chunk). The grad-hidden kernel's [64, C] tiles of g', x and grad_x stay
# for its whole loop, so its hidden chunk is narrow; the weight-gradient kernel's accumulators
# are [64, C], so its row steps are. Kernel report (sm_90, triton 3.8), C = 96 / 192, bf16:
# grad-hidden 137 / 213 registers, weight-gradient 227-248 / 234-255, no spills; a 64-wide
# hidden chunk made the grad-hidden kernel spill under autocast, and one weight-gradient program
# holding both weights' accumulators spilled (hence two programs per chunk). Not yet tuned on a
# GPU.
_GRAD_HIDDEN_TILE = (64, 32)
_WEIGHT_GRAD_TILE = (32, 64)
_NUM_WARPS = 8


@triton.jit
def _output_grad(g_ptr, rows, row_mask, cols, col_mask, C, gamma_ptr, drop_scale_ptr,
                 rows_per_sample, HAS_GAMMA: tl.constexpr, HAS_DROP_SCALE: tl.constexpr,
                 dtype: tl.constexpr, INTERPRETED: tl.constexpr):
    """(g' = g * ds * gamma rounded to `dtype`, g * ds in fp32: layer scale's gradient takes
    it before gamma) for a [rows, cols] tile."""
    g = tile(g_ptr, rows, row_mask, cols, col_mask, C).to(tl.float32)
    if HAS_DROP_SCALE:
        g = g * tl.load(drop_scale_ptr + rows // rows_per_sample, mask=row_mask,
                        other=0.0).to(tl.float32)[:, None]
    scaled = g
    if HAS_GAMMA:
        scaled = g * tl.load(gamma_ptr + cols, mask=col_mask, other=0.0).to(tl.float32)[None, :]
    return cast_for_store(scaled, dtype, INTERPRETED), g


@triton.jit
def _row_tiles(g_ptr, x_ptr, rows, row_mask, cols, col_mask, C, gamma_ptr, drop_scale_ptr,
               rows_per_sample, HIDDEN_KEPT: tl.constexpr, HAS_GAMMA: tl.constexpr,
               HAS_DROP_SCALE: tl.constexpr, dtype: tl.constexpr, INTERPRETED: tl.constexpr):
    """(g', x) of a row tile for one piece of C: g' in `dtype`, x the MLP's input (g' in its
    place, unused, where the kept hidden is read instead)."""
    g, g_ds = _output_grad(g_ptr, rows, row_mask, cols, col_mask, C, gamma_ptr, drop_scale_ptr,
                           rows_per_sample, HAS_GAMMA, HAS_DROP_SCALE, dtype, INTERPRETED)
    x = g
    if not HIDDEN_KEPT:
        x = tile(x_ptr, rows, row_mask, cols, col_mask, C)
    return g, x


@triton.jit
def weight_chunk(w1_ptr, w2_ptr, h0, BLOCK_H: tl.constexpr, HID, cols, col_mask, C,
                 dtype: tl.constexpr, INTERPRETED: tl.constexpr):
    """The hidden chunk from h0: (its columns, their mask, fc1_w's rows [BLOCK_H, piece] and
    fc2_w's columns [piece, BLOCK_H] in the dot's dtype), for the fused forward and the
    grad-hidden kernel."""
    offs_h = h0 + tl.arange(0, BLOCK_H)
    h_mask = offs_h < HID
    return (offs_h, h_mask,
            as_operand(tile(w1_ptr, offs_h, h_mask, cols, col_mask, C), dtype, INTERPRETED),
            as_operand(tile(w2_ptr, cols, col_mask, offs_h, h_mask, HID), dtype, INTERPRETED))


@triton.jit
def per_sample(stat_ptr, rows, row_mask, offs_h, h_mask, HID, rows_per_sample):
    """stat[row's sample, h] of an fp32 [samples, HID] statistic for a [rows, hidden] tile."""
    return tl.load(stat_ptr + (rows // rows_per_sample)[:, None] * HID + offs_h[None, :],
                   mask=row_mask[:, None] & h_mask[None, :], other=0.0)


@triton.jit
def _store_sums(ptr, split, stride, cols, mask, values, INTERPRETED: tl.constexpr):
    tl.store(ptr + split * stride + cols,
             cast_for_store(values, ptr.dtype.element_ty, INTERPRETED), mask=mask)


@triton.jit
def _hidden_chunk(x, g, x2, g2, w1_ptr, b1_ptr, w2_ptr, hidden_ptr, h0, rows, row_mask, cols,
                  col_mask, cols2, col_mask2, C, HID, HIDDEN_KEPT: tl.constexpr,
                  BLOCK_M: tl.constexpr, BLOCK_C2: tl.constexpr, BLOCK_H: tl.constexpr,
                  dtype: tl.constexpr, DOT_FP32: tl.constexpr, INPUT_PRECISION: tl.constexpr,
                  INTERPRETED: tl.constexpr):
    """For a row tile's hidden chunk from h0, the two pieces of C given as (x, g') and (x2, g2')
    (the second unused where BLOCK_C2 is 0): (its columns, their mask, fc1_w's rows for each
    piece, h as eager stores it (made from x, or read where kept) and gA = g' @ fc2_w[:, chunk],
    both fp32 [BLOCK_M, BLOCK_H])."""
    offs_h, h_mask, w1, w2 = weight_chunk(w1_ptr, w2_ptr, h0, BLOCK_H, HID, cols, col_mask, C,
                                          dtype, INTERPRETED)
    w1_2 = w1
    pre = tl.zeros([BLOCK_M, BLOCK_H], dtype=tl.float32)
    if not HIDDEN_KEPT:
        pre = mma(x, tl.trans(w1), pre, DOT_FP32, INPUT_PRECISION)
    grad_act = mma(g, w2, tl.zeros([BLOCK_M, BLOCK_H], dtype=tl.float32), DOT_FP32,
                   INPUT_PRECISION)
    if BLOCK_C2:
        _, _, w1_2, w2_2 = weight_chunk(w1_ptr, w2_ptr, h0, BLOCK_H, HID, cols2, col_mask2, C,
                                        dtype, INTERPRETED)
        if not HIDDEN_KEPT:
            pre = mma(x2, tl.trans(w1_2), pre, DOT_FP32, INPUT_PRECISION)
        grad_act = mma(g2, w2_2, grad_act, DOT_FP32, INPUT_PRECISION)
    if HIDDEN_KEPT:
        pre = tile(hidden_ptr, rows, row_mask, offs_h, h_mask, HID).to(tl.float32)
    else:  # h as eager stores it (rows past the end: g' is 0 there, so gA is)
        pre += tl.load(b1_ptr + offs_h, mask=h_mask, other=0.0).to(tl.float32)[None, :]
        pre = cast_for_store(pre, dtype, INTERPRETED).to(tl.float32)
    return offs_h, h_mask, w1, w1_2, pre, grad_act


@triton.jit
def _grad_hidden_kernel(g_ptr, x_ptr, w1_ptr, b1_ptr, w2_ptr, hidden_ptr, grad_hidden_ptr,
                        grad_x_ptr, gamma_ptr, drop_scale_ptr, grn_scale_ptr, grn_coef_ptr,
                        ln_in_ptr, ln_w_ptr, ln_mean_ptr, ln_rstd_ptr, ln_w_grad_ptr,
                        ln_b_grad_ptr, ln_grad_stride, M, C, HID, rows_per_sample,
                        HIDDEN_KEPT: tl.constexpr, GRN: tl.constexpr,
                        LAYER_NORM: tl.constexpr, HAS_GAMMA: tl.constexpr,
                        HAS_DROP_SCALE: tl.constexpr, BLOCK_M: tl.constexpr,
                        BLOCK_C: tl.constexpr, BLOCK_C2: tl.constexpr, BLOCK_H: tl.constexpr,
                        DOT_FP32: tl.constexpr, INPUT_PRECISION: tl.constexpr,
                        INTERPRETED: tl.constexpr):
    # C in one or two pieces (channel_pieces): the second piece's tiles carry a "2".
    dtype: tl.constexpr = grad_x_ptr.dtype.element_ty
    rows = (tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)
    row_mask = rows < M
    cols = tl.arange(0, BLOCK_C)
    col_mask = cols < C
    g, x = _row_tiles(g_ptr, x_ptr, rows, row_mask, cols, col_mask, C, gamma_ptr,
                      drop_scale_ptr, rows_per_sample, HIDDEN_KEPT, HAS_GAMMA, HAS_DROP_SCALE,
                      dtype, INTERPRETED)
    acc = tl.zeros([BLOCK_M, BLOCK_C], dtype=tl.float32)
    if BLOCK_C2:
        cols2 = BLOCK_C + tl.arange(0, BLOCK_C2)
        col_mask2 = cols2 < C
        g2, x2 = _row_tiles(g_ptr, x_ptr, rows, row_mask, cols2, col_mask2, C, gamma_ptr,
                            drop_scale_ptr, rows_per_sample, HIDDEN_KEPT, HAS_GAMMA,
                            HAS_DROP_SCALE, dtype, INTERPRETED)
        acc2 = tl.zeros([BLOCK_M, BLOCK_C2], dtype=tl.float32)
    else:  # (one piece: the second's names stand for the first, unused)
        cols2, col_mask2, g2, x2 = cols, col_mask, g, x
    for h0 in range(0, HID, BLOCK_H):
        offs_h, h_mask, w1, w1_2, pre, grad_act = _hidden_chunk(
            x, g, x2, g2, w1_ptr, b1_ptr, w2_ptr, hidden_ptr, h0, rows, row_mask, cols, col_mask,
            cols2, col_mask2, C, HID, HIDDEN_KEPT, BLOCK_M, BLOCK_C2, BLOCK_H, dtype, DOT_FP32,
            INPUT_PRECISION, INTERPRETED)
        if GRN:  # through GRN: grad_act * scale + gelu(h) * coef, per sample and channel
            grad_act = grad_act * per_sample(grn_scale_ptr, rows, row_mask, offs_h, h_mask, HID,
                                              rows_per_sample) \
                + gelu(pre) * per_sample(grn_coef_ptr, rows, row_mask, offs_h, h_mask, HID,
                                          rows_per_sample)
        grad_hidden = cast_for_store(grad_act * gelu_grad(pre), dtype, INTERPRETED)
        tl.store(grad_hidden_ptr + rows[:, None] * HID + offs_h[None, :], grad_hidden,
                 mask=row_mask[:, None] & h_mask[None, :])
        acc = mma(grad_hidden, w1, acc, DOT_FP32, INPUT_PRECISION)
        if BLOCK_C2:
            acc2 = mma(grad_hidden, w1_2, acc2, DOT_FP32, INPUT_PRECISION)
    # grad_y, rounded to the activations' dtype as eager stores it; with LAYER_NORM a scratch
    # copy in the output rows, read back below in the loads' layout (the accumulators' layout
    # held beside the LayerNorm's tiles needs more than 255 registers a thread at C = 192).
    tl.store(grad_x_ptr + rows[:, None] * C + cols[None, :],
             cast_for_store(acc, dtype, INTERPRETED), mask=row_mask[:, None] & col_mask[None, :])
    if BLOCK_C2:
        tl.store(grad_x_ptr + rows[:, None] * C + cols2[None, :],
                 cast_for_store(acc2, dtype, INTERPRETED),
                 mask=row_mask[:, None] & col_mask2[None, :])
    if LAYER_NORM:  # the MLP's input gradient through the LayerNorm that made x
        tl.debug_barrier()  # (the program's grad_y rows stored by all its threads)
        mean = tl.load(ln_mean_ptr + rows, mask=row_mask, other=0.0)
        rstd = tl.load(ln_rstd_ptr + rows, mask=row_mask, other=0.0)
        sum_gxhat, sum_gxhat_xhat = _layer_norm_row_sums(
            grad_x_ptr, ln_in_ptr, ln_w_ptr, rows, row_mask, cols, col_mask, C, mean, rstd)
        if BLOCK_C2:
            sums2 = _layer_norm_row_sums(grad_x_ptr, ln_in_ptr, ln_w_ptr, rows, row_mask, cols2,
                                         col_mask2, C, mean, rstd)
            sum_gxhat += sums2[0]
            sum_gxhat_xhat += sums2[1]
        mean_gxhat = sum_gxhat / C
        mean_gxhat_xhat = sum_gxhat_xhat / C
        split = tl.program_id(0).to(tl.int64)
        _layer_norm_piece_out(grad_x_ptr, ln_in_ptr, ln_w_ptr, ln_w_grad_ptr, ln_b_grad_ptr,
                              ln_grad_stride, split, rows, row_mask, cols, col_mask, C, mean,
                              rstd, mean_gxhat, mean_gxhat_xhat, INTERPRETED)
        if BLOCK_C2:
            _layer_norm_piece_out(grad_x_ptr, ln_in_ptr, ln_w_ptr, ln_w_grad_ptr, ln_b_grad_ptr,
                                  ln_grad_stride, split, rows, row_mask, cols2, col_mask2, C,
                                  mean, rstd, mean_gxhat, mean_gxhat_xhat, INTERPRETED)


@triton.jit
def _layer_norm_piece(grad_ptr, ln_in_ptr, ln_w_ptr, rows, row_mask, cols, col_mask, C, mean,
                      rstd):
    """For one piece of C: (grad_y, xhat of the LayerNorm's input, grad_y * ln_w), fp32, 0 where
    masked."""
    grad_y = tile(grad_ptr, rows, row_mask, cols, col_mask, C).to(tl.float32)
    ln_in = tile(ln_in_ptr, rows, row_mask, cols, col_mask, C).to(tl.float32)
    xhat = tl.where(row_mask[:, None] & col_mask[None, :],
                    (ln_in - mean[:, None]) * rstd[:, None], 0.0)
    w = tl.load(ln_w_ptr + cols, mask=col_mask, other=0.0).to(tl.float32)
    return grad_y, xhat, grad_y * w[None, :]


@triton.jit
def _layer_norm_row_sums(grad_ptr, ln_in_ptr, ln_w_ptr, rows, row_mask, cols, col_mask, C, mean,
                         rstd):
    """For one piece of C: the row sums of grad_xhat = grad_y * ln_w and of grad_xhat * xhat."""
    _, xhat, grad_xhat = _layer_norm_piece(grad_ptr, ln_in_ptr, ln_w_ptr, rows, row_mask, cols,
                                           col_mask, C, mean, rstd)
    return tl.sum(grad_xhat, axis=1), tl.sum(grad_xhat * xhat, axis=1)


@triton.jit
def _layer_norm_piece_out(grad_ptr, ln_in_ptr, ln_w_ptr, ln_w_grad_ptr, ln_b_grad_ptr,
                          ln_grad_stride, split, rows, row_mask, cols, col_mask, C, mean, rstd,
                          mean_gxhat, mean_gxhat_xhat, INTERPRETED: tl.constexpr):
    """For one piece of C: the LayerNorm's input gradient in place of grad_y, and this program's
    partial sums of the LayerNorm weight's (grad_y * xhat) and bias's (grad_y) gradients over
    its rows."""
    grad_y, xhat, grad_xhat = _layer_norm_piece(grad_ptr, ln_in_ptr, ln_w_ptr, rows, row_mask,
                                                cols, col_mask, C, mean, rstd)
    grad_in = rstd[:, None] * (grad_xhat - mean_gxhat[:, None] - xhat * mean_gxhat_xhat[:, None])
    tl.debug_barrier()  # (every thread's grad_y of the piece loaded before any is overwritten)
    tl.store(grad_ptr + rows[:, None] * C + cols[None, :],
             cast_for_store(grad_in, grad_ptr.dtype.element_ty, INTERPRETED),
             mask=row_mask[:, None] & col_mask[None, :])
    tl.store(ln_w_grad_ptr + split * ln_grad_stride + cols, tl.sum(grad_y * xhat, axis=0),
             mask=col_mask)
    tl.store(ln_b_grad_ptr + split * ln_grad_stride + cols, tl.sum(grad_y, axis=0),
             mask=col_mask)


@triton.jit
def _grn_sums_kernel(g_ptr, x_ptr, w1_ptr, b1_ptr, w2_ptr, gamma_ptr, drop_scale_ptr, dot_ptr,
                     sum_ptr, M, C, HID, rows_per_sample, slots, HAS_GAMMA: tl.constexpr,
                     HAS_DROP_SCALE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr,
                     BLOCK_C2: tl.constexpr, BLOCK_H: tl.constexpr, DOT_FP32: tl.constexpr,
                     INPUT_PRECISION: tl.constexpr, INTERPRETED: tl.constexpr):
    # The grad-hidden kernel's chunks with GRN's per-sample sums in place of gH (C in one or two
    # pieces: the second piece's tiles carry a "2").
    dtype: tl.constexpr = x_ptr.dtype.element_ty
    tile_index = tl.program_id(0)
    rows = (tile_index * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)
    row_mask = rows < M
    first_row = tile_index * BLOCK_M
    last_row = tl.minimum(first_row + BLOCK_M, M) - 1
    cols = tl.arange(0, BLOCK_C)
    col_mask = cols < C
    g, x = _row_tiles(g_ptr, x_ptr, rows, row_mask, cols, col_mask, C, gamma_ptr,
                      drop_scale_ptr, rows_per_sample, False, HAS_GAMMA, HAS_DROP_SCALE, dtype,
                      INTERPRETED)
    if BLOCK_C2:
        cols2 = BLOCK_C + tl.arange(0, BLOCK_C2)
        col_mask2 = cols2 < C
        g2, x2 = _row_tiles(g_ptr, x_ptr, rows, row_mask, cols2, col_mask2, C, gamma_ptr,
                            drop_scale_ptr, rows_per_sample, False, HAS_GAMMA, HAS_DROP_SCALE,
                            dtype, INTERPRETED)
    else:  # (one piece: the second's names stand for the first, unused)
        cols2, col_mask2, g2, x2 = cols, col_mask, g, x
    for h0 in range(0, HID, BLOCK_H):
        offs_h, h_mask, _, _, pre, grad_act = _hidden_chunk(
            x, g, x2, g2, w1_ptr, b1_ptr, w2_ptr, x_ptr, h0, rows, row_mask, cols, col_mask,
            cols2, col_mask2, C, HID, False, BLOCK_M, BLOCK_C2, BLOCK_H, dtype, DOT_FP32,
            INPUT_PRECISION, INTERPRETED)
        store_per_sample_sums(dot_ptr, grad_act * gelu(pre), rows, row_mask, offs_h, h_mask, HID,
                              rows_per_sample, tile_index, slots, first_row, last_row)
        store_per_sample_sums(sum_ptr, grad_act, rows, row_mask, offs_h, h_mask, HID,
                              rows_per_sample, tile_index, slots, first_row, last_row)


@triton.jit
def _fc1_weight_grad(x_ptr, grad_hidden_ptr, fc1_w_grad_ptr, fc1_b_grad_ptr, split, first_row,
                     end_row, offs_h, h_mask, C, HID, fc1_w_stride, fc1_b_stride,
                     BLOCK_M: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_C: tl.constexpr,
                     BLOCK_C2: tl.constexpr, DOT_FP32: tl.constexpr,
                     INPUT_PRECISION: tl.constexpr, INTERPRETED: tl.constexpr):
    """fc1_w'[chunk] = gH^T @ x and fc1_b'[chunk] = gH's row sums over the split's rows."""
    cols = tl.arange(0, BLOCK_C)
    col_mask = cols < C
    acc = tl.zeros([BLOCK_H, BLOCK_C], dtype=tl.float32)
    if BLOCK_C2:
        cols2 = BLOCK_C + tl.arange(0, BLOCK_C2)
        col_mask2 = cols2 < C
        acc2 = tl.zeros([BLOCK_H, BLOCK_C2], dtype=tl.float32)
    bias_sum = tl.zeros([BLOCK_H], dtype=tl.float32)
    for m0 in range(first_row, end_row, BLOCK_M):
        rows = m0 + tl.arange(0, BLOCK_M)
        row_mask = rows < end_row
        grad_hidden = tile(grad_hidden_ptr, rows, row_mask, offs_h, h_mask, HID)
        acc = mma(tl.trans(grad_hidden), tile(x_ptr, rows, row_mask, cols, col_mask, C), acc,
                   DOT_FP32, INPUT_PRECISION)
        if BLOCK_C2:
            acc2 = mma(tl.trans(grad_hidden), tile(x_ptr, rows, row_mask, cols2, col_mask2, C),
                        acc2, DOT_FP32, INPUT_PRECISION)
        bias_sum += tl.sum(grad_hidden.to(tl.float32), axis=0)
    out = fc1_w_grad_ptr + split * fc1_w_stride + offs_h[:, None] * C
    tl.store(out + cols[None, :],
             cast_for_store(acc, fc1_w_grad_ptr.dtype.element_ty, INTERPRETED),
             mask=h_mask[:, None] & col_mask[None, :])
    if BLOCK_C2:
        tl.store(out + cols2[None, :],
                 cast_for_store(acc2, fc1_w_grad_ptr.dtype.element_ty, INTERPRETED),
                 mask=h_mask[:, None] & col_mask2[None, :])
    _store_sums(fc1_b_grad_ptr, split, fc1_b_stride, offs_h, h_mask, bias_sum, INTERPRETED)


@triton.jit
def _fc2_weight_grad(g_ptr, x_ptr, w1_ptr, b1_ptr, hidden_ptr, y2_ptr, gamma_ptr, drop_scale_ptr,
                     grn_scale_ptr, grn_bias_ptr, fc2_w_grad_ptr, fc2_b_grad_ptr, gamma_grad_ptr,
                     split, first_row, end_row, first_chunk, offs_h, h_mask, C, HID,
                     rows_per_sample, fc2_w_stride, fc2_b_stride, gamma_stride,
                     HIDDEN_KEPT: tl.constexpr, GRN: tl.constexpr, HAS_GAMMA: tl.constexpr,
                     HAS_DROP_SCALE: tl.constexpr,
                     GAMMA_GRAD: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_H: tl.constexpr,
                     BLOCK_C: tl.constexpr, BLOCK_C2: tl.constexpr, DOT_FP32: tl.constexpr,
                     INPUT_PRECISION: tl.constexpr, INTERPRETED: tl.constexpr):
    """fc2_w'[:, chunk] = g'^T @ gelu(h) (GRN: g'^T @ grn(gelu(h)), gelu(h) * scale + bias) over
    the split's rows; the first chunk also fc2_b' (g''s row sums) and layer scale's gradient
    (sum of g * ds * y2)."""
    dtype: tl.constexpr = x_ptr.dtype.element_ty
    cols = tl.arange(0, BLOCK_C)
    col_mask = cols < C
    w1 = as_operand(tile(w1_ptr, offs_h, h_mask, cols, col_mask, C), dtype, INTERPRETED)
    acc = tl.zeros([BLOCK_C, BLOCK_H], dtype=tl.float32)
    bias_sum = tl.zeros([BLOCK_C], dtype=tl.float32)
    gamma_dot = tl.zeros([BLOCK_C], dtype=tl.float32)
    if BLOCK_C2:
        cols2 = BLOCK_C + tl.arange(0, BLOCK_C2)
        col_mask2 = cols2 < C
        w1_2 = as_operand(tile(w1_ptr, offs_h, h_mask, cols2, col_mask2, C), dtype,
                          INTERPRETED)
        acc2 = tl.zeros([BLOCK_C2, BLOCK_H], dtype=tl.float32)
        bias_sum2 = tl.zeros([BLOCK_C2], dtype=tl.float32)
        gamma_dot2 = tl.zeros([BLOCK_C2], dtype=tl.float32)
    b1 = tl.load(b1_ptr + offs_h, mask=h_mask, other=0.0).to(tl.float32)
    if GRN:
        grn_bias = tl.load(grn_bias_ptr + offs_h, mask=h_mask, other=0.0).to(tl.float32)
    for m0 in range(first_row, end_row, BLOCK_M):
        rows = m0 + tl.arange(0, BLOCK_M)
        row_mask = rows < end_row
        g, g_ds = _output_grad(g_ptr, rows, row_mask, cols, col_mask, C, gamma_ptr,
                               drop_scale_ptr, rows_per_sample, HAS_GAMMA, HAS_DROP_SCALE, dtype,
                               INTERPRETED)
        bias_sum += tl.sum(g.to(tl.float32), axis=0)
        if GAMMA_GRAD:
            gamma_dot += tl.sum(g_ds * tile(y2_ptr, rows, row_mask & first_chunk, cols,
                                             col_mask, C).to(tl.float32), axis=0)
        pre = tl.zeros([BLOCK_M, BLOCK_H], dtype=tl.float32)
        if not HIDDEN_KEPT:
            pre = mma(tile(x_ptr, rows, row_mask, cols, col_mask, C), tl.trans(w1), pre,
                       DOT_FP32, INPUT_PRECISION)
        if BLOCK_C2:
            g2, g_ds2 = _output_grad(g_ptr, rows, row_mask, cols2, col_mask2, C, gamma_ptr,
                                     drop_scale_ptr, rows_per_sample, HAS_GAMMA, HAS_DROP_SCALE,
                                     dtype, INTERPRETED)
            bias_sum2 += tl.sum(g2.to(tl.float32), axis=0)
            if GAMMA_GRAD:
                gamma_dot2 += tl.sum(g_ds2 * tile(y2_ptr, rows, row_mask & first_chunk, cols2,
                                                   col_mask2, C).to(tl.float32), axis=0)
            if not HIDDEN_KEPT:
                pre = mma(tile(x_ptr, rows, row_mask, cols2, col_mask2, C), tl.trans(w1_2),
                           pre, DOT_FP32, INPUT_PRECISION)
        if HIDDEN_KEPT:
            pre = tile(hidden_ptr, rows, row_mask, offs_h, h_mask, HID).to(tl.float32)
        else:  # h as eager stores it
            pre = cast_for_store(pre + b1[None, :], dtype, INTERPRETED).to(tl.float32)
        # (rows past the end: g' is 0 there, so gelu(b1) adds nothing)
        act = cast_for_store(gelu(pre), dtype, INTERPRETED)
        if GRN:  # of GELU's output as stored, as eager's GRN takes it
            act = cast_for_store(act.to(tl.float32) * per_sample(
                grn_scale_ptr, rows, row_mask, offs_h, h_mask, HID, rows_per_sample)
                + grn_bias[None, :], dtype, INTERPRETED)
        acc = mma(tl.trans(g), act, acc, DOT_FP32, INPUT_PRECISION)
        if BLOCK_C2:
            acc2 = mma(tl.trans(g2), act, acc2, DOT_FP32, INPUT_PRECISION)
    out = fc2_w_grad_ptr + split * fc2_w_stride + offs_h[None, :]
    tl.store(out + cols[:, None] * HID,
             cast_for_store(acc, fc2_w_grad_ptr.dtype.element_ty, INTERPRETED),
             mask=col_mask[:, None] & h_mask[None, :])
    _store_sums(fc2_b_grad_ptr, split, fc2_b_stride, cols, col_mask & first_chunk, bias_sum,
                INTERPRETED)
    if GAMMA_GRAD:
        _store_sums(gamma_grad_ptr, split, gamma_stride, cols, col_mask & first_chunk,
                    gamma_dot, INTERPRETED)
    if BLOCK_C2:
        tl.store(out + cols2[:, None] * HID,
                 cast_for_store(acc2, fc2_w_grad_ptr.dtype.element_ty, INTERPRETED),
                 mask=col_mask2[:, None] & h_mask[None, :])
        _store_sums(fc2_b_grad_ptr, split, fc2_b_stride, cols2, col_mask2 & first_chunk,
                    bias_sum2, INTERPRETED)
        if GAMMA_GRAD:
            _store_sums(gamma_grad_ptr, split, gamma_stride, cols2, col_mask2 & first_chunk,
                        gamma_dot2, INTERPRETED)


@triton.jit
def _weight_grad_kernel(g_ptr, x_ptr, w1_ptr, b1_ptr, hidden_ptr, grad_hidden_ptr, y2_ptr,
                        gamma_ptr, drop_scale_ptr, grn_scale_ptr, grn_bias_ptr, fc1_w_grad_ptr,
                        fc1_b_grad_ptr, fc2_w_grad_ptr, fc2_b_grad_ptr, gamma_grad_ptr, M, C, HID,
                        rows_per_sample, rows_per_split, fc1_w_stride, fc1_b_stride,
                        fc2_w_stride, fc2_b_stride, gamma_stride, HIDDEN_KEPT: tl.constexpr,
                        GRN: tl.constexpr, HAS_GAMMA: tl.constexpr,
                        HAS_DROP_SCALE: tl.constexpr, GAMMA_GRAD: tl.constexpr,
                        BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_C2: tl.constexpr,
                        BLOCK_H: tl.constexpr, DOT_FP32: tl.constexpr,
                        INPUT_PRECISION: tl.constexpr, INTERPRETED: tl.constexpr):
    # Programs 0 .. chunks-1 of a split make fc1's gradients, chunks .. 2*chunks-1 fc2's: one
    # accumulator each (per piece of C); a split's programs are adjacent, so its rows of x are
    # read from L2.
    chunks = tl.cdiv(HID, BLOCK_H)
    pid = tl.program_id(0)
    chunk = pid % chunks
    split = tl.program_id(1).to(tl.int64)
    offs_h = chunk * BLOCK_H + tl.arange(0, BLOCK_H)
    h_mask = offs_h < HID
    first_row = split * rows_per_split
    end_row = tl.minimum(M, first_row + rows_per_split)
    if pid < chunks:
        _fc1_weight_grad(x_ptr, grad_hidden_ptr, fc1_w_grad_ptr, fc1_b_grad_ptr, split,
                         first_row, end_row, offs_h, h_mask, C, HID, fc1_w_stride, fc1_b_stride,
                         BLOCK_M, BLOCK_H, BLOCK_C, BLOCK_C2, DOT_FP32, INPUT_PRECISION,
                         INTERPRETED)
    else:
        _fc2_weight_grad(g_ptr, x_ptr, w1_ptr, b1_ptr, hidden_ptr, y2_ptr, gamma_ptr,
                         drop_scale_ptr, grn_scale_ptr, grn_bias_ptr, fc2_w_grad_ptr,
                         fc2_b_grad_ptr, gamma_grad_ptr, split, first_row, end_row, chunk == 0,
                         offs_h, h_mask, C, HID, rows_per_sample, fc2_w_stride, fc2_b_stride,
                         gamma_stride, HIDDEN_KEPT, GRN, HAS_GAMMA, HAS_DROP_SCALE, GAMMA_GRAD,
                         BLOCK_M, BLOCK_H, BLOCK_C, BLOCK_C2, DOT_FP32, INPUT_PRECISION,
                         INTERPRETED)


# Under autocast the weights are fp32 and converted to the activations' dtype in registers; with
# h recomputed from x that made the grad-hidden kernel spill above 128 channels (34-40 stores at
# C = 192, triton 3.8 and 3.6, at every tile and stage count tried), so there the forward keeps
# h (mlp.uses_fused_forward) and the kernel reads it.
CONVERTING_RECOMPUTE_MAX_CHANNELS = 128


def takes(C, grn, dtype, weight_dtype, hidden_kept):
    """Whether the MLP backward runs these kernels: C <= MAX_CHANNELS in fp16/bf16 (in IEEE fp32
    the products run on FMA units, where the fused forward's tiles spilled, so fp32 takes the
    GEMMs, but in the interpreter, which tests both paths); with GRN where the forward kept h,
    or where it did not and h is recomputed (recomputes_hidden: its backward statistics are
    then made from h recomputed, grn_sums_launch); with weights in another dtype than the
    activations (autocast) only up to CONVERTING_RECOMPUTE_MAX_CHANNELS where h is
    recomputed."""
    if C > MAX_CHANNELS or (dtype == torch.float32 and not INTERPRETED):
        return False
    if grn and not hidden_kept:  # GRN's backward sums recompute h too (grn_sums_launch)
        return recomputes_hidden(C, dtype, weight_dtype, hidden_kept=True)
    return hidden_kept or _recompute_fits(C, dtype, weight_dtype)


def _recompute_fits(C, dtype, weight_dtype):
    """Whether the grad-hidden kernel recomputing h fits on chip: with weights in the
    activations' dtype, or converted in registers up to CONVERTING_RECOMPUTE_MAX_CHANNELS."""
    return weight_dtype == dtype or C <= CONVERTING_RECOMPUTE_MAX_CHANNELS


# Recompute h from x or read a kept h: a row of h costs 8C bytes to read and 8C² FLOPs to
# recompute (x @ fc1_w^T, H = 4C), which pays where the kernels are bound by their bytes and C is
# below an H200's ridge point, 790 TFLOP/s over 4.3 TB/s = 184 FLOPs a byte. By the ledger's
# model (V2, bf16, batch 64) the two kernels take 0.207 ms reading h against 0.137 recomputing
# it at C = 96 (ConvNeXt-T stage 1) and 0.109 against 0.120 at C = 192; the V2 block, which
# keeps no h where it is recomputed (takes), 0.483 against 0.356 and 0.265 against 0.295.
RECOMPUTE_MAX_CHANNELS = 128


def recomputes_hidden(C, dtype, weight_dtype, hidden_kept):
    """Whether the kernels recompute h from x rather than read it: where the forward did not
    keep it, and where it did up to RECOMPUTE_MAX_CHANNELS (within what converting weights
    allow, CONVERTING_RECOMPUTE_MAX_CHANNELS)."""
    if not hidden_kept:
        return True
    return C <= RECOMPUTE_MAX_CHANNELS and _recompute_fits(C, dtype, weight_dtype)


def channel_pieces(C):
    """(BLOCK_C, BLOCK_C2): C as one power-of-two tile, or as two (the second 0 where there is
    one) where two pad less: 96 = 64 + 32 and 192 = 128 + 64 where one tile pads to 128 and 256,
    a third more tensor-core work. Tiles are at least 16 wide (a bf16 MMA's K step)."""
    whole = max(16, triton.next_power_of_2(C))
    first = max(16, whole // 2)
    if first >= C:
        return whole, 0
    second = max(16, triton.next_power_of_2(C - first))
    return (whole, 0) if first + second >= whole else (first, second)


def padded_channels(C):
    """C as the tensor cores run it (channel_pieces' tiles)."""
    return sum(channel_pieces(C))


def weight_grad_splits(M, H, device):
    """Row splits of the weight-gradient kernel: enough that its programs (two per hidden
    chunk) times its splits give each SM of `device` one, at most a reduction over M rows takes."""
    programs = 2 * triton.cdiv(H, _WEIGHT_GRAD_TILE[1])
    return max(1, min(reduction_splits(M), triton.cdiv(sm_count(device), programs)))


def _tile_flags(x, gamma, drop_scale, block_m, block_h):
    block_c, block_c2 = channel_pieces(x.shape[1])
    return dict(HAS_GAMMA=gamma is not None, HAS_DROP_SCALE=drop_scale is not None,
                BLOCK_M=block_m, BLOCK_C=block_c, BLOCK_C2=block_c2, BLOCK_H=block_h,
                DOT_FP32=dot_in_fp32(x.dtype), INPUT_PRECISION=input_precision(x.dtype),
                INTERPRETED=INTERPRETED)


def _flags(x, hidden, grn, gamma, drop_scale, block_m, block_h):
    return dict(HIDDEN_KEPT=hidden.numel() > 0, GRN=grn,
                **_tile_flags(x, gamma, drop_scale, block_m, block_h))


def _gemm_flops(products, M, H, C):
    """`products` [M, H, C] products (one per GEMM a kernel does), C padded as the tensor cores
    run it."""
    return products * 2 * M * H * padded_channels(C)


def _backward_flops(M, H, C, hidden):
    """A fused backward kernel's: three GEMMs where it recomputes h, two where it reads the kept
    `hidden`."""
    return _gemm_flops(2 if hidden.numel() else 3, M, H, C)


def grad_hidden_programs(M):
    """The grad-hidden kernel's programs, one per row tile: the split count of the LayerNorm
    parameter-gradient partials it writes (LayerNormBackward)."""
    return triton.cdiv(M, _GRAD_HIDDEN_TILE[0])


class LayerNormBackward(NamedTuple):
    """The LayerNorm that made the MLP's input x [M, C], for the grad-hidden kernel to take the
    input gradient through: its input [M, C] and fp32 mean and rstd [M], its weight [C], and
    its weight's and bias's gradient partials [grad_hidden_programs(M), C] fp32 (GradWorkspace
    views, every element written)."""
    ln_in: torch.Tensor
    weight: torch.Tensor
    mean: torch.Tensor
    rstd: torch.Tensor
    weight_grad: torch.Tensor
    bias_grad: torch.Tensor


def grad_hidden_launch(g, x, fc1_w, fc1_b, fc2_w, hidden, grad_hidden, grad_x, gamma, drop_scale,
                       rows_per_sample, grn_scale=None, grn_coef=None, layer_norm=None):
    """gH into grad_hidden [M, H] and grad_x [M, C]; `hidden` the kept pre-activation or empty;
    with GRN its backward's per-sample scale and coef [samples, H] fp32
    (grn.grn_coefficients_launch). With `layer_norm` (a LayerNormBackward) grad_x receives the
    gradient of the LayerNorm's input instead of x's, and the LayerNorm's parameter-gradient
    partials are written: the LayerNorm backward needs whole rows of x's gradient, which this
    kernel holds, so it costs no launch, and x's gradient is read back only by the program that
    wrote it, from cache, into the rows it then overwrites."""
    M, C = x.shape
    H = fc1_w.shape[0]
    unused = grad_x
    block_m, block_h = _GRAD_HIDDEN_TILE
    if layer_norm is not None:
        splits = {t.shape[0] for t in (layer_norm.weight_grad, layer_norm.bias_grad)}
        assert splits == {grad_hidden_programs(M)}, \
            f"LayerNorm gradient partials for {grad_hidden_programs(M)} programs, not {splits}"
        assert layer_norm.weight_grad.stride(0) == layer_norm.bias_grad.stride(0)
    ln = layer_norm if layer_norm is not None else (unused,) * 6
    flags = _flags(x, hidden, grn_scale is not None, gamma, drop_scale, block_m, block_h)
    flags["LAYER_NORM"] = layer_norm is not None
    return Launch(_grad_hidden_kernel, (grad_hidden_programs(M),),
                  (g, x, fc1_w, fc1_b, fc2_w, hidden if hidden.numel() else unused, grad_hidden,
                   grad_x, *(t if t is not None else unused for t in (gamma, drop_scale,
                                                                       grn_scale, grn_coef)),
                   *ln, ln[4].stride(0), M, C, H, rows_per_sample),
                  flags, num_warps=_NUM_WARPS, flops=_backward_flops(M, H, C, hidden))


def weight_grad_launch(g, x, fc1_w, fc1_b, hidden, grad_hidden, y2, gamma, drop_scale, grads,
                       rows_per_sample, grn_scale=None, grn_bias=None):
    """The MLP's weight gradients from gH (`hidden` the kept pre-activation or empty): `grads`
    maps fc1_w, fc1_b, fc2_w, fc2_b (and gamma, with y2 given) to the [splits, numel] rows a
    GradWorkspace gives, one split count for all. With GRN: its forward's per-sample scale
    [samples, H] fp32 and its bias [H]."""
    M, C = x.shape
    H = fc1_w.shape[0]
    gamma_grad = grads.get("gamma")
    splits = {t.shape[0] for t in grads.values()}
    assert len(splits) == 1, f"one split count for the MLP's weight gradients, not {splits}"
    splits = splits.pop()
    block_m, block_h = _WEIGHT_GRAD_TILE
    rows_per_split = triton.cdiv(triton.cdiv(M, splits), block_m) * block_m
    unused = grad_hidden
    flags = _flags(x, hidden, grn_scale is not None, gamma, drop_scale, *_WEIGHT_GRAD_TILE)
    flags["GAMMA_GRAD"] = gamma_grad is not None
    named = [grads[name] for name in ("fc1_w", "fc1_b", "fc2_w", "fc2_b")]
    gamma_out = gamma_grad if gamma_grad is not None else named[0]
    return Launch(_weight_grad_kernel, (2 * triton.cdiv(H, block_h), splits),
                  (g, x, fc1_w, fc1_b, hidden if hidden.numel() else unused, grad_hidden,
                   *(t if t is not None else unused for t in (y2 if gamma_grad is not None
                                                              else None, gamma, drop_scale,
                                                              grn_scale, grn_bias)),
                   *named, gamma_out, M, C, H, rows_per_sample, rows_per_split,
                   *(t.stride(0) for t in named), gamma_out.stride(0)),
                  flags, num_warps=_NUM_WARPS,
                  flops=_backward_flops(M, H, C, hidden))


def grn_sums_partials(M, H, rows_per_sample, device):
    """The two PerSamplePartials grn_sums_launch writes: [row tiles, slots, H] fp32 each, a row
    tile the grad-hidden kernel's."""
    return per_sample_partials(2, M, H, rows_per_sample, None, device,
                               rows_per_tile=_GRAD_HIDDEN_TILE[0])


def grn_sums_launch(g, x, fc1_w, fc1_b, fc2_w, gamma, drop_scale, rows_per_sample, grad_dot,
                    grad_sum):
    """GRN's backward per-sample sums of gA * gelu(h) and of gA into grad_dot and grad_sum
    (grn_sums_partials), with h and gA = g' @ fc2_w made on chip from x and g: where the
    forward kept no h, a pass over x and g in place of a GEMM reading h."""
    M, C = x.shape
    H = fc1_w.shape[0]
    block_m, block_h = _GRAD_HIDDEN_TILE
    assert {p.rows_per_tile for p in (grad_dot, grad_sum)} == {block_m}
    unused = x
    return Launch(_grn_sums_kernel, (grad_hidden_programs(M),),
                  (g, x, fc1_w, fc1_b, fc2_w, *(t if t is not None else unused
                                                for t in (gamma, drop_scale)),
                   grad_dot.data, grad_sum.data, M, C, H, rows_per_sample, grad_dot.slots),
                  _tile_flags(x, gamma, drop_scale, block_m, block_h), num_warps=_NUM_WARPS,
                  flops=_gemm_flops(2, M, H, C))
