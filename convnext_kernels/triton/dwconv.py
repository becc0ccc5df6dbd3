"""Depthwise k×k convolution (stride 1, padding k//2) in Triton, on N,H,W,C-contiguous buffers.

Forward: a program owns BLOCK_W pixels of one output row and BLOCK_C channels; the k×k taps are
unrolled along kx and looped along ky, each tap one coalesced [BLOCK_W, BLOCK_C] load (the
overlapping loads of neighbouring taps hit L1). The input gradient is this same kernel run on the
output gradient with the flipped weight.

Weight gradient: a program owns one chunk of rows, one tap row ky and BLOCK_C channels, and sums
g[p, c] * x[p shifted by (ky, kx), c] over its pixels for all kx at once, as a [BLOCK_W, KPAD,
BLOCK_C] product reduced over pixels. Each program writes an fp32 partial; the partials are
summed afterwards in a fixed order, so the result is deterministic.
"""
import torch
import triton
import triton.language as tl

from .common import INTERPRETED, Launch, cast_for_store, nhwc_buffer

# Forward tiles hold this many [pixel, channel] elements: more raises registers past 128 a thread
# at 4 warps (benchmarks/kernel_report.py).
_FORWARD_TILE = 1024
_UNROLL_MAX = tl.constexpr(7)
# Each [pixels x taps x channels] tile of the weight-gradient kernel stays within this many
# elements, so it fits in registers without spilling (checked by tests/test_triton_sm90.py).
_WGRAD_TILE = 2048
# Weight-gradient programs wanted in flight; the row chunk size follows from it.
_WGRAD_PROGRAMS = 1024


