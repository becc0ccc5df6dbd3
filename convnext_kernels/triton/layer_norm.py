"""LayerNorm over the C contiguous channels of each pixel of an N,H,W,C buffer, in Triton.

Forward: a program normalises BLOCK_M pixels, each whole row of C channels in registers; fp32
statistics (two-pass variance on the registers) are saved for the backward.
Backward: a program per split of a GradWorkspace walks its ROWS_PER_PROGRAM pixels in BLOCK_M
steps, writes grad_x and keeps fp32 sums of g*xhat and g for its rows, written as the workspace's
partials of the weight and bias gradients (finalized in a fixed order: deterministic).
"""
import torch
import triton
import triton.language as tl

from .common import INTERPRETED, Launch, cast_for_store, nhwc_buffer
from .grad_workspace import GradWorkspace, reduction_splits

MAX_CHANNELS = 4096
# [pixels, channels] elements a program holds; beyond them registers spill (kernel report). The
# backward holds six such tiles (g, x, xhat, g*w and the two weight-gradient sums) where the
# forward holds two.
_FORWARD_TILE = 4096
_BACKWARD_TILE = 2048


@triton.jit
def normalize_rows(x, mask, offs_c, mask_c, w_ptr, b_ptr, C, eps):
    """LayerNorm of each row of fp32 `x` [rows, BLOCK_C] over its C valid channels (masked
    entries hold 0): (y fp32, mean, rstd), two-pass variance."""
    mean = tl.sum(x, axis=1) / C
    diff = tl.where(mask, x - mean[:, None], 0.0)
    rstd = 1.0 / tl.sqrt(tl.sum(diff * diff, axis=1) / C + eps)
    w = tl.load(w_ptr + offs_c, mask=mask_c, other=0.0).to(tl.float32)
    b = tl.load(b_ptr + offs_c, mask=mask_c, other=0.0).to(tl.float32)
    return diff * rstd[:, None] * w[None, :] + b[None, :], mean, rstd


