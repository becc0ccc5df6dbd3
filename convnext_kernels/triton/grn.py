"""ConvNeXt-V2 Global Response Normalisation on an N,H,W,C buffer (rows = N*H*W, C contiguous).

    G[n,c] = ||x[n,:,:,c]||_2,   nx = G / (mean_c G + eps),   y = x * (1 + w*nx) + b

Two kernels serve GRN alone and the GRN variant of the MLP:
  per-sample column sums: sums[n,c] = sum over the sample's pixels of u*v (and of u);
  scaled sum: out = u*s_u[n,c] + v*s_v[n,c] + bias[c], where v may be a pre-activation to pass
              through GELU, the result then multiplied by GELU's derivative (the MLP's backward).
The [N, C] statistics between them are tiny and computed with torch (grn_scales / grn_input_grad
_scales below, shared by every backend).
"""
import torch
import triton
import triton.language as tl

from .common import INTERPRETED, Launch, cast_for_store
from .matmul import gelu, gelu_grad

_TILE = 4096
_MAX_BLOCK_C = 256


@triton.jit
def _per_sample_column_sums_kernel(u_ptr, v_ptr, uv_sums_ptr, u_sums_ptr, rows_per_sample, C,
                                   SUM_U: tl.constexpr, BLOCK_R: tl.constexpr,
                                   BLOCK_C: tl.constexpr):
    sample = tl.program_id(0)
    cols = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    col_mask = cols < C
    base = sample.to(tl.int64) * rows_per_sample * C
    uv = tl.zeros([BLOCK_C], dtype=tl.float32)
    u_sum = tl.zeros([BLOCK_C], dtype=tl.float32)
    for r0 in range(0, rows_per_sample, BLOCK_R):
        rows = r0 + tl.arange(0, BLOCK_R)
        mask = (rows < rows_per_sample)[:, None] & col_mask[None, :]
        offs = base + rows[:, None] * C + cols[None, :]
        u = tl.load(u_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        v = tl.load(v_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        uv += tl.sum(u * v, axis=0)
        if SUM_U:
            u_sum += tl.sum(u, axis=0)
    tl.store(uv_sums_ptr + sample * C + cols, uv, mask=col_mask)
    if SUM_U:
        tl.store(u_sums_ptr + sample * C + cols, u_sum, mask=col_mask)


@triton.jit
def _scaled_sum_kernel(u_ptr, s_u_ptr, v_ptr, s_v_ptr, bias_ptr, out_ptr, ROWS, C,
                       rows_per_sample, HAS_V: tl.constexpr, HAS_BIAS: tl.constexpr,
                       V_IS_PRE_GELU: tl.constexpr, BLOCK_R: tl.constexpr,
                       BLOCK_C: tl.constexpr, INTERPRETED: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    cols = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    row_mask = rows < ROWS
    col_mask = cols < C
    mask = row_mask[:, None] & col_mask[None, :]
    offs = rows.to(tl.int64)[:, None] * C + cols[None, :]
    stat_offs = (rows // rows_per_sample)[:, None] * C + cols[None, :]
    out = tl.load(u_ptr + offs, mask=mask, other=0.0).to(tl.float32) \
        * tl.load(s_u_ptr + stat_offs, mask=mask, other=0.0)
    if HAS_V:
        v = tl.load(v_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        if V_IS_PRE_GELU:
            out = (out + gelu(v) * tl.load(s_v_ptr + stat_offs, mask=mask, other=0.0)) \
                * gelu_grad(v)
        else:
            out += v * tl.load(s_v_ptr + stat_offs, mask=mask, other=0.0)
    if HAS_BIAS:
        out += tl.load(bias_ptr + cols, mask=col_mask, other=0.0).to(tl.float32)[None, :]
    tl.store(out_ptr + offs, cast_for_store(out, out_ptr.dtype.element_ty, INTERPRETED),
             mask=mask)


def _block_c(C):
    return min(triton.next_power_of_2(C), _MAX_BLOCK_C)


def column_sums_launch(u, v, uv_sums, u_sums=None):
    """uv_sums[n,c] = sum of u*v over sample n's rows (and u_sums of u); u, v [N, R, C]."""
    N, R, C = u.shape
    block_c = _block_c(C)
    block_r = max(1, min(64, _TILE // block_c))
    return Launch(_per_sample_column_sums_kernel, (N, triton.cdiv(C, block_c)),
                  (u, v, uv_sums, u_sums if u_sums is not None else uv_sums, R, C),
                  dict(SUM_U=u_sums is not None, BLOCK_R=block_r, BLOCK_C=block_c))


def scaled_sum_launch(u, s_u, out, v=None, s_v=None, bias=None, v_is_pre_gelu=False):
    """out = u*s_u[n,c] (+ v*s_v[n,c]) (+ bias[c]); u, v, out [N, R, C]; s_* fp32 [N, C]. With
    v_is_pre_gelu: out = (u*s_u + gelu(v)*s_v) * gelu'(v)."""
    N, R, C = u.shape
    block_c = _block_c(C)
    block_r = max(1, min(64, _TILE // block_c))
    rows = N * R
    return Launch(_scaled_sum_kernel, (triton.cdiv(rows, block_r), triton.cdiv(C, block_c)),
                  (u, s_u, v if v is not None else u, s_v if s_v is not None else s_u,
                   bias if bias is not None else s_u, out, rows, C, max(R, 1)),
                  dict(HAS_V=v is not None, HAS_BIAS=bias is not None,
                       V_IS_PRE_GELU=v_is_pre_gelu, BLOCK_R=block_r, BLOCK_C=block_c,
                       INTERPRETED=INTERPRETED))


def grn_scales(sumsq, weight, eps):
    """From the per-(sample, channel) sums of squares [N, C] fp32: (G, nx, 1 + w*nx)."""
    G = sumsq.sqrt()
    nx = G / (G.mean(-1, keepdim=True) + eps)
    return G, nx, 1.0 + weight.reshape(-1).float() * nx


def grn_input_grad_scales(G, nx, weight, grad_dot_x, eps):
    """The coefficient c[n,k] with grad_x = grad_y * (1 + w*nx) + x * c, from the sums
    grad_dot_x[n,k] = sum over the sample's pixels of grad_y * x. G = 0 (an all-zero channel)
    gets no gradient through the norm, as torch.linalg.vector_norm's backward."""
    C = G.shape[-1]
    denom = G.mean(-1, keepdim=True) + eps
    grad_nx = weight.reshape(-1).float() * grad_dot_x
    grad_G = grad_nx / denom - (grad_nx * nx).sum(-1, keepdim=True) / (C * denom)
    # the smallest normal of G's dtype, as csrc/cpu/grn_stats.h (pinned by a test)
    return torch.where(G > 0, grad_G / G.clamp_min(torch.finfo(G.dtype).tiny), 0.0)


def _as_samples(t):
    N, H, W, C = t.shape
    return t.reshape(N, H * W, C)


def grn_forward(x, weight, bias, eps):
    """(y, G, nx) for N,H,W,C-contiguous x; G and nx are [N, C] fp32, saved for the backward."""
    x3 = _as_samples(x)
    N, _, C = x3.shape
    y = torch.empty_like(x)
    sumsq = torch.zeros(N, C, device=x.device, dtype=torch.float32)
    if x.numel() == 0:
        return y, sumsq, sumsq.clone()
    column_sums_launch(x3, x3, sumsq)()
    G, nx, scale = grn_scales(sumsq, weight, eps)
    scaled_sum_launch(x3, scale, _as_samples(y), bias=bias.reshape(-1).contiguous())()
    return y, G, nx


def grn_backward(grad_y, x, weight, G, nx, eps):
    """(grad_x, grad_weight, grad_bias) of grn."""
    x3, g3 = _as_samples(x), _as_samples(grad_y)
    N, _, C = x3.shape
    grad_x = torch.empty_like(x)
    grad_dot_x = torch.zeros(N, C, device=x.device, dtype=torch.float32)
    grad_sum = torch.zeros_like(grad_dot_x)
    if x.numel() != 0:
        column_sums_launch(g3, x3, grad_dot_x, grad_sum)()
        scale = 1.0 + weight.reshape(-1).float() * nx
        coef = grn_input_grad_scales(G, nx, weight, grad_dot_x, eps)
        scaled_sum_launch(g3, scale, _as_samples(grad_x), v=x3, s_v=coef)()
    grad_weight = (nx * grad_dot_x).sum(0).to(weight.dtype).reshape(weight.shape)
    grad_bias = grad_sum.sum(0).to(weight.dtype).reshape(weight.shape)
    return grad_x, grad_weight, grad_bias