@triton.jit
def _accumulate_tap(acc, x_row, taps_ptr, ky, kx, row_ok, offs_w, offs_c, mask_c, W, C,
                    K: tl.constexpr):
    iw = offs_w + (kx - K // 2)
    mask = row_ok & ((iw >= 0) & (iw < W))[:, None] & mask_c[None, :]
    xv = tl.load(x_row + iw[:, None] * C + offs_c[None, :], mask=mask, other=0.0)
    tap = tl.load(taps_ptr + (ky * K + kx) * C + offs_c, mask=mask_c, other=0.0)
    return acc + xv.to(tl.float32) * tap[None, :]


@triton.jit
def conv_tile(x_ptr, taps_ptr, row, H, W, C, offs_w, offs_c, mask_c, K: tl.constexpr,
              BLOCK_W: tl.constexpr, BLOCK_C: tl.constexpr):
    """fp32 [BLOCK_W, BLOCK_C] conv (no bias) of output row `row` (= n*H + h), pixels offs_w."""
    h = row % H
    acc = tl.zeros([BLOCK_W, BLOCK_C], dtype=tl.float32)
    for ky in range(K):
        ih = h + ky - K // 2
        row_ok = (ih >= 0) & (ih < H)
        x_row = x_ptr + (row + ky - K // 2).to(tl.int64) * W * C
        # Unrolling a row of more than _UNROLL_MAX taps only adds register pressure (spills).
        if K <= _UNROLL_MAX:
            for kx in tl.static_range(K):
                acc = _accumulate_tap(acc, x_row, taps_ptr, ky, kx, row_ok, offs_w, offs_c,
                                      mask_c, W, C, K)
        else:
            for kx in range(K):
                acc = _accumulate_tap(acc, x_row, taps_ptr, ky, kx, row_ok, offs_w, offs_c,
                                      mask_c, W, C, K)
    return acc


@triton.jit
def _dwconv_forward_kernel(x_ptr, taps_ptr, bias_ptr, y_ptr, H, W, C,
                           K: tl.constexpr, HAS_BIAS: tl.constexpr,
                           BLOCK_W: tl.constexpr, BLOCK_C: tl.constexpr,
                           INTERPRETED: tl.constexpr):
    row = tl.program_id(0)  # n*H + h
    offs_w = tl.program_id(1) * BLOCK_W + tl.arange(0, BLOCK_W)
    offs_c = tl.program_id(2) * BLOCK_C + tl.arange(0, BLOCK_C)
    mask_c = offs_c < C
    acc = conv_tile(x_ptr, taps_ptr, row, H, W, C, offs_w, offs_c, mask_c, K, BLOCK_W, BLOCK_C)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + offs_c, mask=mask_c, other=0.0)[None, :]
    y_ptrs = y_ptr + row.to(tl.int64) * W * C + offs_w[:, None] * C + offs_c[None, :]
    tl.store(y_ptrs, cast_for_store(acc, y_ptr.dtype.element_ty, INTERPRETED),
             mask=(offs_w < W)[:, None] & mask_c[None, :])


@triton.jit
def _dwconv_wgrad_partial_kernel(g_ptr, x_ptr, partial_ptr, ROWS, H, W, C, ROWS_PER_PROGRAM,
                                 K: tl.constexpr, KPAD: tl.constexpr,
                                 BLOCK_W: tl.constexpr, BLOCK_C: tl.constexpr):
    chunk = tl.program_id(0)
    ky = tl.program_id(1)
    offs_c = tl.program_id(2) * BLOCK_C + tl.arange(0, BLOCK_C)
    mask_c = offs_c < C
    offs_kx = tl.arange(0, KPAD)
    acc = tl.zeros([KPAD, BLOCK_C], dtype=tl.float32)
    bias_acc = tl.zeros([BLOCK_C], dtype=tl.float32)
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
            bias_acc += tl.sum(gv, axis=0)
            iw = offs_w[:, None] + offs_kx[None, :] - K // 2  # [BLOCK_W, KPAD]
            iw_ok = (iw >= 0) & (iw < W) & (offs_kx < K)[None, :]
            x_mask = x_ok & iw_ok[:, :, None] & mask_c[None, None, :]
            xv = tl.load(x_row + iw[:, :, None] * C + offs_c[None, None, :], mask=x_mask,
                         other=0.0)
            acc += tl.sum(xv.to(tl.float32) * gv[:, None, :], axis=0)
    # partial: [chunks, K*K + 1, C]; row K*K holds the bias sums, written by the ky = 0 programs.
    part = partial_ptr + chunk.to(tl.int64) * (K * K + 1) * C
    tl.store(part + (ky * K + offs_kx)[:, None] * C + offs_c[None, :], acc,
             mask=(offs_kx < K)[:, None] & mask_c[None, :])
    tl.store(part + K * K * C + offs_c, bias_acc, mask=mask_c & (ky == 0))


def forward_config(C, W):
    block_c = min(triton.next_power_of_2(C), 128)
    block_w = max(1, min(triton.next_power_of_2(W), _FORWARD_TILE // block_c))
    return {"BLOCK_W": block_w, "BLOCK_C": block_c}


def wgrad_config(C, W, k):
    kpad = triton.next_power_of_2(k)
    block_c = min(triton.next_power_of_2(C), 64)
    block_w = max(1, min(triton.next_power_of_2(W), _WGRAD_TILE // (kpad * block_c)))
    return {"KPAD": kpad, "BLOCK_W": block_w, "BLOCK_C": block_c}


def forward_launch(x_nhwc, taps, bias_f, y, k):
    """The forward launch: x_nhwc and y N,C,H,W channels_last, taps fp32 [k*k, C], bias_f fp32
    [C] or None."""
    N, C, H, W = x_nhwc.shape
    cfg = forward_config(C, W)
    grid = (N * H, triton.cdiv(W, cfg["BLOCK_W"]), triton.cdiv(C, cfg["BLOCK_C"]))
    bias_arg = bias_f if bias_f is not None else taps  # not read when HAS_BIAS is False
    return Launch(_dwconv_forward_kernel, grid, (x_nhwc, taps, bias_arg, y, H, W, C),
                  dict(K=k, HAS_BIAS=bias_f is not None, INTERPRETED=INTERPRETED, **cfg))


def wgrad_partial_shape(x_nhwc, k):
    N, C, H, W = x_nhwc.shape
    rows = N * H
    rows_per_program = _wgrad_rows_per_program(rows, k, C, wgrad_config(C, W, k)["BLOCK_C"])
    return (triton.cdiv(rows, rows_per_program), k * k + 1, C)


def wgrad_launch(g_nhwc, x_nhwc, partial, k):
    """Stage 1 of the weight gradient: fp32 partials [chunks, k*k + 1, C]
    (see wgrad_partial_shape) from g and x, both N,C,H,W channels_last."""
    N, C, H, W = x_nhwc.shape
    cfg = wgrad_config(C, W, k)
    rows = N * H
    rows_per_program = _wgrad_rows_per_program(rows, k, C, cfg["BLOCK_C"])
    grid = (partial.shape[0], k, triton.cdiv(C, cfg["BLOCK_C"]))
    return Launch(_dwconv_wgrad_partial_kernel, grid,
                  (g_nhwc, x_nhwc, partial, rows, H, W, C, rows_per_program), dict(K=k, **cfg))


def _wgrad_rows_per_program(rows, k, C, block_c):
    """Rows per weight-gradient program: from the shape alone, so results are reproducible."""
    programs_per_chunk = k * triton.cdiv(C, block_c)
    chunks = max(1, min(rows, triton.cdiv(_WGRAD_PROGRAMS, programs_per_chunk)))
    return triton.cdiv(rows, chunks)


def _taps(weight):
    C, k = weight.shape[0], weight.shape[-1]
    return weight.reshape(C, k * k).t().float().contiguous()


def dwconv2d_forward(x, weight, bias):
    """y = dwconv2d(x, weight, bias), with y in x's memory format."""
    out = torch.empty_like(x)
    if out.numel() == 0:
        return out
    x_nhwc = x.contiguous(memory_format=torch.channels_last)
    y = nhwc_buffer(out)
    bias_f = bias.float().contiguous() if bias is not None else None
    forward_launch(x_nhwc, _taps(weight), bias_f, y, weight.shape[-1])()
    if y is not out:
        out.copy_(y)
    return out


def dwconv2d_backward_weight(grad_out, x, weight):
    """(grad_weight [C,1,k,k], grad_bias [C]) in the weight's dtype, fp32-accumulated."""
    k = weight.shape[-1]
    if x.numel() == 0:
        return weight.new_zeros(weight.shape), weight.new_zeros(weight.shape[0])
    x_nhwc = x.contiguous(memory_format=torch.channels_last)
    g_nhwc = grad_out.contiguous(memory_format=torch.channels_last)
    partial = torch.empty(wgrad_partial_shape(x_nhwc, k), device=x.device, dtype=torch.float32)
    wgrad_launch(g_nhwc, x_nhwc, partial, k)()
    return _split_sums(partial.sum(0), weight)


def _split_sums(sums, weight):
    """[k*k + 1, C] fp32 sums -> (grad_weight [C,1,k,k], grad_bias [C]): fresh, contiguous
    tensors in the weight's dtype (outputs of a custom op may not alias each other)."""
    C, k = weight.shape[0], weight.shape[-1]
    grad_weight = sums[: k * k].t().reshape(C, 1, k, k)
    return (grad_weight.to(weight.dtype, memory_format=torch.contiguous_format, copy=True),
            sums[k * k].to(weight.dtype, copy=True))


def launches(dtype, N, C, H, W, k, device="meta"):
    """Every launch ck.dwconv2d makes, forward and backward, for one shape (meta tensors by
    default: for compiling and inspecting kernels without running them)."""
    x = torch.empty(N, C, H, W, dtype=dtype, device=device).contiguous(
        memory_format=torch.channels_last)
    taps = torch.empty(k * k, C, dtype=torch.float32, device=device)
    bias = torch.empty(C, dtype=torch.float32, device=device)
    partial = torch.empty(wgrad_partial_shape(x, k), dtype=torch.float32, device=device)
    return [forward_launch(x, taps, bias, torch.empty_like(x), k),
            forward_launch(x, taps, None, torch.empty_like(x), k),  # the input gradient
            wgrad_launch(x, x, partial, k)]
