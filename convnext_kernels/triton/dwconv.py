"""Depthwise k×k convolution (stride 1, padding k//2) in Triton, on N,H,W,C-contiguous buffers.

Forward: a program owns BLOCK_W pixels of one output row and BLOCK_C channels; the k×k taps are
unrolled along kx and looped along ky, each tap one coalesced [BLOCK_W, BLOCK_C] load (the
overlapping loads of neighbouring taps hit L1). Taps are read from the weight [C, k*k] itself, in
its dtype (fp32 under autocast), converted in registers: no tap or cast launch. The input
gradient is the same program run on the output gradient with REVERSE (the weight read flipped
by index, no flip launch), in the block adding the residual's gradient in its epilogue.

Weight gradient: a program owns one split of the rows (a GradWorkspace row), one tap row ky and
BLOCK_C channels, and sums g[p, c] * x[p shifted by (ky, kx), c] over its pixels for all kx at
once, as a [BLOCK_W, KPAD, BLOCK_C] product reduced over pixels. It writes fp32 partials of the
weight gradient (in the weight's [C, k*k] order) and, for ky = 0, of the bias gradient; the
workspace's finalize sums them in a fixed order, so the result is deterministic.

The block's backward runs both gradients in one launch (_dwconv_backward_kernel): its grid is
the weight gradient's programs followed by the input gradient's.
"""
import torch
import triton
import triton.language as tl

from .common import INTERPRETED, Launch, cast_for_store, nhwc_buffer
from .grad_workspace import GradWorkspace, reduction_splits

# Forward tiles hold this many [pixel, channel] elements: more raises registers past 128 a thread
# at 4 warps (benchmarks/kernel_report.py).
_FORWARD_TILE = 1024
_UNROLL_MAX = tl.constexpr(7)
# Each [pixels x taps x channels] tile of the weight-gradient kernel stays within this many
# elements, so it fits in registers without spilling (checked by tests/test_kernel_report.py).
_WGRAD_TILE = 2048


