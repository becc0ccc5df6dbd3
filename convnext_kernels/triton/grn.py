"""ConvNeXt-V2 Global Response Normalisation on an N,H,W,C buffer (rows = N*H*W, C contiguous).

    G[n,c] = ||x[n,:,:,c]||_2,   nx = G / (mean_c G + eps),   y = x * (1 + w*nx) + b

Kernels serving GRN alone and the GRN variant of the MLP:
  per-sample column sums: sums[n,c] = sum over the sample's pixels of u*v (and of u);
  statistics: from the sums of squares, G, nx and the scale 1 + w*nx (one launch);
  scaled sum: y = x * scale[n,c] + bias[c] (GRN alone; the MLP applies it in fc2's prologue);
  backward: from the sums of grad_y*x and of grad_y, the backward statistics (each program
              makes its sample's), grad_x = grad_y * scale + x * coef (or, through GELU, as the
              MLP's backward needs it), and the weight and bias gradients as fp32 partials of a
              GradWorkspace, in one launch (torch took ~15 small ones).
The statistics have a torch twin in csrc/cpu/grn_stats.h (the cpp backend), pinned together by
tests/test_grn.py::test_cpu_and_triton_statistics_agree.
"""
import torch
import triton
import triton.language as tl

from .common import INTERPRETED, Launch, cast_for_store
from .grad_workspace import GradWorkspace, reduction_splits
from .matmul import PerSamplePartials, gelu, gelu_grad, sample_sums

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
def _scaled_sum_kernel(u_ptr, s_u_ptr, bias_ptr, out_ptr, ROWS, C, rows_per_sample,
                       BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr, INTERPRETED: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    cols = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    row_mask = rows < ROWS
    col_mask = cols < C
    mask = row_mask[:, None] & col_mask[None, :]
    offs = rows.to(tl.int64)[:, None] * C + cols[None, :]
    stat_offs = (rows // rows_per_sample)[:, None] * C + cols[None, :]
    out = tl.load(u_ptr + offs, mask=mask, other=0.0).to(tl.float32) \
        * tl.load(s_u_ptr + stat_offs, mask=mask, other=0.0)
    out += tl.load(bias_ptr + cols, mask=col_mask, other=0.0).to(tl.float32)[None, :]
    tl.store(out_ptr + offs, cast_for_store(out, out_ptr.dtype.element_ty, INTERPRETED),
             mask=mask)


def _block_c(C):
    return min(triton.next_power_of_2(C), _MAX_BLOCK_C)


def column_sums_launch(u, v, uv_sums, u_sums=None):
    """uv_sums[n,c] = sum of u*v over sample n's rows (and u_sums of u); u, v [N, R, C]."""
    N, R, C = u.shape
    block_c = _block_c(C)
    block_r = _row_block(block_c)
    return Launch(_per_sample_column_sums_kernel, (N, triton.cdiv(C, block_c)),
                  (u, v, uv_sums, u_sums if u_sums is not None else uv_sums, R, C),
                  dict(SUM_U=u_sums is not None, BLOCK_R=block_r, BLOCK_C=block_c))


def _row_block(block_c):
    return max(1, min(64, _TILE // block_c))


def scaled_sum_launch(u, s_u, bias, out):
    """out = u*s_u[n,c] + bias[c]; u, out [N, R, C]; s_u fp32 [N, C]."""
    N, R, C = u.shape
    block_c = _block_c(C)
    block_r = _row_block(block_c)
    rows = N * R
    return Launch(_scaled_sum_kernel, (triton.cdiv(rows, block_r), triton.cdiv(C, block_c)),
                  (u, s_u, bias, out, rows, C, max(R, 1)),
                  dict(BLOCK_R=block_r, BLOCK_C=block_c, INTERPRETED=INTERPRETED))


@triton.jit
def _grn_stats_kernel(sumsq_ptr, weight_ptr, G_ptr, nx_ptr, scale_ptr, C, rows_per_sample,
                      rows_per_tile, slots, eps, BLOCK_C: tl.constexpr):
    """One program per sample: G = sqrt(sum of squares) (from per-sample partials, matmul.py),
    nx = G / (mean G + eps), scale = 1 + w*nx. IEEE square roots and divisions (sqrt_rn,
    div_rn; Triton's defaults are approximate on a GPU), as torch and the cpp backend compute
    them. G is stored in the first pass and read back (by the threads that stored it) in the
    second."""
    sample = tl.program_id(0)
    base = sample.to(tl.int64) * C
    G_sum = tl.zeros([BLOCK_C], dtype=tl.float32)
    for c0 in range(0, C, BLOCK_C):
        cols = c0 + tl.arange(0, BLOCK_C)
        mask = cols < C
        G = tl.sqrt_rn(sample_sums(sumsq_ptr, sample, cols, mask, C, rows_per_sample,
                                   rows_per_tile, slots))
        tl.store(G_ptr + base + cols, G, mask=mask)
        G_sum += G
    denom = tl.div_rn(tl.sum(G_sum, axis=0), C.to(tl.float32)) + eps
    tl.debug_barrier()
    for c0 in range(0, C, BLOCK_C):
        cols = c0 + tl.arange(0, BLOCK_C)
        mask = cols < C
        G = tl.load(G_ptr + base + cols, mask=mask, other=0.0)
        nx = tl.div_rn(G, tl.full([BLOCK_C], denom, tl.float32))
        w = tl.load(weight_ptr + cols, mask=mask, other=0.0).to(tl.float32)
        tl.store(nx_ptr + base + cols, nx, mask=mask)
        tl.store(scale_ptr + base + cols, 1.0 + w * nx, mask=mask)


@triton.jit
def _grn_backward_kernel(grad_y_ptr, x_ptr, G_ptr, nx_ptr, weight_ptr, grad_dot_ptr,
                         grad_sum_ptr, grad_x_ptr, scale_ptr, coef_ptr, grad_w_ptr, grad_b_ptr,
                         partial_stride, N, C, rows_per_sample, rows_per_tile, slots, row_chunks,
                         rows_per_chunk, splits, samples_per_split, eps,
                         X_IS_PRE_GELU: tl.constexpr, STORE_SCALE: tl.constexpr,
                         STORE_COEF: tl.constexpr, TINY: tl.constexpr, BLOCK_R: tl.constexpr,
                         BLOCK_C: tl.constexpr,
                         STATS_BLOCK_C: tl.constexpr, INTERPRETED: tl.constexpr):
    """grad_x = grad_y * scale + x * coef (X_IS_PRE_GELU: x is GELU's input, and
    grad_x = (grad_y * scale + gelu(x) * coef) * gelu'(x)), with GRN's backward statistics made
    where they are used. Program (p, j), p = sample * row_chunks + chunk, owns rows_per_chunk rows
    of one sample and BLOCK_C channels. It first reduces its sample's two scalars over all C
    (mean G, and the gradient through that mean), from G, nx and the per-sample partials of
    grad_y * x (matmul.PerSamplePartials): every program of a sample repeats that reduction
    (reads of [slots, C] fp32 that stay in L2) instead of a launch between. Programs p < splits
    also write the weight and bias gradients' fp32 partials of their split's samples (a
    GradWorkspace row, the terms added in sample order); chunk 0 stores scale = 1 + w*nx
    (STORE_SCALE: the fc2 weight gradient's GRN output) and coef (STORE_COEF: for a kernel that
    applies them itself, launched with no rows, rows_per_chunk = 0)."""
    p = tl.program_id(0)
    cols = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    col_mask = cols < C
    w = tl.load(weight_ptr + cols, mask=col_mask, other=0.0).to(tl.float32)
    if p < splits:
        grad_w = tl.zeros([BLOCK_C], dtype=tl.float32)
        grad_b = tl.zeros([BLOCK_C], dtype=tl.float32)
        for n in range(p * samples_per_split, tl.minimum(N, (p + 1) * samples_per_split)):
            grad_dot = sample_sums(grad_dot_ptr, n, cols, col_mask, C, rows_per_sample,
                                   rows_per_tile, slots)
            grad_w += tl.load(nx_ptr + n * C + cols, mask=col_mask, other=0.0) * grad_dot
            grad_b += sample_sums(grad_sum_ptr, n, cols, col_mask, C, rows_per_sample,
                                  rows_per_tile, slots)
        row = p.to(tl.int64) * partial_stride
        tl.store(grad_w_ptr + row + cols, grad_w, mask=col_mask)
        tl.store(grad_b_ptr + row + cols, grad_b, mask=col_mask)
    if p < N * row_chunks:
        n = p // row_chunks
        chunk = p % row_chunks
        base = n * C  # ([N, C] statistics: small)
        G_sum = tl.zeros([STATS_BLOCK_C], dtype=tl.float32)
        grad_nx_dot_nx = tl.zeros([STATS_BLOCK_C], dtype=tl.float32)
        for c0 in range(0, C, STATS_BLOCK_C):
            all_cols = c0 + tl.arange(0, STATS_BLOCK_C)
            mask = all_cols < C
            grad_dot = sample_sums(grad_dot_ptr, n, all_cols, mask, C, rows_per_sample,
                                   rows_per_tile, slots)
            G_sum += tl.load(G_ptr + base + all_cols, mask=mask, other=0.0)
            grad_nx_dot_nx += tl.load(weight_ptr + all_cols, mask=mask, other=0.0).to(
                tl.float32) * grad_dot * tl.load(nx_ptr + base + all_cols, mask=mask, other=0.0)
        denom = tl.sum(G_sum, axis=0) / C + eps
        through_mean = tl.sum(grad_nx_dot_nx, axis=0) / (C * denom)
        G = tl.load(G_ptr + base + cols, mask=col_mask, other=0.0)
        nx = tl.load(nx_ptr + base + cols, mask=col_mask, other=0.0)
        grad_dot = sample_sums(grad_dot_ptr, n, cols, col_mask, C, rows_per_sample,
                               rows_per_tile, slots)
        grad_G = w * grad_dot / denom - through_mean
        # G = 0 (an all-zero channel) passes no gradient through the norm, as
        # torch.linalg.vector_norm's backward; the floor is fp32's smallest normal. (Full-range
        # division, not div_rn: its slow path is a call that spilled on sm_90.)
        coef = tl.where(G > 0, grad_G / tl.maximum(G, TINY), 0.0)
        scale = 1.0 + w * nx
        if STORE_SCALE:
            tl.store(scale_ptr + base + cols, scale, mask=col_mask & (chunk == 0))
        if STORE_COEF:
            tl.store(coef_ptr + base + cols, coef, mask=col_mask & (chunk == 0))
        first = chunk * rows_per_chunk
        end = tl.minimum(rows_per_sample, first + rows_per_chunk)
        sample_row = n.to(tl.int64) * rows_per_sample
        for r0 in range(first, end, BLOCK_R):
            rows = r0 + tl.arange(0, BLOCK_R)
            mask = (rows < end)[:, None] & col_mask[None, :]
            offs = (sample_row + rows)[:, None] * C + cols[None, :]
            out = tl.load(grad_y_ptr + offs, mask=mask, other=0.0).to(tl.float32) * scale[None, :]
            x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
            if X_IS_PRE_GELU:
                out = (out + gelu(x) * coef[None, :]) * gelu_grad(x)
            else:
                out += x * coef[None, :]
            tl.store(grad_x_ptr + offs, cast_for_store(out, grad_x_ptr.dtype.element_ty,
                                                       INTERPRETED), mask=mask)


def _stats_config(C):
    """(BLOCK_C, num_warps): eight channels per thread (16-byte fp32 accesses; at four, triton
    3.6 kept a loop value of the backward statistics on the stack: 1-2 spill stores on sm_90);
    at most 512 per step (1024 at 4 warps spilled a store)."""
    block_c = min(triton.next_power_of_2(C), 512)
    return block_c, max(1, min(4, block_c // 256))


def _geometry(partials):
    return partials.rows_per_sample, partials.rows_per_tile, partials.slots


def grn_stats_launch(sumsq, weight, G, nx, scale, eps):
    """G, nx, scale [N, C] fp32 from the sums of squares (matmul.PerSamplePartials)."""
    N, C = G.shape
    block_c, num_warps = _stats_config(C)
    return Launch(_grn_stats_kernel, (N,),
                  (sumsq.data, weight.reshape(-1).contiguous(), G, nx, scale, C,
                   *_geometry(sumsq), float(eps)),
                  dict(BLOCK_C=block_c), num_warps=num_warps)


# Rows a backward program takes at most: enough work to amortise its statistics pass over C.
_ROWS_PER_CHUNK = 512


def grn_backward_launch(grad_y, x, G, nx, weight, grad_dot, grad_sum, grad_x, grad_w, grad_b,
                        eps, scale=None, x_is_pre_gelu=False):
    """grad_x [N, R, C] from grad_y and x [N, R, C] (x_is_pre_gelu: GELU's input, the result
    then GRN's and GELU's input gradient), G and nx [N, C] fp32 and the per-sample sums grad_dot
    (of grad_y * x, or * gelu(x)) and grad_sum (of grad_y) (matmul.PerSamplePartials of one
    geometry); the weight and bias gradients' fp32 partials into grad_w, grad_b [splits, C]
    (GradWorkspace views); scale [N, C] fp32 = 1 + w*nx where given. grad_x may be grad_y."""
    R = x.shape[1]
    row_chunks = triton.cdiv(R, _ROWS_PER_CHUNK)
    return _backward_launch(grad_y, x, grad_x, row_chunks, triton.cdiv(R, row_chunks), G, nx,
                            weight, grad_dot, grad_sum, grad_w, grad_b, eps, scale, None,
                            x_is_pre_gelu)


def grn_coefficients_launch(G, nx, weight, grad_dot, grad_sum, scale, coef, grad_w, grad_b, eps):
    """GRN's backward statistics without the rows: scale = 1 + w*nx and coef [N, C] fp32, with
    which GRN's and GELU's input gradient is (grad_y * scale + gelu(h) * coef) * gelu'(h) (the
    MLP's fused grad-hidden kernel applies it), and the weight and bias gradients' partials, as
    grn_backward_launch makes them."""
    return _backward_launch(G, G, G, 1, 0, G, nx, weight, grad_dot, grad_sum, grad_w, grad_b,
                            eps, scale, coef, False)


def _backward_launch(grad_y, x, grad_x, row_chunks, rows_per_chunk, G, nx, weight, grad_dot,
                     grad_sum, grad_w, grad_b, eps, scale, coef, x_is_pre_gelu):
    N, C = G.shape
    splits = grad_w.shape[0]
    block_c = _block_c(C)
    assert _geometry(grad_dot) == _geometry(grad_sum)
    return Launch(_grn_backward_kernel, (max(N * row_chunks, splits), triton.cdiv(C, block_c)),
                  (grad_y, x, G, nx, weight.reshape(-1).contiguous(), grad_dot.data,
                   grad_sum.data, grad_x, *(t if t is not None else G for t in (scale, coef)),
                   grad_w, grad_b, grad_w.stride(0), N, C, *_geometry(grad_dot), row_chunks,
                   rows_per_chunk, splits, triton.cdiv(N, splits), float(eps)),
                  dict(X_IS_PRE_GELU=x_is_pre_gelu, STORE_SCALE=scale is not None,
                       STORE_COEF=coef is not None, TINY=torch.finfo(torch.float32).tiny,
                       BLOCK_R=_row_block(block_c), BLOCK_C=block_c,
                       STATS_BLOCK_C=min(triton.next_power_of_2(C), 1024),
                       INTERPRETED=INTERPRETED))


def grn_statistics(sumsq, samples, weight, eps):
    """(G, nx, scale), [samples, C] fp32 each, from the sums of squares
    (matmul.PerSamplePartials)."""
    G, nx, scale = (sumsq.data.new_empty(samples, sumsq.data.shape[-1]) for _ in range(3))
    if G.numel():
        grn_stats_launch(sumsq, weight, G, nx, scale, eps)()
    return G, nx, scale


def _column_sums_as_partials(sums, rows_per_sample):
    """[N, C] per-sample sums (column_sums_launch) as PerSamplePartials: a tile per sample."""
    return PerSamplePartials(sums.unsqueeze(1), rows_per_sample, rows_per_sample)


def _as_samples(t):
    N, H, W, C = t.shape
    return t.reshape(N, H * W, C)


def grn_forward(x, weight, bias, eps):
    """(y, G, nx) for N,H,W,C-contiguous x; G and nx are [N, C] fp32, saved for the backward."""
    x3 = _as_samples(x)
    N, _, C = x3.shape
    y = torch.empty_like(x)
    if x.numel() == 0:
        return y, *(torch.zeros(N, C, device=x.device, dtype=torch.float32) for _ in range(2))
    sumsq = torch.empty(N, C, device=x.device, dtype=torch.float32)  # (written whole)
    column_sums_launch(x3, x3, sumsq)()
    G, nx, scale = grn_statistics(_column_sums_as_partials(sumsq, x3.shape[1]), N, weight, eps)
    scaled_sum_launch(x3, scale, bias.reshape(-1).contiguous(), _as_samples(y))()
    return y, G, nx


def grn_backward(grad_y, x, weight, G, nx, eps):
    """(grad_x, grad_weight, grad_bias) of grn; the parameter gradients in weight's dtype."""
    x3, g3 = _as_samples(x), _as_samples(grad_y)
    N, R, C = x3.shape
    grad_x = torch.empty_like(x)
    if x.numel() == 0:
        return grad_x, torch.zeros_like(weight), torch.zeros_like(weight)
    sums = torch.empty(2, N, C, device=x.device, dtype=torch.float32)
    column_sums_launch(g3, x3, sums[0], sums[1])()
    # (the op takes no bias: its gradient has the weight's shape and dtype)
    ws = GradWorkspace({"weight": weight.shape, "bias": weight.shape}, reduction_splits(N * R),
                       weight.dtype, x.device)
    grad_dot, grad_sum = (_column_sums_as_partials(t, R) for t in sums)
    grn_backward_launch(g3, x3, G, nx, weight, grad_dot, grad_sum, _as_samples(grad_x),
                        ws["weight"], ws["bias"], eps)()
    grads = ws.finalize_each()  # (two tensors: a custom op's outputs may not alias)
    return grad_x, grads["weight"], grads["bias"]
