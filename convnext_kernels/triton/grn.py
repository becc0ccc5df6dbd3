"""ConvNeXt-V2 Global Response Normalisation on an N,H,W,C buffer (rows = N*H*W, C contiguous).

    G[n,c] = ||x[n,:,:,c]||_2,   nx = G / (mean_c G + eps),   y = x * (1 + w*nx) + b

Kernels serving GRN alone and the GRN variant of the MLP:
  per-sample column sums: sums[n,c] = sum over the sample's pixels of u*v (and of u);
  statistics: from the sums of squares, G, nx and the scale 1 + w*nx (one launch);
  backward statistics: from the sums of grad_y*x and of grad_y, the scale and the coefficient c
              with grad_x = grad_y * scale + x * c, and the weight and bias gradients as fp32
              partials of a GradWorkspace (one launch, where torch took ~15 small ones);
  scaled sum: out = u*s_u[n,c] + v*s_v[n,c] + bias[c], where v may be a pre-activation to pass
              through GELU, the result then multiplied by GELU's derivative (the MLP's backward).
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
def _grn_backward_stats_kernel(G_ptr, nx_ptr, weight_ptr, grad_dot_ptr, grad_sum_ptr, scale_ptr,
                               coef_ptr, grad_w_ptr, grad_b_ptr, partial_stride, N, C,
                               rows_per_sample, rows_per_tile, slots, samples_per_split, eps,
                               TINY: tl.constexpr, BLOCK_C: tl.constexpr):
    """Program `split` takes samples [split * samples_per_split, ...): per sample, the sums of
    grad_y * x and of grad_y (from per-sample partials, matmul.py), then the scale and coef (two
    passes over C: the sums, then the values; the first keeps grad_dot in coef's place, read
    back by the threads that stored it), and adds the sample's weight and bias gradient terms
    to the program's workspace rows, zeroed first (written also where it has no samples)."""
    split = tl.program_id(0)
    first = split * samples_per_split
    last = tl.minimum(N, first + samples_per_split)
    row = split.to(tl.int64) * partial_stride
    for c0 in range(0, C, BLOCK_C):
        cols = c0 + tl.arange(0, BLOCK_C)
        zero = tl.zeros([BLOCK_C], dtype=tl.float32)
        tl.store(grad_w_ptr + row + cols, zero, mask=cols < C)
        tl.store(grad_b_ptr + row + cols, zero, mask=cols < C)
    for n in range(first, last):
        base = n * C  # ([N, C] statistics: small)
        G_sum = tl.zeros([BLOCK_C], dtype=tl.float32)
        grad_nx_dot_nx = tl.zeros([BLOCK_C], dtype=tl.float32)
        for c0 in range(0, C, BLOCK_C):
            cols = c0 + tl.arange(0, BLOCK_C)
            mask = cols < C
            grad_dot = sample_sums(grad_dot_ptr, n, cols, mask, C, rows_per_sample,
                                   rows_per_tile, slots)
            tl.store(coef_ptr + base + cols, grad_dot, mask=mask)
            w = tl.load(weight_ptr + cols, mask=mask, other=0.0).to(tl.float32)
            G_sum += tl.load(G_ptr + base + cols, mask=mask, other=0.0)
            grad_nx_dot_nx += w * grad_dot * tl.load(nx_ptr + base + cols, mask=mask, other=0.0)
        denom = tl.sum(G_sum, axis=0) / C + eps
        through_mean = tl.sum(grad_nx_dot_nx, axis=0) / (C * denom)
        tl.debug_barrier()
        for c0 in range(0, C, BLOCK_C):
            cols = c0 + tl.arange(0, BLOCK_C)
            mask = cols < C
            w = tl.load(weight_ptr + cols, mask=mask, other=0.0).to(tl.float32)
            G = tl.load(G_ptr + base + cols, mask=mask, other=0.0)
            nx = tl.load(nx_ptr + base + cols, mask=mask, other=0.0)
            grad_dot = tl.load(coef_ptr + base + cols, mask=mask, other=0.0)
            grad_G = w * grad_dot / denom - through_mean
            # G = 0 (an all-zero channel) passes no gradient through the norm, as
            # torch.linalg.vector_norm's backward; the floor is fp32's smallest normal. (Full-
            # range division, not div_rn: its slow path is a call that spilled on sm_90.)
            coef = tl.where(G > 0, grad_G / tl.maximum(G, TINY), 0.0)
            tl.store(scale_ptr + base + cols, 1.0 + w * nx, mask=mask)
            tl.store(coef_ptr + base + cols, coef, mask=mask)
            grad_sum = sample_sums(grad_sum_ptr, n, cols, mask, C, rows_per_sample,
                                   rows_per_tile, slots)
            tl.store(grad_w_ptr + row + cols,
                     tl.load(grad_w_ptr + row + cols, mask=mask, other=0.0) + nx * grad_dot,
                     mask=mask)
            tl.store(grad_b_ptr + row + cols,
                     tl.load(grad_b_ptr + row + cols, mask=mask, other=0.0) + grad_sum,
                     mask=mask)
        tl.debug_barrier()


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


def grn_backward_stats_launch(G, nx, weight, grad_dot, grad_sum, scale, coef, grad_w, grad_b,
                              eps):
    """scale, coef [N, C] fp32 (grad_x = grad_y * scale + x * coef) from G, nx and the
    per-sample sums grad_dot (of grad_y * x) and grad_sum (of grad_y) (matmul.PerSamplePartials
    of one geometry); the weight and bias gradients' fp32 partials into grad_w, grad_b
    [splits, C] (GradWorkspace views, one program per split)."""
    N, C = G.shape
    splits = grad_w.shape[0]
    block_c, num_warps = _stats_config(C)
    assert _geometry(grad_dot) == _geometry(grad_sum)
    return Launch(_grn_backward_stats_kernel, (splits,),
                  (G, nx, weight.reshape(-1).contiguous(), grad_dot.data, grad_sum.data, scale,
                   coef, grad_w, grad_b, grad_w.stride(0), N, C, *_geometry(grad_dot),
                   triton.cdiv(N, splits), float(eps)),
                  dict(TINY=torch.finfo(torch.float32).tiny, BLOCK_C=block_c),
                  num_warps=num_warps)


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
    scaled_sum_launch(x3, scale, _as_samples(y), bias=bias.reshape(-1).contiguous())()
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
    scale, coef = torch.empty_like(sums)
    grad_dot, grad_sum = (_column_sums_as_partials(t, R) for t in sums)
    grn_backward_stats_launch(G, nx, weight, grad_dot, grad_sum, scale, coef, ws["weight"],
                              ws["bias"], eps)()
    scaled_sum_launch(g3, scale, _as_samples(grad_x), v=x3, s_v=coef)()
    grads = ws.finalize_each()  # (two tensors: a custom op's outputs may not alias)
    return grad_x, grads["weight"], grads["bias"]
