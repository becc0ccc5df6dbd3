"""Depthwise k×k conv followed by LayerNorm over C, in one Triton kernel (forward).

A program owns BLOCK_W pixels of one output row and all C channels: it accumulates the conv as
the dwconv kernel does, adds the conv bias, normalises each pixel's fp32 accumulator over C and
writes y, the conv output (kept for the backward; not written where no backward comes,
STORE_CONV) and the per-pixel mean and rstd. The backward is the LayerNorm backward (on the kept
conv output) followed by the dwconv backward.
"""
import torch
import triton
import triton.language as tl

from .common import INTERPRETED, Launch, cast_for_store, nhwc_buffer
from .dwconv import conv_tile
from .layer_norm import MAX_CHANNELS, new_row_stats, normalize_rows

_TILE = 2048
_MAX_BLOCK_W = 16


@triton.jit
def _dwconv_layer_norm_kernel(x_ptr, dw_w_ptr, dw_bias_ptr, ln_w_ptr, ln_b_ptr, y_ptr, conv_ptr,
                              mean_ptr, rstd_ptr, H, W, C, eps,
                              K: tl.constexpr, HAS_DW_BIAS: tl.constexpr,
                              STORE_CONV: tl.constexpr, BLOCK_W: tl.constexpr,
                              BLOCK_C: tl.constexpr, INTERPRETED: tl.constexpr):
    row = tl.program_id(0)  # n*H + h
    offs_w = tl.program_id(1) * BLOCK_W + tl.arange(0, BLOCK_W)
    offs_c = tl.arange(0, BLOCK_C)
    mask_c = offs_c < C
    acc = conv_tile(x_ptr, dw_w_ptr, row, H, W, C, offs_w, offs_c, mask_c, K, BLOCK_W, BLOCK_C)
    if HAS_DW_BIAS:
        acc += tl.load(dw_bias_ptr + offs_c, mask=mask_c, other=0.0).to(tl.float32)[None, :]
    mask_w = offs_w < W
    mask = mask_w[:, None] & mask_c[None, :]
    offs = row.to(tl.int64) * W * C + offs_w[:, None] * C + offs_c[None, :]
    if STORE_CONV:
        tl.store(conv_ptr + offs, cast_for_store(acc, conv_ptr.dtype.element_ty, INTERPRETED),
                 mask=mask)
    y, mean, rstd = normalize_rows(acc, mask, offs_c, mask_c, ln_w_ptr, ln_b_ptr, C, eps)
    tl.store(y_ptr + offs, cast_for_store(y, y_ptr.dtype.element_ty, INTERPRETED), mask=mask)
    pixels = row.to(tl.int64) * W + offs_w
    tl.store(mean_ptr + pixels, mean, mask=mask_w)
    tl.store(rstd_ptr + pixels, rstd, mask=mask_w)


def config(C, W):
    """Tiles of at most _TILE elements and at most 16 pixels wide, launched with 4 warps: a
    32-pixel tile of 64 channels with 7×7 taps spilled (89 stores, triton 3.6) at 4 warps and
    at 8 (triton 3.8, k = 3); with the taps read from the weight itself, 8 warps spilled at
    C = 96 (triton 3.8, bf16) and at C = 768 (triton 3.6, fp32 weights), 4 warps at no shape
    of the kernel report in either version."""
    block_c = triton.next_power_of_2(C)
    return {"BLOCK_W": max(1, min(triton.next_power_of_2(W), _TILE // block_c, _MAX_BLOCK_W)),
            "BLOCK_C": block_c}


def forward_launch(x_nhwc, dw_weight, dw_bias, ln_weight, ln_bias, y, conv, mean, rstd, k, eps):
    """x_nhwc N,C,H,W channels_last in any kernel dtype; y, conv N,H,W,C buffers in the compute
    dtype (they may differ from x's: fp32 input under autocast), conv None where it is not kept;
    parameters in any kernel dtype (read and converted in registers)."""
    N, C, H, W = x_nhwc.shape
    cfg = config(C, W)
    grid = (N * H, triton.cdiv(W, cfg["BLOCK_W"]))
    dw_bias_arg = dw_bias if dw_bias is not None else dw_weight  # unread without HAS_DW_BIAS
    return Launch(_dwconv_layer_norm_kernel, grid,
                  (x_nhwc, dw_weight, dw_bias_arg, ln_weight, ln_bias, y,
                   conv if conv is not None else y,  # unwritten without STORE_CONV
                   mean, rstd, H, W, C, eps),
                  dict(K=k, HAS_DW_BIAS=dw_bias is not None, STORE_CONV=conv is not None,
                       INTERPRETED=INTERPRETED, **cfg),
                  flops=2 * k * k * x_nhwc.numel(), num_warps=4)


def check_channels(C):
    if C > MAX_CHANNELS:
        raise ValueError(f"dwconv_layer_norm (triton): at most {MAX_CHANNELS} channels, got {C}")


def dwconv_layer_norm_forward(x, dw_weight, dw_bias, ln_weight, ln_bias, eps, dtype=None,
                              keep_conv=True):
    """(y, conv output, mean, rstd): y and conv in x's memory format and `dtype` (x's by
    default; conv empty without keep_conv), statistics [N,H,W] fp32."""
    check_channels(x.shape[1])
    y = torch.empty_like(x, dtype=dtype)
    conv = torch.empty_like(x, dtype=dtype) if keep_conv else x.new_empty(0, dtype=dtype)
    mean, rstd = new_row_stats(x)
    if x.numel() == 0:
        return y, conv, mean, rstd
    finals = (y, conv) if keep_conv else (y,)
    outs = [nhwc_buffer(t) for t in finals]
    forward_launch(x.contiguous(memory_format=torch.channels_last), dw_weight.contiguous(),
                   dw_bias.contiguous() if dw_bias is not None else None,
                   ln_weight.contiguous(), ln_bias.contiguous(), outs[0],
                   outs[1] if keep_conv else None, mean, rstd, dw_weight.shape[-1], eps)()
    for final, computed in zip(finals, outs):
        if computed is not final:
            final.copy_(computed)
    return y, conv, mean, rstd