@triton.jit
def _accumulate_tap(acc, x_row, w_cols, ky, kx, row_ok, offs_w, offs_c, mask_c, W, C,
                    K: tl.constexpr, REVERSE: tl.constexpr):
    iw = offs_w + (kx - K // 2)
    mask = row_ok & ((iw >= 0) & (iw < W))[:, None] & mask_c[None, :]
    xv = tl.load(x_row + iw[:, None] * C + offs_c[None, :], mask=mask, other=0.0)
    tap_index = ky * K + kx
    if REVERSE:
        tap_index = K * K - 1 - tap_index
    tap = tl.load(w_cols + tap_index, mask=mask_c, other=0.0)
    return acc + xv.to(tl.float32) * tap.to(tl.float32)[None, :]


@triton.jit
def conv_tile(x_ptr, w_ptr, row, H, W, C, offs_w, offs_c, mask_c, K: tl.constexpr,
              BLOCK_W: tl.constexpr, BLOCK_C: tl.constexpr, REVERSE: tl.constexpr = False):
    """fp32 [BLOCK_W, BLOCK_C] conv (no bias) of output row `row` (= n*H + h), pixels offs_w,
    with the weight [C, K*K] (REVERSE: flipped, for the input gradient)."""
    h = row % H
    acc = tl.zeros([BLOCK_W, BLOCK_C], dtype=tl.float32)
    # Each channel's taps, K*K apart: strided loads, but the weight is small and stays in L1/L2.
    w_cols = w_ptr + offs_c * (K * K)
    for ky in range(K):
        ih = h + ky - K // 2
        row_ok = (ih >= 0) & (ih < H)
        x_row = x_ptr + (row + ky - K // 2).to(tl.int64) * W * C
        # Unrolling a row of more than _UNROLL_MAX taps only adds register pressure (spills).
        if K <= _UNROLL_MAX:
            for kx in tl.static_range(K):
                acc = _accumulate_tap(acc, x_row, w_cols, ky, kx, row_ok, offs_w, offs_c,
                                      mask_c, W, C, K, REVERSE)
        else:
            for kx in range(K):
                acc = _accumulate_tap(acc, x_row, w_cols, ky, kx, row_ok, offs_w, offs_c,
                                      mask_c, W, C, K, REVERSE)
    return acc


@triton.jit
def _conv_program(row, w_tile, c_tile, x_ptr, w_ptr, bias_ptr, residual_ptr, y_ptr, H, W, C,
                  K: tl.constexpr, HAS_BIAS: tl.constexpr, REVERSE: tl.constexpr,
                  HAS_RESIDUAL: tl.constexpr, BLOCK_W: tl.constexpr, BLOCK_C: tl.constexpr,
                  INTERPRETED: tl.constexpr):
    """One forward (or, REVERSE, input-gradient) program: output row `row` (= n*H + h), pixel
    tile `w_tile`, channel tile `c_tile`."""
    offs_w = w_tile * BLOCK_W + tl.arange(0, BLOCK_W)
    offs_c = c_tile * BLOCK_C + tl.arange(0, BLOCK_C)
    mask_c = offs_c < C
    acc = conv_tile(x_ptr, w_ptr, row, H, W, C, offs_w, offs_c, mask_c, K, BLOCK_W, BLOCK_C,
                    REVERSE)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + offs_c, mask=mask_c, other=0.0).to(tl.float32)[None, :]
    offs = row.to(tl.int64) * W * C + offs_w[:, None] * C + offs_c[None, :]
    mask = (offs_w < W)[:, None] & mask_c[None, :]
    if HAS_RESIDUAL:
        acc += tl.load(residual_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    tl.store(y_ptr + offs, cast_for_store(acc, y_ptr.dtype.element_ty, INTERPRETED), mask=mask)


@triton.jit
def _dwconv_forward_kernel(x_ptr, w_ptr, bias_ptr, y_ptr, H, W, C, K: tl.constexpr,
                           HAS_BIAS: tl.constexpr, REVERSE: tl.constexpr, BLOCK_W: tl.constexpr,
                           BLOCK_C: tl.constexpr, INTERPRETED: tl.constexpr):
    _conv_program(tl.program_id(0), tl.program_id(1), tl.program_id(2), x_ptr, w_ptr, bias_ptr,
                  y_ptr, y_ptr, H, W, C, K, HAS_BIAS, REVERSE, False, BLOCK_W, BLOCK_C,
                  INTERPRETED)


@triton.jit
def _wgrad_program(chunk, ky, c_tile, g_ptr, x_ptr, w_partial_ptr, b_partial_ptr, ROWS, H, W, C,
                   ROWS_PER_PROGRAM, split_stride, K: tl.constexpr, KPAD: tl.constexpr,
                   BLOCK_W: tl.constexpr, BLOCK_C: tl.constexpr):
    """One weight-gradient program: row split `chunk`, tap row `ky`, channel tile `c_tile`."""
    offs_c = c_tile * BLOCK_C + tl.arange(0, BLOCK_C)
    mask_c = offs_c < C
    offs_kx = tl.arange(0, KPAD)
    # (The partial rows' addresses before the loop: in the block's two-kind kernel, chunk is
    # no program id to re-read, and computed after the loop it spilled a register on sm_90.)
    w_part = w_partial_ptr + chunk.to(tl.int64) * split_stride
    b_part = b_partial_ptr + chunk.to(tl.int64) * split_stride
    # Accumulated per pixel lane and reduced over the lanes once, after the loop (a reduction
    # across warps on every step would cost a shared-memory round trip each).
    acc = tl.zeros([BLOCK_W, KPAD, BLOCK_C], dtype=tl.float32)
    bias_acc = tl.zeros([BLOCK_W, BLOCK_C], dtype=tl.float32)
    for r in range(ROWS_PER_PROGRAM):
        row = chunk * ROWS_PER_PROGRAM + r
        ih = row % H + ky - K // 2
        row_ok = row < ROWS
        x_ok = row_ok & (ih >= 0) & (ih < H)
        g_row = g_ptr + row.to(tl.int64) * W * C
        x_row = x_ptr + (row + ky - K // 2).to(tl.int64) * W * C
        for w0 in range(0, W, BLOCK_W):
            offs_w = w0 + tl.arange(0, BLOCK_W)
            g_mask = row_ok & (offs_w < W)[:, None] & mask_c[None, :]
            gv = tl.load(g_row + offs_w[:, None] * C + offs_c[None, :], mask=g_mask, other=0.0)
            gv = gv.to(tl.float32)
            if ky == 0:  # the bias sums, once (not by every tap row)
                bias_acc += gv
            iw = offs_w[:, None] + offs_kx[None, :] - K // 2  # [BLOCK_W, KPAD]
            iw_ok = (iw >= 0) & (iw < W) & (offs_kx < K)[None, :]
            x_mask = x_ok & iw_ok[:, :, None] & mask_c[None, None, :]
            xv = tl.load(x_row + iw[:, :, None] * C + offs_c[None, None, :], mask=x_mask,
                         other=0.0)
            acc += xv.to(tl.float32) * gv[:, None, :]
    # Partials in the weight's [C, K*K] order; the bias's by the ky = 0 programs.
    tl.store(w_part + offs_c[None, :] * (K * K) + (ky * K + offs_kx)[:, None],
             tl.sum(acc, axis=0), mask=(offs_kx < K)[:, None] & mask_c[None, :])
    tl.store(b_part + offs_c,
             tl.sum(bias_acc, axis=0), mask=mask_c & (ky == 0))


@triton.jit
def _dwconv_wgrad_partial_kernel(g_ptr, x_ptr, w_partial_ptr, b_partial_ptr, ROWS, H, W, C,
                                 ROWS_PER_PROGRAM, split_stride,
                                 K: tl.constexpr, KPAD: tl.constexpr,
                                 BLOCK_W: tl.constexpr, BLOCK_C: tl.constexpr):
    _wgrad_program(tl.program_id(0), tl.program_id(1), tl.program_id(2), g_ptr, x_ptr,
                   w_partial_ptr, b_partial_ptr, ROWS, H, W, C, ROWS_PER_PROGRAM, split_stride,
                   K, KPAD, BLOCK_W, BLOCK_C)


@triton.jit
def _dwconv_backward_kernel(g_ptr, x_ptr, w_ptr, residual_ptr, grad_x_ptr, w_partial_ptr,
                            b_partial_ptr, ROWS, H, W, C, ROWS_PER_PROGRAM, split_stride,
                            WGRAD_PROGRAMS, WGRAD_C_TILES, INPUT_W_TILES, INPUT_C_TILES,
                            K: tl.constexpr, KPAD: tl.constexpr, HAS_RESIDUAL: tl.constexpr,
                            WGRAD_BLOCK_W: tl.constexpr, WGRAD_BLOCK_C: tl.constexpr,
                            INPUT_BLOCK_W: tl.constexpr, INPUT_BLOCK_C: tl.constexpr,
                            INTERPRETED: tl.constexpr):
    """Both gradients of the conv in one launch (they read the same grad_out and neither needs
    the other): the first WGRAD_PROGRAMS programs are the weight gradient's (longer: each loops
    over its rows, so they start first), the rest the input gradient's."""
    pid = tl.program_id(0)
    if pid < WGRAD_PROGRAMS:
        _wgrad_program(pid // (K * WGRAD_C_TILES), (pid // WGRAD_C_TILES) % K,
                       pid % WGRAD_C_TILES, g_ptr, x_ptr, w_partial_ptr, b_partial_ptr, ROWS, H,
                       W, C, ROWS_PER_PROGRAM, split_stride, K, KPAD, WGRAD_BLOCK_W,
                       WGRAD_BLOCK_C)
    else:
        pid -= WGRAD_PROGRAMS
        _conv_program(pid // (INPUT_W_TILES * INPUT_C_TILES),
                      (pid // INPUT_C_TILES) % INPUT_W_TILES, pid % INPUT_C_TILES, g_ptr, w_ptr,
                      w_ptr, residual_ptr, grad_x_ptr, H, W, C, K, False, True, HAS_RESIDUAL,
                      INPUT_BLOCK_W, INPUT_BLOCK_C, INTERPRETED)


def forward_config(C, W):
    block_c = min(triton.next_power_of_2(C), 128)
    block_w = max(1, min(triton.next_power_of_2(W), _FORWARD_TILE // block_c))
    return {"BLOCK_W": block_w, "BLOCK_C": block_c}


def wgrad_config(C, W, k, half_tile=False):
    """half_tile: a tile of half the pixels, where the full one spilled on sm_90 (kernel report):
    x in fp32 beside a half-precision gradient (the block under autocast; triton 3.6 spilled a
    store, 3.8 did not), and in fp32 inside the block's two-kind backward kernel (a store of
    mask predicates at C = 96)."""
    kpad = triton.next_power_of_2(k)
    block_c = min(triton.next_power_of_2(C), 64)
    tile = _WGRAD_TILE // 2 if half_tile else _WGRAD_TILE
    block_w = max(1, min(triton.next_power_of_2(W), tile // (kpad * block_c)))
    return {"KPAD": kpad, "BLOCK_W": block_w, "BLOCK_C": block_c}


def forward_launch(x_nhwc, weight, bias, y, k, reverse=False):
    """The forward launch: x_nhwc and y N,C,H,W channels_last, weight [C,1,k,k] contiguous and
    bias [C] (or None) in any kernel dtype. reverse: the input gradient, grad_out conv the
    flipped weight."""
    N, C, H, W = x_nhwc.shape
    cfg = forward_config(C, W)
    grid = (N * H, triton.cdiv(W, cfg["BLOCK_W"]), triton.cdiv(C, cfg["BLOCK_C"]))
    return Launch(_dwconv_forward_kernel, grid,
                  (x_nhwc, weight, bias if bias is not None else weight,  # unread if absent
                   y, H, W, C),
                  dict(K=k, HAS_BIAS=bias is not None, REVERSE=reverse,
                       INTERPRETED=INTERPRETED, **cfg),
                  flops=2 * k * k * x_nhwc.numel())


def wgrad_launch(g_nhwc, x_nhwc, weight_partial, bias_partial, k):
    """The weight gradient's fp32 partials: weight_partial [splits, C*k*k] and bias_partial
    [splits, C] (GradWorkspace views) from g and x, both N,C,H,W channels_last."""
    N, C, H, W = x_nhwc.shape
    cfg = wgrad_config(C, W, k, half_tile=x_nhwc.dtype != g_nhwc.dtype)
    rows = N * H
    splits = weight_partial.shape[0]
    grid = (splits, k, triton.cdiv(C, cfg["BLOCK_C"]))
    return Launch(_dwconv_wgrad_partial_kernel, grid,
                  (g_nhwc, x_nhwc, weight_partial, bias_partial, rows, H, W, C,
                   triton.cdiv(rows, splits), weight_partial.stride(0)), dict(K=k, **cfg),
                  flops=2 * k * k * x_nhwc.numel())


def backward_launch(g_nhwc, x_nhwc, weight, grad_x, weight_partial, bias_partial, k,
                    residual=None):
    """Both gradients in one launch: grad_x = g conv the flipped weight [+ residual] (grad_x,
    residual N,C,H,W channels_last) and the weight gradient's partials (wgrad_launch's)."""
    N, C, H, W = x_nhwc.shape
    wcfg = wgrad_config(C, W, k, half_tile=x_nhwc.dtype != g_nhwc.dtype
                        or x_nhwc.dtype == torch.float32)
    icfg = forward_config(C, W)
    rows = N * H
    splits = weight_partial.shape[0]
    wgrad_c_tiles = triton.cdiv(C, wcfg["BLOCK_C"])
    wgrad_programs = splits * k * wgrad_c_tiles
    input_w_tiles = triton.cdiv(W, icfg["BLOCK_W"])
    input_c_tiles = triton.cdiv(C, icfg["BLOCK_C"])
    grid = (wgrad_programs + rows * input_w_tiles * input_c_tiles,)
    return Launch(_dwconv_backward_kernel, grid,
                  (g_nhwc, x_nhwc, weight, residual if residual is not None else grad_x, grad_x,
                   weight_partial, bias_partial, rows, H, W, C, triton.cdiv(rows, splits),
                   weight_partial.stride(0), wgrad_programs, wgrad_c_tiles, input_w_tiles,
                   input_c_tiles),
                  dict(K=k, KPAD=wcfg["KPAD"], HAS_RESIDUAL=residual is not None,
                       WGRAD_BLOCK_W=wcfg["BLOCK_W"], WGRAD_BLOCK_C=wcfg["BLOCK_C"],
                       INPUT_BLOCK_W=icfg["BLOCK_W"], INPUT_BLOCK_C=icfg["BLOCK_C"],
                       INTERPRETED=INTERPRETED),
                  flops=4 * k * k * x_nhwc.numel())


def grad_shapes(weight):
    C, k = weight.shape[0], weight.shape[-1]
    return {"dw_weight": (C, 1, k, k), "dw_bias": (C,)}


def dwconv2d_forward(x, weight, bias):
    """y = dwconv2d(x, weight, bias), with y in x's memory format."""
    out = torch.empty_like(x)
    if out.numel() == 0:
        return out
    y = nhwc_buffer(out)
    forward_launch(x.contiguous(memory_format=torch.channels_last), weight.contiguous(),
                   bias.contiguous() if bias is not None else None, y, weight.shape[-1])()
    if y is not out:
        out.copy_(y)
    return out


def dwconv2d_input_grad(grad_out, weight):
    """grad_x = grad_out conv the flipped weight, in grad_out's memory format."""
    out = torch.empty_like(grad_out)
    if out.numel() == 0:
        return out
    y = nhwc_buffer(out)
    forward_launch(grad_out.contiguous(memory_format=torch.channels_last), weight.contiguous(),
                   None, y, weight.shape[-1], reverse=True)()
    if y is not out:
        out.copy_(y)
    return out


def dwconv2d_backward_weight(grad_out, x, weight):
    """(grad_weight [C,1,k,k], grad_bias [C]) in the weight's dtype, fp32-accumulated."""
    if x.numel() == 0:
        return weight.new_zeros(weight.shape), weight.new_zeros(weight.shape[0])
    N, _, H, W = x.shape
    ws = GradWorkspace(grad_shapes(weight), reduction_splits(N * H * W), weight.dtype, x.device)
    wgrad_launch(grad_out.contiguous(memory_format=torch.channels_last),
                 x.contiguous(memory_format=torch.channels_last), ws["dw_weight"], ws["dw_bias"],
                 weight.shape[-1])()
    grads = ws.finalize_each()
    return grads["dw_weight"], grads["dw_bias"]
