"""The MLP backward in two kernels that keep the [M, H] hidden on chip but for one pass each way:
the grad-hidden kernel writes gH and the weight-gradient kernel reads it (V1, no GRN; the plan and
its arithmetic are in mlp.py's docstring). g' below is the output gradient times drop path's
per-sample scale and layer scale, rounded to the activations' dtype; h the pre-activation
x @ fc1_w^T + fc1_b, recomputed from x on chip or read where the forward kept it (HIDDEN_KEPT),
in either case rounded to the activations' dtype as eager stores it.

Grad-hidden kernel, a program per tile of BLOCK_M rows, looping over the hidden in BLOCK_H
chunks: h, gA = g' @ fc2_w[:, chunk] and gH = gA * gelu'(h) on chip, gH stored, and
grad_x += gH @ fc1_w[chunk] in an fp32 [BLOCK_M, C] accumulator stored at the end.

Weight-gradient kernel, two programs per (hidden chunk, row split), each with one fp32
accumulator, over the split's rows: one makes fc1_w'[chunk] = gH^T @ x and fc1_b' (gH's row
sums), the other h again (or reads it) and fc2_w'[:, chunk] = g'^T @ gelu(h), and in the first
chunk also fc2_b' (g''s row sums) and layer scale's gradient (sum of g * ds * y2). A split's
programs are adjacent in the grid, so its rows of x come from L2 after the first read. Each
split writes its rows of a grad_workspace.GradWorkspace (fp32 partials, or with one split the
gradients themselves in the parameters' dtype), every element it owns, so the workspace needs
no zero fill and finalize sums in a fixed order.

Each program holds one [64, C] fp32 accumulator with C padded to a power of two: channels up
to MAX_CHANNELS. The padding is real tensor-core work, and the launches count it in their FLOPs
(at C = 96, padded to 128, a third more; tiling C as 64 + 32 would save it).
"""
import torch
import triton
import triton.language as tl

from .common import INTERPRETED, Launch, cast_for_store, sm_count
from .grad_workspace import reduction_splits
from .matmul import as_operand, dot_in_fp32, gelu, gelu_grad, input_precision

# The widest C whose accumulator fits on chip: padded to 256, a [64, 256] fp32 tile is 64
# registers a thread at 8 warps.
MAX_CHANNELS = 192
# Tiles (rows, hidden chunk). The grad-hidden kernel's [64, C] tiles of g', x and grad_x stay
# for its whole loop, so its hidden chunk is narrow; the weight-gradient kernel's accumulators
# are [64, C], so its row steps are. Kernel report (sm_90, triton 3.8), C = 96 / 192:
# grad-hidden 172 / 255 registers, weight-gradient 174 / 238, no spills; with (64, 64) tiles the
# grad-hidden kernel spilled under autocast and a weight-gradient program holding both
# accumulators spilled 27-100 stores. Not yet tuned on a GPU.
_GRAD_HIDDEN_TILE = (64, 32)
_WEIGHT_GRAD_TILE = (32, 64)
_NUM_WARPS = 8


@triton.jit
def _mma(a, b, acc, DOT_FP32: tl.constexpr, INPUT_PRECISION: tl.constexpr):
    if DOT_FP32:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), acc)
    else:
        return tl.dot(a, b, acc, input_precision=INPUT_PRECISION)


