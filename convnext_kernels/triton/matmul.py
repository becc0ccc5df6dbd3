"""One tiled GEMM, out = A @ B, with the prologues and epilogues the ConvNeXt MLP needs, picked by
constexpr flags so that every pass of the MLP's forward and backward is one kernel with no
separate elementwise pass over the 4C-wide hidden tensor.

A is [M, K] and B is [K, N], both by strides (a transposed operand is a stride swap, no copy).
Operand prologues (fp32 math on the loaded tile, then rounded back to the dot dtype, as eager
rounds; cast_for_store because the interpreter would truncate):
  A_ROW_SCALE / A_COL_SCALE  A[m, k] * row_scale[m // a_row_div] * col_scale[k // a_col_div]
                             (the output gradient times drop-path scale and layer scale)
  A_GELU                     gelu(A[m, k]) (fc2 reading the kept pre-activation: the training
                             forward stores h alone, not h and gelu(h))
  A_GRN                      A[m, k] * grn_scale[m // rows_per_sample, k] + grn_bias[k]
                             (GRN before fc2; after A_GELU, on its output rounded, as eager
                             stores it)
  B_GELU, B_GRN              gelu(B[k, n]) [rounded, * grn_scale[k // rows_per_sample, n]
                             + grn_bias[n]]
Epilogues, in order:
  HAS_BIAS                   + bias[n]
  EPILOGUE == GELU           out = gelu(acc); STORE_PRE also writes acc (the pre-activation),
                             and GELU then takes it as stored (rounded), as eager does
  EPILOGUE == GELU_GRAD      out = acc * gelu'(aux[m, n])
  EPILOGUE == GRN_GRAD       out = acc; per (sample, n): sums of acc * gelu(aux), sums2 of acc
  SUMSQ                      per (sample, n): sums of out^2 (GRN's statistics, from fc1)
  STORE_Y2                   y2 = acc before the scales (layer scale's gradient needs it)
  OUT_COL_SCALE, OUT_ROW_SCALE, RESIDUAL:  out = residual + row_scale[m // rps] * col[n] * acc
  STORE_OUT                  stores out (without it a GEMM makes only its per-sample sums or the
                             pre-activation: GRN's statistics over a kept h, the backward's
                             sums of GRN before its fused grad-hidden kernel)
PARTIALS (split-K): program_id(1) owns a K range and writes partials out[split, m*N + n]
(rows of a grad_workspace.GradWorkspace, summed afterwards in a fixed order: deterministic weight
gradients; fp32, or with one split the gradient itself in its parameter's dtype). ROW_SUM writes
the row sums of the transformed A over the program's K range to row_sum[split, m] (the bias
gradients); ROW_DOT writes row_dot[split, m] = the sum over the K range of A[m, k] *
dot_with[m, k], A column-scaled and not row-scaled (dot_with laid out as A: layer scale's
gradient, sum of g * ds * y2, from the GEMM that reads g for fc2's weight gradient; only the
first column tile's programs load dot_with). Every split writes its whole row, empty K range
or not.
Per-sample sums are stored, not added atomically: each row tile stores, per sample among its
rows, that sample's column sums over its rows in a slot of a [row tiles, slots, N] fp32 buffer
(per_sample_partials); sample_sums adds a sample's tiles in a fixed order. No zero fill, and
the same sums in every run.
"""
from dataclasses import dataclass
from typing import Optional

import torch
import triton
import triton.language as tl

from .common import INTERPRETED, Launch, cast_for_store, sm_count

# The epilogue kinds (the EPILOGUE constexpr). Module-level tl.constexpr so that the kernel
# compares against the names, not numbers.
PLAIN = tl.constexpr(0)
GELU = tl.constexpr(1)
GELU_GRAD = tl.constexpr(2)
GRN_GRAD = tl.constexpr(3)


@triton.jit
def gelu(x):
    return 0.5 * x * (1.0 + tl.math.erf(x * 0.7071067811865476))