@triton.jit
def _layer_norm_forward_kernel(x_ptr, w_ptr, b_ptr, y_ptr, mean_ptr, rstd_ptr, ROWS, C, eps,
                               BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr,
                               INTERPRETED: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_c = tl.arange(0, BLOCK_C)
    mask_c = offs_c < C
    mask = (rows < ROWS)[:, None] & mask_c[None, :]
    offs = rows.to(tl.int64)[:, None] * C + offs_c[None, :]
    x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    y, mean, rstd = normalize_rows(x, mask, offs_c, mask_c, w_ptr, b_ptr, C, eps)
    tl.store(y_ptr + offs, cast_for_store(y, y_ptr.dtype.element_ty, INTERPRETED), mask=mask)
    tl.store(mean_ptr + rows, mean, mask=rows < ROWS)
    tl.store(rstd_ptr + rows, rstd, mask=rows < ROWS)


@triton.jit
def _layer_norm_backward_kernel(g_ptr, x_ptr, w_ptr, mean_ptr, rstd_ptr, gx_ptr, gw_ptr, gb_ptr,
                                ROWS, C, ROWS_PER_PROGRAM, split_stride,
                                BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr,
                                INTERPRETED: tl.constexpr):
    pid = tl.program_id(0)
    offs_c = tl.arange(0, BLOCK_C)
    mask_c = offs_c < C
    w = tl.load(w_ptr + offs_c, mask=mask_c, other=0.0).to(tl.float32)
    # Per-row-lane sums, reduced over the lanes once after the loop (not on every step).
    sum_gw = tl.zeros([BLOCK_M, BLOCK_C], dtype=tl.float32)
    sum_gb = tl.zeros([BLOCK_M, BLOCK_C], dtype=tl.float32)
    first = pid * ROWS_PER_PROGRAM
    for start in range(first, first + ROWS_PER_PROGRAM, BLOCK_M):
        rows = start + tl.arange(0, BLOCK_M)
        row_ok = (rows < ROWS) & (rows < first + ROWS_PER_PROGRAM)
        mask = row_ok[:, None] & mask_c[None, :]
        offs = rows.to(tl.int64)[:, None] * C + offs_c[None, :]
        g = tl.load(g_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        mean = tl.load(mean_ptr + rows, mask=row_ok, other=0.0)
        rstd = tl.load(rstd_ptr + rows, mask=row_ok, other=0.0)
        xhat = tl.where(mask, (x - mean[:, None]) * rstd[:, None], 0.0)
        gh = g * w[None, :]
        mean_gh = tl.sum(gh, axis=1) / C
        mean_gh_xhat = tl.sum(gh * xhat, axis=1) / C
        gx = rstd[:, None] * (gh - mean_gh[:, None] - xhat * mean_gh_xhat[:, None])
        tl.store(gx_ptr + offs, cast_for_store(gx, gx_ptr.dtype.element_ty, INTERPRETED),
                 mask=mask)
        sum_gw += g * xhat
        sum_gb += g
    tl.store(gw_ptr + pid.to(tl.int64) * split_stride + offs_c, tl.sum(sum_gw, axis=0),
             mask=mask_c)
    tl.store(gb_ptr + pid.to(tl.int64) * split_stride + offs_c, tl.sum(sum_gb, axis=0),
             mask=mask_c)


def config(C, tile):
    block_c = triton.next_power_of_2(C)
    return {"BLOCK_M": max(1, min(64, tile // block_c)), "BLOCK_C": block_c}


def _num_warps(block_c):
    return 8 if block_c >= 1024 else 4


def forward_launch(x_nhwc, weight, bias, y, mean, rstd, eps):
    C = x_nhwc.shape[1]
    rows = mean.numel()
    cfg = config(C, _FORWARD_TILE)
    grid = (triton.cdiv(rows, cfg["BLOCK_M"]),)
    return Launch(_layer_norm_forward_kernel, grid,
                  (x_nhwc, weight, bias, y, mean, rstd, rows, C, eps),
                  dict(INTERPRETED=INTERPRETED, **cfg), num_warps=_num_warps(cfg["BLOCK_C"]))


def backward_launch(g_nhwc, x_nhwc, weight, mean, rstd, grad_x, grad_weight_partial,
                    grad_bias_partial):
    """grad_x, and the weight and bias gradients' fp32 partials [splits, C] (GradWorkspace
    views): one program per split."""
    C = x_nhwc.shape[1]
    rows = mean.numel()
    cfg = config(C, _BACKWARD_TILE)
    splits = grad_weight_partial.shape[0]
    rows_per_program = triton.cdiv(triton.cdiv(rows, splits), cfg["BLOCK_M"]) * cfg["BLOCK_M"]
    return Launch(_layer_norm_backward_kernel, (splits,),
                  (g_nhwc, x_nhwc, weight, mean, rstd, grad_x, grad_weight_partial,
                   grad_bias_partial, rows, C, rows_per_program, grad_weight_partial.stride(0)),
                  dict(INTERPRETED=INTERPRETED, **cfg), num_warps=_num_warps(cfg["BLOCK_C"]))


def new_row_stats(x):
    N, _, H, W = x.shape
    return (torch.empty(N, H, W, device=x.device, dtype=torch.float32),
            torch.empty(N, H, W, device=x.device, dtype=torch.float32))


def layer_norm_2d_forward(x, weight, bias, eps):
    """(y in x's memory format, mean [N,H,W] fp32, rstd [N,H,W] fp32)."""
    if x.shape[1] > MAX_CHANNELS:
        raise ValueError(f"layer_norm_2d (triton): at most {MAX_CHANNELS} channels, "
                         f"got {x.shape[1]}")
    out = torch.empty_like(x)
    mean, rstd = new_row_stats(x)
    if x.numel() == 0:
        return out, mean, rstd
    x_nhwc = x.contiguous(memory_format=torch.channels_last)
    y = nhwc_buffer(out)
    forward_launch(x_nhwc, weight.contiguous(), bias.contiguous(), y, mean, rstd, eps)()
    if y is not out:
        out.copy_(y)
    return out, mean, rstd


def layer_norm_2d_backward(grad_y, x, weight, mean, rstd):
    """(grad_x in x's memory format, grad_weight, grad_bias in the weight's dtype)."""
    C = x.shape[1]
    grad_x = torch.empty_like(x)
    if x.numel() == 0:
        return grad_x, weight.new_zeros(C), weight.new_zeros(C)
    ws = GradWorkspace({"weight": (C,), "bias": (C,)}, reduction_splits(mean.numel()),
                       weight.dtype, x.device)
    gx = nhwc_buffer(grad_x)
    backward_launch(grad_y.contiguous(memory_format=torch.channels_last),
                    x.contiguous(memory_format=torch.channels_last), weight.contiguous(), mean,
                    rstd, gx, ws["weight"], ws["bias"])()
    if gx is not grad_x:
        grad_x.copy_(gx)
    grads = ws.finalize_each()
    return grad_x, grads["weight"], grads["bias"]
