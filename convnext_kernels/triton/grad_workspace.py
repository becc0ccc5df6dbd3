"""Parameter gradients finished on the device in one launch.

Every kernel that reduces a parameter gradient over rows (split-K weight GEMMs, the LayerNorm
and dwconv backward, layer scale's column sums) splits the rows among `splits` programs (or
program rows) and writes its fp32 partial sums into one workspace [splits, columns]: each
gradient owns a column range, each split one row, and every producer writes every element it
owns (a split with no rows writes zeros), so nothing is zero-filled. `finalize` then sums each
column's rows in a fixed order and writes every gradient in its parameter's dtype: one launch for
all of an op's (or the block's) parameter gradients instead of a sum and a cast per parameter,
and deterministic results.
"""
import math

import torch
import triton
import triton.language as tl

from .common import INTERPRETED, Launch, cast_for_store

# Rows of the reduction per split, and the most splits: enough programs to fill an H100 at the
# ConvNeXt-T stage-1 shape (200k rows → 196 splits), a workspace of ~60-75 MB at every T stage
# at batch 64 (splits × columns × 4 B, with rows × C² about constant across stages).
_ROWS_PER_SPLIT = 1024
_MAX_SPLITS = 256
_FINALIZE_BLOCK = 1024


def reduction_splits(rows):
    """Splits of a reduction over `rows` rows: from the shape alone, so results reproduce."""
    return max(1, min(_MAX_SPLITS, triton.cdiv(rows, _ROWS_PER_SPLIT)))


@triton.jit
def _finalize_kernel(partial_ptr, out_ptr, columns, splits, split_stride, BLOCK: tl.constexpr,
                     INTERPRETED: tl.constexpr):
    cols = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < columns
    total = tl.zeros([BLOCK], dtype=tl.float32)
    ptrs = partial_ptr + cols
    for _ in range(splits):  # (pointer steps: 64-bit offsets however large the workspace)
        total += tl.load(ptrs, mask=mask, other=0.0)
        ptrs += split_stride
    tl.store(out_ptr + cols, cast_for_store(total, out_ptr.dtype.element_ty, INTERPRETED),
             mask=mask)


def finalize_launch(partial, out):
    """out (contiguous, `columns` elements) = the column sums of partial [splits, columns] (rows
    strided, columns contiguous), added in a fixed order, in out's dtype."""
    splits, columns = partial.shape
    return Launch(_finalize_kernel, (triton.cdiv(columns, _FINALIZE_BLOCK),),
                  (partial, out, columns, splits, partial.stride(0)),
                  dict(BLOCK=_FINALIZE_BLOCK, INTERPRETED=INTERPRETED))


class GradWorkspace:
    """fp32 partials of the named gradients, [splits, columns]; see the module docstring.
    `shapes` maps a gradient's name to its shape; `dtype` is the dtype gradients are written in
    (their parameters' dtype)."""

    def __init__(self, shapes, splits, dtype, device):
        self.shapes = dict(shapes)
        self.dtype = dtype
        self.columns_of = _column_ranges(self.shapes)
        self.columns = sum(math.prod(shape) for shape in self.shapes.values())
        self.partial = torch.empty(splits, self.columns, device=device, dtype=torch.float32)

    def __getitem__(self, name):
        """The [splits, numel] strided view a producer writes name's partials into."""
        return self.partial[:, self.columns_of[name]]

    def finalize_flat(self):
        """Every gradient, in `dtype`, in one flat buffer (see `unflatten`): one launch. (One
        tensor, because a custom op's outputs may not alias each other.)"""
        flat = torch.empty(self.columns, device=self.partial.device, dtype=self.dtype)
        if self.columns:
            finalize_launch(self.partial, flat)()
        return flat

    def finalize_each(self):
        """{name: gradient} as separate tensors in `dtype`: one launch per gradient."""
        grads = {}
        for name, shape in self.shapes.items():
            grads[name] = torch.empty(shape, device=self.partial.device, dtype=self.dtype)
            if grads[name].numel():
                finalize_launch(self[name], grads[name])()
        return grads


def _column_ranges(shapes):
    """{name: slice of the workspace columns it owns}, in `shapes` order."""
    ranges, start = {}, 0
    for name, shape in shapes.items():
        ranges[name] = slice(start, start + math.prod(shape))
        start += math.prod(shape)
    return ranges


def unflatten(flat, shapes):
    """{name: view of flat} for a GradWorkspace's finalize_flat output (same `shapes` order)."""
    return {name: flat[columns].view(shapes[name])
            for name, columns in _column_ranges(shapes).items()}