@triton.jit
def gelu_grad(x):
    cdf = 0.5 * (1.0 + tl.math.erf(x * 0.7071067811865476))
    return cdf + x * tl.exp(-0.5 * x * x) * 0.3989422804014327


@triton.jit
def as_operand(w, dtype: tl.constexpr, INTERPRETED: tl.constexpr):
    """A weight tile in the dot's dtype: fp32 weights under autocast are rounded here, in
    registers, as autocast's cast would round them (no cast launch)."""
    if w.dtype != dtype:
        return cast_for_store(w.to(tl.float32), dtype, INTERPRETED)
    else:
        return w


@triton.jit
def store_per_sample_sums(partial_ptr, values, rows, row_mask, cols, col_mask, N,
                          rows_per_sample, tile, slots, first_row, last_row):
    """Slot s of row tile `tile` [slots, N] = the column sums of values over the tile's rows of
    sample first_row // rows_per_sample + s, for every sample among the tile's rows."""
    first_sample = first_row // rows_per_sample
    tile_base = tl.cast(tile, tl.int64) * slots
    for sample in range(first_sample, last_row // rows_per_sample + 1):
        in_sample = ((rows // rows_per_sample) == sample) & row_mask
        part = tl.sum(tl.where(in_sample[:, None], values, 0.0), axis=0)
        tl.store(partial_ptr + (tile_base + sample - first_sample) * N + cols, part,
                 mask=col_mask)


@triton.jit
def sample_sums(partial_ptr, sample, cols, col_mask, N, rows_per_sample, rows_per_tile, slots):
    """Sample `sample`'s column sums at `cols` from store_per_sample_sums' partials: the tiles
    holding its rows, added in tile order."""
    total = tl.zeros(cols.shape, dtype=tl.float32)
    first_tile = (sample * rows_per_sample) // rows_per_tile
    last_tile = ((sample + 1) * rows_per_sample - 1) // rows_per_tile
    for tile in range(first_tile, last_tile + 1):
        slot = sample - (tile * rows_per_tile) // rows_per_sample
        total += tl.load(partial_ptr + (tl.cast(tile, tl.int64) * slots + slot) * N + cols,
                         mask=col_mask, other=0.0)
    return total


@triton.jit
def output_epilogue(acc, rows, row_mask, cols, col_mask, N, out_ptr, y2_ptr, col_scale_ptr,
                    row_scale_ptr, residual_ptr, rows_per_sample,
                    STORE_Y2: tl.constexpr, OUT_COL_SCALE: tl.constexpr,
                    OUT_ROW_SCALE: tl.constexpr, RESIDUAL: tl.constexpr,
                    INTERPRETED: tl.constexpr):
    """residual + row_scale * col_scale * acc, stored in out's dtype (and acc as y2)."""
    mask = row_mask[:, None] & col_mask[None, :]
    offs = rows.to(tl.int64)[:, None] * N + cols[None, :]
    if STORE_Y2:
        tl.store(y2_ptr + offs, cast_for_store(acc, y2_ptr.dtype.element_ty, INTERPRETED),
                 mask=mask)
    if OUT_COL_SCALE:
        acc = acc * tl.load(col_scale_ptr + cols, mask=col_mask, other=0.0).to(tl.float32)[None, :]
    if OUT_ROW_SCALE:
        acc = acc * tl.load(row_scale_ptr + rows // rows_per_sample, mask=row_mask,
                            other=0.0).to(tl.float32)[:, None]
    if RESIDUAL:
        acc += tl.load(residual_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    tl.store(out_ptr + offs, cast_for_store(acc, out_ptr.dtype.element_ty, INTERPRETED),
             mask=mask)


@triton.jit
def _matmul_kernel(
        a_ptr, b_ptr, out_ptr, M, N, K, stride_am, stride_ak, stride_bk, stride_bn,
        a_row_scale_ptr, a_col_scale_ptr, a_row_div, a_col_div,
        grn_scale_ptr, grn_bias_ptr, rows_per_sample,
        bias_ptr, pre_ptr, aux_ptr, y2_ptr, sums_ptr, sums2_ptr, sum_slots,
        out_col_scale_ptr, out_row_scale_ptr, residual_ptr, row_sum_ptr, dot_with_ptr,
        row_dot_ptr, k_per_split, split_stride, row_sum_split_stride, row_dot_split_stride,
        A_ROW_SCALE: tl.constexpr, A_COL_SCALE: tl.constexpr, A_GELU: tl.constexpr,
        A_GRN: tl.constexpr, B_GELU: tl.constexpr, B_GRN: tl.constexpr, HAS_BIAS: tl.constexpr,
        EPILOGUE: tl.constexpr, STORE_PRE: tl.constexpr, SUMSQ: tl.constexpr,
        STORE_Y2: tl.constexpr, OUT_COL_SCALE: tl.constexpr, OUT_ROW_SCALE: tl.constexpr,
        RESIDUAL: tl.constexpr, STORE_OUT: tl.constexpr, PARTIALS: tl.constexpr,
        ROW_SUM: tl.constexpr, ROW_DOT: tl.constexpr, BLOCK_M: tl.constexpr,
        BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
        GROUP_M: tl.constexpr, DOT_FP32: tl.constexpr, INPUT_PRECISION: tl.constexpr,
        INTERPRETED: tl.constexpr):
    # Grouped tile order: GROUP_M row tiles share their B column tiles in L2.
    pid = tl.program_id(0)
    tiles_m = tl.cdiv(M, BLOCK_M)
    tiles_n = tl.cdiv(N, BLOCK_N)
    group = pid // (GROUP_M * tiles_n)
    first_m = group * GROUP_M
    group_size = tl.minimum(tiles_m - first_m, GROUP_M)
    pid_m = first_m + (pid % (GROUP_M * tiles_n)) % group_size
    pid_n = (pid % (GROUP_M * tiles_n)) // group_size
    split = tl.program_id(1)

    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    row_mask = rows < M
    col_mask = cols < N
    b_cols = b_ptr + cols.to(tl.int64)[None, :] * stride_bn
    if A_ROW_SCALE:
        a_row_scale = tl.load(a_row_scale_ptr + rows // a_row_div, mask=row_mask,
                              other=0.0).to(tl.float32)
    if A_GRN:
        a_samples = rows // rows_per_sample
    if B_GRN:
        grn_bias = tl.load(grn_bias_ptr + cols, mask=col_mask, other=0.0).to(tl.float32)

    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    row_sum = tl.zeros([BLOCK_M], dtype=tl.float32)
    row_dot = tl.zeros([BLOCK_M], dtype=tl.float32)
    k_start = split * k_per_split
    k_end = tl.minimum(K, k_start + k_per_split)
    for k0 in range(k_start, k_end, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        k_mask = ks < k_end
        a_mask = row_mask[:, None] & k_mask[None, :]
        b_mask = k_mask[:, None] & col_mask[None, :]
        a_offs = rows.to(tl.int64)[:, None] * stride_am + ks.to(tl.int64)[None, :] * stride_ak
        a = tl.load(a_ptr + a_offs, mask=a_mask, other=0.0)
        b = tl.load(b_cols + ks.to(tl.int64)[:, None] * stride_bk, mask=b_mask, other=0.0)
        if A_ROW_SCALE or A_COL_SCALE or A_GELU or A_GRN or ROW_SUM or ROW_DOT:
            a32 = a.to(tl.float32)
            if A_GELU:  # (masked elements load 0: gelu(0) = 0)
                a32 = gelu(a32)
                if A_GRN:  # GRN takes GELU's output as eager stores it
                    a32 = cast_for_store(a32, a_ptr.dtype.element_ty, INTERPRETED).to(tl.float32)
            if A_COL_SCALE:
                a32 = a32 * tl.load(a_col_scale_ptr + ks // a_col_div, mask=k_mask,
                                    other=0.0).to(tl.float32)[None, :]
            if ROW_DOT:
                dot_with = tl.load(dot_with_ptr + a_offs, mask=a_mask & (pid_n == 0), other=0.0)
                row_dot += tl.sum(a32 * dot_with.to(tl.float32), axis=1)
            if A_ROW_SCALE:
                a32 = a32 * a_row_scale[:, None]
            if A_GRN:
                a32 = a32 * tl.load(grn_scale_ptr + a_samples[:, None] * K + ks[None, :],
                                    mask=a_mask, other=0.0) \
                    + tl.load(grn_bias_ptr + ks, mask=k_mask, other=0.0).to(tl.float32)[None, :]
                a32 = tl.where(a_mask, a32, 0.0)
            a = cast_for_store(a32, a_ptr.dtype.element_ty, INTERPRETED)
            if ROW_SUM:
                row_sum += tl.sum(a.to(tl.float32), axis=1)
        if B_GELU or B_GRN:
            b32 = b.to(tl.float32)
            if B_GELU:
                b32 = gelu(b32)
                if B_GRN:
                    b32 = cast_for_store(b32, b_ptr.dtype.element_ty, INTERPRETED).to(tl.float32)
            if B_GRN:
                b_samples = ks // rows_per_sample
                b32 = b32 * tl.load(grn_scale_ptr + b_samples[:, None] * N + cols[None, :],
                                    mask=b_mask, other=0.0) + grn_bias[None, :]
                b32 = tl.where(b_mask, b32, 0.0)
            b = cast_for_store(b32, b_ptr.dtype.element_ty, INTERPRETED)
        b = as_operand(b, a_ptr.dtype.element_ty, INTERPRETED)
        if DOT_FP32:
            acc = tl.dot(a.to(tl.float32), b.to(tl.float32), acc)
        else:
            acc = tl.dot(a, b, acc, input_precision=INPUT_PRECISION)

    if PARTIALS:
        if ROW_SUM:
            tl.store(row_sum_ptr + split.to(tl.int64) * row_sum_split_stride + rows,
                     cast_for_store(row_sum, row_sum_ptr.dtype.element_ty, INTERPRETED),
                     mask=row_mask & (pid_n == 0))
        if ROW_DOT:
            tl.store(row_dot_ptr + split.to(tl.int64) * row_dot_split_stride + rows,
                     cast_for_store(row_dot, row_dot_ptr.dtype.element_ty, INTERPRETED),
                     mask=row_mask & (pid_n == 0))
        offs = split.to(tl.int64) * split_stride + rows.to(tl.int64)[:, None] * N + cols[None, :]
        tl.store(out_ptr + offs, cast_for_store(acc, out_ptr.dtype.element_ty, INTERPRETED),
                 mask=row_mask[:, None] & col_mask[None, :])
    else:
        if HAS_BIAS:
            acc += tl.load(bias_ptr + cols, mask=col_mask, other=0.0).to(tl.float32)[None, :]
        mask = row_mask[:, None] & col_mask[None, :]
        offs = rows.to(tl.int64)[:, None] * N + cols[None, :]
        first_row = pid_m * BLOCK_M
        last_row = tl.minimum(first_row + BLOCK_M, M) - 1
        if EPILOGUE == GELU:
            if STORE_PRE:
                pre = cast_for_store(acc, pre_ptr.dtype.element_ty, INTERPRETED)
                tl.store(pre_ptr + offs, pre, mask=mask)
                acc = pre.to(tl.float32)
            acc = gelu(acc)
        elif EPILOGUE == GELU_GRAD:
            acc = acc * gelu_grad(tl.load(aux_ptr + offs, mask=mask, other=0.0).to(tl.float32))
        elif EPILOGUE == GRN_GRAD:
            hidden = gelu(tl.load(aux_ptr + offs, mask=mask, other=0.0).to(tl.float32))
            store_per_sample_sums(sums_ptr, acc * hidden, rows, row_mask, cols, col_mask, N,
                                  rows_per_sample, pid_m, sum_slots, first_row, last_row)
            store_per_sample_sums(sums2_ptr, acc, rows, row_mask, cols, col_mask, N,
                                  rows_per_sample, pid_m, sum_slots, first_row, last_row)
        if SUMSQ:
            # GRN's statistics are taken of the hidden values as stored (rounded), as eager does.
            stored = cast_for_store(acc, out_ptr.dtype.element_ty, INTERPRETED).to(tl.float32)
            store_per_sample_sums(sums_ptr, stored * stored, rows, row_mask, cols, col_mask, N,
                                  rows_per_sample, pid_m, sum_slots, first_row, last_row)
        if STORE_OUT:
            output_epilogue(acc, rows, row_mask, cols, col_mask, N, out_ptr, y2_ptr,
                            out_col_scale_ptr, out_row_scale_ptr, residual_ptr,
                            rows_per_sample, STORE_Y2, OUT_COL_SCALE, OUT_ROW_SCALE, RESIDUAL,
                            INTERPRETED)


def input_precision(dtype):
    """IEEE fp32 products for fp32 inputs unless the user allowed TF32 (as torch.matmul does)."""
    if dtype == torch.float32 and not torch.backends.cuda.matmul.allow_tf32:
        return "ieee"
    return "tf32"


def dot_in_fp32(dtype):
    """The interpreter's dot on fp16/bf16 tiles rounds to the input dtype; give it fp32 tiles."""
    return INTERPRETED and dtype != torch.float32


def config(dtype, prologue=False, N=None, per_sample_sums=False, b_prologue=False,
           row_dot=False):
    """(tile constexprs, num_warps, num_stages). Operand prologues hold the A or B tile in
    registers in fp32 on the way to the tensor cores; at BLOCK_K = 64 that spilled (kernel
    report: 79-105 spill stores), at 32 it does not. A narrow output (N < 128, e.g. fc2 at
    C = 40) gets a narrower tile (spilled at 128), as does an epilogue adding per-sample sums
    (GRN's statistics; with the pre-activation stored too it spilled 33 stores at 128, odd
    rows per sample). IEEE fp32 products run on FMA units and hold more per element: smaller
    tiles, and two stages when GELU (and GRN) are computed on B's tiles (`b_prologue`): at
    three, triton 3.6 spilled a store in the GRN MLP's fc2 weight gradient at C = 40 (128
    registers; 3.8 did not; at four warps instead of eight: 255 registers and 11 spill stores),
    while two stages elsewhere made 3.6 spill in fc2's forward with GRN on A; with the row dots
    of layer scale's gradient (`row_dot`) as well, 3.6 spilled 3 stores at BLOCK_N 64 (C = 40),
    so those take 32. Not yet tuned on a GPU."""
    if INTERPRETED:  # few, wide tiles: the interpreter pays per program and per loop step
        return dict(BLOCK_M=64, BLOCK_N=64, BLOCK_K=64, GROUP_M=8), 4, None
    block_n = 128 if N is None else max(16, min(128, triton.next_power_of_2(N)))
    if per_sample_sums:
        block_n = min(block_n, 64)
    if dtype == torch.float32:
        return dict(BLOCK_M=64, BLOCK_N=min(32 if row_dot else 64, block_n), BLOCK_K=16,
                    GROUP_M=8), 8, 2 if b_prologue else 3
    return dict(BLOCK_M=128, BLOCK_N=block_n, BLOCK_K=32 if prologue else 64, GROUP_M=8), 8, 3


def splits_to_fill(M, N, dtype, device, most):
    """K splits of a split-K GEMM (with a prologue or row sums) into an [M, N] output: enough
    that its tiles times its splits give each SM of `device` a program, at most `most`. More
    splits only add fp32 partials to write and sum (at ConvNeXt-T stage 4, [3072, 768] has 144
    tiles: one split)."""
    cfg = config(dtype, prologue=True, N=N)[0]
    tiles = triton.cdiv(M, cfg["BLOCK_M"]) * triton.cdiv(N, cfg["BLOCK_N"])
    return max(1, min(most, triton.cdiv(sm_count(device), tiles)))


@dataclass(frozen=True)
class Prologue:
    """What a GEMM applies to its operand tiles as it loads them (module docstring): A's rows
    and columns scaled (per row // a_row_div, per column // a_col_div), A or B scaled by GRN's
    per-sample [samples, K] scale and then GRN's bias added (A: a_grn_*, the forward's fc2; B:
    b_grn_*, after GELU, the backward's fc2 weight gradient); A or B through GELU first
    (a_gelu: the forward's fc2 on the kept pre-activation; b_gelu: the backward's fc2 weight
    gradient)."""

    a_row_scale: Optional[torch.Tensor] = None
    a_row_div: int = 1
    a_col_scale: Optional[torch.Tensor] = None
    a_col_div: int = 1
    a_gelu: bool = False
    a_grn_scale: Optional[torch.Tensor] = None
    a_grn_bias: Optional[torch.Tensor] = None
    b_gelu: bool = False
    b_grn_scale: Optional[torch.Tensor] = None
    b_grn_bias: Optional[torch.Tensor] = None

    def any(self):
        return self.a_gelu or self.b_gelu or any(
            t is not None for t in (self.a_row_scale, self.a_col_scale, self.a_grn_scale,
                                    self.b_grn_scale))


@dataclass(frozen=True)
class Epilogue:
    """What a GEMM does with its fp32 accumulator (module docstring, in this order): + bias,
    the `kind` (PLAIN, GELU with the pre-activation stored to `pre`, GELU_GRAD with `aux` the
    pre-activation, GRN_GRAD with the per-sample `sums`/`sums2`), GRN's sums of squares, y2
    stored before the scales, out = residual + out_row_scale * out_col_scale * acc, stored
    unless not `store` (then `out` only gives the dtype the sums of squares are rounded to).
    `sums` and `sums2` are PerSamplePartials."""

    kind: tl.constexpr = PLAIN
    bias: Optional[torch.Tensor] = None
    pre: Optional[torch.Tensor] = None
    aux: Optional[torch.Tensor] = None
    sums: Optional[torch.Tensor] = None
    sums2: Optional[torch.Tensor] = None
    sumsq: bool = False
    y2: Optional[torch.Tensor] = None
    out_col_scale: Optional[torch.Tensor] = None
    out_row_scale: Optional[torch.Tensor] = None
    residual: Optional[torch.Tensor] = None
    store: bool = True


@dataclass(frozen=True)
class PerSamplePartials:
    """Per-sample column sums over a GEMM's M rows as its epilogue stores them (module
    docstring): `data` fp32 [row tiles, slots, N], row tiles of `rows_per_tile` rows."""

    data: torch.Tensor
    rows_per_tile: int
    rows_per_sample: int

    @property
    def slots(self):
        return self.data.shape[1]


def per_sample_partials(count, M, N, rows_per_sample, dtype, device, rows_per_tile=None):
    """`count` PerSamplePartials (one buffer) for launches over M rows in tiles of
    `rows_per_tile` rows (by default a GEMM's whose A operand has `dtype`): a tile of R rows
    spans at most (R - 1) // rows_per_sample + 2 samples (4 at ConvNeXt-T stage 4: 128 rows, 49
    per sample), and at most R."""
    if rows_per_tile is None:
        rows_per_tile = config(dtype, per_sample_sums=True)[0]["BLOCK_M"]
    slots = min((rows_per_tile - 1) // rows_per_sample + 2, rows_per_tile)
    data = torch.empty(count, triton.cdiv(M, rows_per_tile), slots, N, device=device,
                       dtype=torch.float32)
    return [PerSamplePartials(d, rows_per_tile, rows_per_sample) for d in data]


def matmul_launch(a, b, out, prologue=Prologue(), epilogue=Epilogue(), *, rows_per_sample=1,
                  partials=False, row_sum=None, row_dot=None):
    """The launch computing out = epilogue(prologue(a) @ prologue(b)); see the module docstring.
    `out` is [M, N] contiguous, or with `partials` [splits, M*N] (rows strided), with `row_sum`
    [splits, M] (rows strided), with `row_dot` (dot_with, out): dot_with laid out as a, out
    [splits, M] (rows strided); partials are fp32 but for one split (see GradWorkspace).
    rows_per_sample: rows of a sample, for the per-sample scales and sums."""
    M, K = a.shape
    N = b.shape[1]
    p, e = prologue, epilogue
    dot_with, row_dot_out = row_dot if row_dot is not None else (None, None)
    assert e.store or not partials, "a split-K GEMM stores its partials"
    if dot_with is not None:
        assert partials and dot_with.shape == a.shape and dot_with.stride() == a.stride()
    prologue_or_sums = p.any() or row_sum is not None or row_dot is not None
    cfg, num_warps, num_stages = config(a.dtype, prologue_or_sums, N,
                                        per_sample_sums=e.sums is not None, b_prologue=p.b_gelu,
                                        row_dot=row_dot is not None)
    sum_slots = 0
    for sums in (e.sums, e.sums2):
        if sums is not None:  # laid out for this GEMM's row tiles
            assert (sums.rows_per_tile, sums.rows_per_sample, tuple(sums.data.shape)) == (
                cfg["BLOCK_M"], rows_per_sample, (triton.cdiv(M, cfg["BLOCK_M"]), sums.slots, N))
            sum_slots = sums.slots
    splits = out.shape[0] if partials else 1
    if partials:
        k_per_split = triton.cdiv(triton.cdiv(K, splits), cfg["BLOCK_K"]) * cfg["BLOCK_K"]
    else:
        k_per_split = max(K, 1)
    grn_scale, grn_bias = ((p.a_grn_scale, p.a_grn_bias) if p.a_grn_scale is not None
                           else (p.b_grn_scale, p.b_grn_bias))
    unused = out
    args = (a, b, out, M, N, K, a.stride(0), a.stride(1), b.stride(0), b.stride(1),
            *(t if t is not None else unused for t in (p.a_row_scale, p.a_col_scale)),
            p.a_row_div, p.a_col_div,
            *(t if t is not None else unused for t in (grn_scale, grn_bias)),
            rows_per_sample,
            *(t if t is not None else unused for t in (e.bias, e.pre, e.aux, e.y2)),
            *(s.data if s is not None else unused for s in (e.sums, e.sums2)), sum_slots,
            *(t if t is not None else unused for t in (e.out_col_scale, e.out_row_scale,
                                                       e.residual, row_sum, dot_with,
                                                       row_dot_out)),
            k_per_split, out.stride(0) if partials else 0,
            row_sum.stride(0) if row_sum is not None else 0,
            row_dot_out.stride(0) if row_dot_out is not None else 0)
    flags = dict(A_ROW_SCALE=p.a_row_scale is not None, A_COL_SCALE=p.a_col_scale is not None,
                 A_GELU=p.a_gelu, A_GRN=p.a_grn_scale is not None, B_GELU=p.b_gelu,
                 B_GRN=p.b_grn_scale is not None, HAS_BIAS=e.bias is not None,
                 EPILOGUE=e.kind.value, STORE_PRE=e.pre is not None, SUMSQ=e.sumsq,
                 STORE_Y2=e.y2 is not None, OUT_COL_SCALE=e.out_col_scale is not None,
                 OUT_ROW_SCALE=e.out_row_scale is not None, RESIDUAL=e.residual is not None,
                 STORE_OUT=e.store, PARTIALS=partials, ROW_SUM=row_sum is not None,
                 ROW_DOT=row_dot is not None, DOT_FP32=dot_in_fp32(a.dtype),
                 INPUT_PRECISION=input_precision(a.dtype), INTERPRETED=INTERPRETED, **cfg)
    grid = (triton.cdiv(M, cfg["BLOCK_M"]) * triton.cdiv(N, cfg["BLOCK_N"]), splits)
    return Launch(_matmul_kernel, grid, args, flags, num_warps=num_warps, num_stages=num_stages,
                  flops=2 * M * N * K)