@triton.jit
def _output_grad(g_ptr, offs, mask, rows, row_mask, drop_scale_ptr, rows_per_sample,
                 HAS_DROP_SCALE: tl.constexpr):
    """g * drop_scale[row's sample] in fp32 (layer scale's gradient takes it before gamma)."""
    g = tl.load(g_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    if HAS_DROP_SCALE:
        g = g * tl.load(drop_scale_ptr + rows // rows_per_sample, mask=row_mask,
                        other=0.0).to(tl.float32)[:, None]
    return g


@triton.jit
def _pre_activation(x, w1, b1, hidden_ptr, offs_hidden, mask_hidden, dtype: tl.constexpr,
                    HIDDEN_KEPT: tl.constexpr, DOT_FP32: tl.constexpr,
                    INPUT_PRECISION: tl.constexpr, INTERPRETED: tl.constexpr):
    """h for a [rows, chunk] tile in fp32, as stored in `dtype`: read, or x @ w1^T + b1 (w1 the
    chunk's [BLOCK_H, C] rows of fc1_w)."""
    if HIDDEN_KEPT:
        return tl.load(hidden_ptr + offs_hidden, mask=mask_hidden, other=0.0).to(tl.float32)
    else:
        pre = _mma(x, tl.trans(w1), tl.zeros([x.shape[0], w1.shape[0]], dtype=tl.float32),
                   DOT_FP32, INPUT_PRECISION) + b1[None, :]
        return cast_for_store(pre, dtype, INTERPRETED).to(tl.float32)


@triton.jit
def _grad_hidden_kernel(g_ptr, x_ptr, w1_ptr, b1_ptr, w2_ptr, hidden_ptr, grad_hidden_ptr,
                        grad_x_ptr, gamma_ptr, drop_scale_ptr, M, C, HID, rows_per_sample,
                        HIDDEN_KEPT: tl.constexpr, HAS_GAMMA: tl.constexpr,
                        HAS_DROP_SCALE: tl.constexpr, BLOCK_M: tl.constexpr,
                        BLOCK_C: tl.constexpr, BLOCK_H: tl.constexpr, DOT_FP32: tl.constexpr,
                        INPUT_PRECISION: tl.constexpr, INTERPRETED: tl.constexpr):
    dtype: tl.constexpr = grad_x_ptr.dtype.element_ty
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    row_mask = rows < M
    offs_c = tl.arange(0, BLOCK_C)
    c_mask = offs_c < C
    mask = row_mask[:, None] & c_mask[None, :]
    offs = rows.to(tl.int64)[:, None] * C + offs_c[None, :]
    g = _output_grad(g_ptr, offs, mask, rows, row_mask, drop_scale_ptr, rows_per_sample,
                     HAS_DROP_SCALE)
    if HAS_GAMMA:
        g = g * tl.load(gamma_ptr + offs_c, mask=c_mask, other=0.0).to(tl.float32)[None, :]
    g = cast_for_store(g, dtype, INTERPRETED)
    x = g  # (unused where the hidden is read)
    if not HIDDEN_KEPT:
        x = tl.load(x_ptr + offs, mask=mask, other=0.0)
    acc = tl.zeros([BLOCK_M, BLOCK_C], dtype=tl.float32)
    for h0 in range(0, HID, BLOCK_H):
        offs_h = h0 + tl.arange(0, BLOCK_H)
        h_mask = offs_h < HID
        w_mask = h_mask[:, None] & c_mask[None, :]
        # [BLOCK_H, C] tiles: fc1_w's chunk rows, and fc2_w's chunk columns transposed.
        w1 = as_operand(tl.load(w1_ptr + offs_h[:, None] * C + offs_c[None, :], mask=w_mask,
                                other=0.0), dtype, INTERPRETED)
        w2 = as_operand(tl.load(w2_ptr + offs_c[None, :] * HID + offs_h[:, None], mask=w_mask,
                                other=0.0), dtype, INTERPRETED)
        b1 = tl.load(b1_ptr + offs_h, mask=h_mask, other=0.0).to(tl.float32)
        hidden_mask = row_mask[:, None] & h_mask[None, :]
        hidden_offs = rows.to(tl.int64)[:, None] * HID + offs_h[None, :]
        pre = _pre_activation(x, w1, b1, hidden_ptr, hidden_offs, hidden_mask, dtype,
                              HIDDEN_KEPT, DOT_FP32, INPUT_PRECISION, INTERPRETED)
        grad_act = _mma(g, tl.trans(w2), tl.zeros([BLOCK_M, BLOCK_H], dtype=tl.float32),
                        DOT_FP32, INPUT_PRECISION)
        grad_hidden = cast_for_store(grad_act * gelu_grad(pre), dtype, INTERPRETED)
        tl.store(grad_hidden_ptr + hidden_offs, grad_hidden, mask=hidden_mask)
        acc = _mma(grad_hidden, w1, acc, DOT_FP32, INPUT_PRECISION)
    tl.store(grad_x_ptr + offs, cast_for_store(acc, dtype, INTERPRETED), mask=mask)


@triton.jit
def _fc1_weight_grad(x_ptr, grad_hidden_ptr, fc1_w_grad_ptr, fc1_b_grad_ptr, split, first_row,
                     end_row, offs_h, h_mask, offs_c, c_mask, C, HID, fc1_w_stride, fc1_b_stride,
                     BLOCK_M: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_C: tl.constexpr,
                     DOT_FP32: tl.constexpr, INPUT_PRECISION: tl.constexpr,
                     INTERPRETED: tl.constexpr):
    """fc1_w'[chunk] = gH^T @ x and fc1_b'[chunk] = gH's row sums over the split's rows."""
    acc = tl.zeros([BLOCK_H, BLOCK_C], dtype=tl.float32)
    bias_sum = tl.zeros([BLOCK_H], dtype=tl.float32)
    for m0 in range(first_row, end_row, BLOCK_M):
        rows = m0 + tl.arange(0, BLOCK_M)
        row_mask = rows < end_row
        x = tl.load(x_ptr + rows[:, None] * C + offs_c[None, :],
                    mask=row_mask[:, None] & c_mask[None, :], other=0.0)
        grad_hidden = tl.load(grad_hidden_ptr + rows[:, None] * HID + offs_h[None, :],
                              mask=row_mask[:, None] & h_mask[None, :], other=0.0)
        acc = _mma(tl.trans(grad_hidden), x, acc, DOT_FP32, INPUT_PRECISION)
        bias_sum += tl.sum(grad_hidden.to(tl.float32), axis=0)
    tl.store(fc1_w_grad_ptr + split * fc1_w_stride + offs_h[:, None] * C + offs_c[None, :],
             cast_for_store(acc, fc1_w_grad_ptr.dtype.element_ty, INTERPRETED),
             mask=h_mask[:, None] & c_mask[None, :])
    tl.store(fc1_b_grad_ptr + split * fc1_b_stride + offs_h,
             cast_for_store(bias_sum, fc1_b_grad_ptr.dtype.element_ty, INTERPRETED), mask=h_mask)


@triton.jit
def _fc2_weight_grad(g_ptr, x_ptr, w1_ptr, b1_ptr, hidden_ptr, y2_ptr, gamma_ptr, drop_scale_ptr,
                     fc2_w_grad_ptr, fc2_b_grad_ptr, gamma_grad_ptr, split, first_row, end_row,
                     first_chunk, offs_h, h_mask, offs_c, c_mask, C, HID, rows_per_sample,
                     fc2_w_stride, fc2_b_stride, gamma_stride, HIDDEN_KEPT: tl.constexpr,
                     HAS_GAMMA: tl.constexpr, HAS_DROP_SCALE: tl.constexpr,
                     GAMMA_GRAD: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_H: tl.constexpr,
                     BLOCK_C: tl.constexpr, DOT_FP32: tl.constexpr, INPUT_PRECISION: tl.constexpr,
                     INTERPRETED: tl.constexpr):
    """fc2_w'[:, chunk] = g'^T @ gelu(h) over the split's rows; the first chunk also fc2_b' (g''s
    row sums) and layer scale's gradient (sum of g * ds * y2)."""
    dtype: tl.constexpr = x_ptr.dtype.element_ty
    w1 = x_ptr  # (unused where the hidden is read)
    if not HIDDEN_KEPT:
        w1 = as_operand(tl.load(w1_ptr + offs_h[:, None] * C + offs_c[None, :],
                                mask=h_mask[:, None] & c_mask[None, :], other=0.0),
                        dtype, INTERPRETED)
    b1 = tl.load(b1_ptr + offs_h, mask=h_mask, other=0.0).to(tl.float32)
    if HAS_GAMMA:
        gamma = tl.load(gamma_ptr + offs_c, mask=c_mask, other=0.0).to(tl.float32)
    acc = tl.zeros([BLOCK_C, BLOCK_H], dtype=tl.float32)
    bias_sum = tl.zeros([BLOCK_C], dtype=tl.float32)
    gamma_dot = tl.zeros([BLOCK_C], dtype=tl.float32)
    for m0 in range(first_row, end_row, BLOCK_M):
        rows = m0 + tl.arange(0, BLOCK_M)
        row_mask = rows < end_row
        mask = row_mask[:, None] & c_mask[None, :]
        offs = rows[:, None] * C + offs_c[None, :]
        g = _output_grad(g_ptr, offs, mask, rows, row_mask, drop_scale_ptr, rows_per_sample,
                         HAS_DROP_SCALE)
        if GAMMA_GRAD:
            y2 = tl.load(y2_ptr + offs, mask=mask & first_chunk, other=0.0).to(tl.float32)
            gamma_dot += tl.sum(g * y2, axis=0)
        if HAS_GAMMA:
            g = g * gamma[None, :]
        g = cast_for_store(g, dtype, INTERPRETED)
        bias_sum += tl.sum(g.to(tl.float32), axis=0)
        x = x_ptr
        if not HIDDEN_KEPT:
            x = tl.load(x_ptr + offs, mask=mask, other=0.0)
        hidden_offs = rows[:, None] * HID + offs_h[None, :]
        hidden_mask = row_mask[:, None] & h_mask[None, :]
        pre = _pre_activation(x, w1, b1, hidden_ptr, hidden_offs, hidden_mask, dtype,
                              HIDDEN_KEPT, DOT_FP32, INPUT_PRECISION, INTERPRETED)
        # (rows past the end: g is 0 there, so gelu(b1) adds nothing)
        act = cast_for_store(gelu(pre), dtype, INTERPRETED)
        acc = _mma(tl.trans(g), act, acc, DOT_FP32, INPUT_PRECISION)
    tl.store(fc2_w_grad_ptr + split * fc2_w_stride + offs_c[:, None] * HID + offs_h[None, :],
             cast_for_store(acc, fc2_w_grad_ptr.dtype.element_ty, INTERPRETED),
             mask=c_mask[:, None] & h_mask[None, :])
    tl.store(fc2_b_grad_ptr + split * fc2_b_stride + offs_c,
             cast_for_store(bias_sum, fc2_b_grad_ptr.dtype.element_ty, INTERPRETED),
             mask=c_mask & first_chunk)
    if GAMMA_GRAD:
        tl.store(gamma_grad_ptr + split * gamma_stride + offs_c,
                 cast_for_store(gamma_dot, gamma_grad_ptr.dtype.element_ty, INTERPRETED),
                 mask=c_mask & first_chunk)


@triton.jit
def _weight_grad_kernel(g_ptr, x_ptr, w1_ptr, b1_ptr, hidden_ptr, grad_hidden_ptr, y2_ptr,
                        gamma_ptr, drop_scale_ptr, fc1_w_grad_ptr, fc1_b_grad_ptr, fc2_w_grad_ptr,
                        fc2_b_grad_ptr, gamma_grad_ptr, M, C, HID, rows_per_sample,
                        rows_per_split, fc1_w_stride, fc1_b_stride, fc2_w_stride, fc2_b_stride,
                        gamma_stride, HIDDEN_KEPT: tl.constexpr, HAS_GAMMA: tl.constexpr,
                        HAS_DROP_SCALE: tl.constexpr, GAMMA_GRAD: tl.constexpr,
                        BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_H: tl.constexpr,
                        DOT_FP32: tl.constexpr, INPUT_PRECISION: tl.constexpr,
                        INTERPRETED: tl.constexpr):
    # Programs 0 .. chunks-1 of a split make fc1's gradients, chunks .. 2*chunks-1 fc2's: one
    # accumulator each; a split's programs are adjacent, so its rows of x are read from L2.
    chunks = tl.cdiv(HID, BLOCK_H)
    pid = tl.program_id(0)
    chunk = pid % chunks
    split = tl.program_id(1).to(tl.int64)
    offs_h = chunk * BLOCK_H + tl.arange(0, BLOCK_H)
    h_mask = offs_h < HID
    offs_c = tl.arange(0, BLOCK_C)
    c_mask = offs_c < C
    first_row = split * rows_per_split
    end_row = tl.minimum(M, first_row + rows_per_split)
    if pid < chunks:
        _fc1_weight_grad(x_ptr, grad_hidden_ptr, fc1_w_grad_ptr, fc1_b_grad_ptr, split,
                         first_row, end_row, offs_h, h_mask, offs_c, c_mask, C, HID, fc1_w_stride,
                         fc1_b_stride, BLOCK_M, BLOCK_H, BLOCK_C, DOT_FP32, INPUT_PRECISION,
                         INTERPRETED)
    else:
        _fc2_weight_grad(g_ptr, x_ptr, w1_ptr, b1_ptr, hidden_ptr, y2_ptr, gamma_ptr,
                         drop_scale_ptr, fc2_w_grad_ptr, fc2_b_grad_ptr, gamma_grad_ptr, split,
                         first_row, end_row, chunk == 0, offs_h, h_mask, offs_c, c_mask, C, HID,
                         rows_per_sample, fc2_w_stride, fc2_b_stride, gamma_stride, HIDDEN_KEPT,
                         HAS_GAMMA, HAS_DROP_SCALE, GAMMA_GRAD, BLOCK_M, BLOCK_H, BLOCK_C,
                         DOT_FP32, INPUT_PRECISION, INTERPRETED)


def takes(C, grn, dtype):
    """Whether the MLP backward runs these kernels: V1 with C <= MAX_CHANNELS in fp16/bf16 (in
    IEEE fp32 the products run on FMA units, where the fused forward's tiles spilled, so fp32
    takes the GEMMs, but in the interpreter, which tests both paths)."""
    return C <= MAX_CHANNELS and not grn and (dtype != torch.float32 or INTERPRETED)


def _block_c(C):
    return max(16, triton.next_power_of_2(C))


def weight_grad_splits(M, H, device):
    """Row splits of the weight-gradient kernel: enough that its programs (two per hidden
    chunk) times its splits give each SM of `device` one, at most a reduction over M rows takes."""
    programs = 2 * triton.cdiv(H, _WEIGHT_GRAD_TILE[1])
    return max(1, min(reduction_splits(M), triton.cdiv(sm_count(device), programs)))


def _flags(x, hidden, gamma, drop_scale, block_m, block_h):
    return dict(HIDDEN_KEPT=hidden.numel() > 0, HAS_GAMMA=gamma is not None,
                HAS_DROP_SCALE=drop_scale is not None, BLOCK_M=block_m,
                BLOCK_C=_block_c(x.shape[1]), BLOCK_H=block_h, DOT_FP32=dot_in_fp32(x.dtype),
                INPUT_PRECISION=input_precision(x.dtype), INTERPRETED=INTERPRETED)


def _gemm_flops(M, H, C, hidden):
    """One [M, H, C] product per GEMM the kernel does (three, or two where h is read), C padded
    as the tensor cores run it."""
    return (2 if hidden.numel() else 3) * 2 * M * H * _block_c(C)


def grad_hidden_launch(g, x, fc1_w, fc1_b, fc2_w, hidden, grad_hidden, grad_x, gamma, drop_scale,
                       rows_per_sample):
    """gH into grad_hidden [M, H] and grad_x [M, C]; `hidden` the kept pre-activation or empty."""
    M, C = x.shape
    H = fc1_w.shape[0]
    unused = grad_x
    return Launch(_grad_hidden_kernel, (triton.cdiv(M, _GRAD_HIDDEN_TILE[0]),),
                  (g, x, fc1_w, fc1_b, fc2_w, hidden if hidden.numel() else unused, grad_hidden,
                   grad_x, *(t if t is not None else unused for t in (gamma, drop_scale)),
                   M, C, H, rows_per_sample),
                  _flags(x, hidden, gamma, drop_scale, *_GRAD_HIDDEN_TILE),
                  num_warps=_NUM_WARPS, flops=_gemm_flops(M, H, C, hidden))


def weight_grad_launch(g, x, fc1_w, fc1_b, hidden, grad_hidden, y2, gamma, drop_scale, grads,
                       rows_per_sample):
    """The MLP's weight gradients from gH (`hidden` the kept pre-activation or empty): `grads`
    maps fc1_w, fc1_b, fc2_w, fc2_b (and gamma, with y2 given) to the [splits, numel] rows a
    GradWorkspace gives, one split count for all."""
    M, C = x.shape
    H = fc1_w.shape[0]
    gamma_grad = grads.get("gamma")
    splits = {t.shape[0] for t in grads.values()}
    assert len(splits) == 1, f"one split count for the MLP's weight gradients, not {splits}"
    splits = splits.pop()
    block_m, block_h = _WEIGHT_GRAD_TILE
    rows_per_split = triton.cdiv(triton.cdiv(M, splits), block_m) * block_m
    unused = grad_hidden
    flags = _flags(x, hidden, gamma, drop_scale, *_WEIGHT_GRAD_TILE)
    flags["GAMMA_GRAD"] = gamma_grad is not None
    named = [grads[name] for name in ("fc1_w", "fc1_b", "fc2_w", "fc2_b")]
    gamma_out = gamma_grad if gamma_grad is not None else named[0]
    return Launch(_weight_grad_kernel, (2 * triton.cdiv(H, block_h), splits),
                  (g, x, fc1_w, fc1_b, hidden if hidden.numel() else unused, grad_hidden,
                   *(t if t is not None else unused for t in (y2 if gamma_grad is not None
                                                              else None, gamma, drop_scale)),
                   *named, gamma_out, M, C, H, rows_per_sample, rows_per_split,
                   *(t.stride(0) for t in named), gamma_out.stride(0)),
                  flags, num_warps=_NUM_WARPS,
                  flops=_gemm_flops(M, H, C, hidden))
