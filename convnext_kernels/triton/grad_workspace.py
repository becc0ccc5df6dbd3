"""Parameter gradients finished on the device in one launch.

Every kernel that reduces a parameter gradient over rows (split-K weight GEMMs, the LayerNorm
and dwconv backward, layer scale's column sums) splits the rows among `splits` programs (or
program rows) and writes its fp32 partial sums into a workspace [splits, columns]: each gradient
owns a column range, each split one row, and every producer writes every element it owns (a
split with no rows writes zeros), so nothing is zero-filled. `finalize` then sums each column's
rows in a fixed order and writes every gradient in its parameter's dtype: one launch for all of
an op's (or the block's) parameter gradients instead of a sum and a cast per parameter, and
deterministic results.

Gradients need not share a split count: a weight gradient from a split-K GEMM needs only the
splits that fill the device with its output tiles, which at ConvNeXt-T stage 4 is one, where a
reduction over the rows takes four (each split of a [4C, C] gradient is 9.4 MB of fp32). Runs of
consecutive gradients with one count share a block [splits, columns]; finalize reads up to three
(in the block: the row reductions', the LayerNorm's from the MLP's grad-hidden kernel, one a row
tile, and the weight GEMMs').
A gradient named `direct` whose count is one has no partials: its producer writes it in its
parameter's dtype straight into the flat buffer (at stage 4 that saves the GEMM gradients' fp32
write and finalize's read of it, 2 x 19 MB, and their slice of the finalize launch).
"""
import math

import torch
import triton
import triton.language as tl

from .common import INTERPRETED, Launch, cast_for_store

# Rows of the reduction per split, and the most splits: enough programs to fill a Hopper GPU
# (132 SMs) at the ConvNeXt-T stage-1 shape (200k rows → 196 splits), a workspace of ~60-75 MB
# at every T stage at batch 64 (splits × columns × 4 B, with rows × C² about constant across
# stages).
_ROWS_PER_SPLIT = 1024
_MAX_SPLITS = 256
_FINALIZE_BLOCK = 1024


def reduction_splits(rows):
    """Splits of a reduction over `rows` rows: from the shape alone, so results reproduce."""
    return max(1, min(_MAX_SPLITS, triton.cdiv(rows, _ROWS_PER_SPLIT)))


@triton.jit
def _block_sums(ptr, out_ptr, chunk, columns, splits, stride, BLOCK: tl.constexpr,
                INTERPRETED: tl.constexpr):
    """out[c] = the sum over splits of column c of one [splits, columns] block, in split order,
    for the chunk's BLOCK columns."""
    cols = chunk * BLOCK + tl.arange(0, BLOCK)
    mask = cols < columns
    total = tl.zeros([BLOCK], dtype=tl.float32)
    ptrs = ptr + cols
    for _ in range(splits):  # (pointer steps: 64-bit offsets however large the workspace)
        total += tl.load(ptrs, mask=mask, other=0.0)
        ptrs += stride
    tl.store(out_ptr + cols, cast_for_store(total, out_ptr.dtype.element_ty, INTERPRETED),
             mask=mask)


@triton.jit
def _finalize_kernel(a_ptr, b_ptr, c_ptr, out_ptr, a_columns, b_columns, c_columns, a_splits,
                     b_splits, c_splits, a_stride, b_stride, c_stride, BLOCK: tl.constexpr,
                     INTERPRETED: tl.constexpr):
    """The column sums of up to three blocks, one after another in out: each program sums BLOCK
    columns of one block over that block's splits."""
    pid = tl.program_id(0)
    a_chunks = tl.cdiv(a_columns, BLOCK)
    b_chunks = tl.cdiv(b_columns, BLOCK)
    if pid < a_chunks:
        _block_sums(a_ptr, out_ptr, pid, a_columns, a_splits, a_stride, BLOCK, INTERPRETED)
    elif pid < a_chunks + b_chunks:
        _block_sums(b_ptr, out_ptr + a_columns, pid - a_chunks, b_columns, b_splits, b_stride,
                    BLOCK, INTERPRETED)
    else:
        _block_sums(c_ptr, out_ptr + a_columns + b_columns, pid - a_chunks - b_chunks,
                    c_columns, c_splits, c_stride, BLOCK, INTERPRETED)


# Blocks of partials one finalize launch sums.
MAX_BLOCKS = 3


def finalize_launch(out, *blocks):
    """out (contiguous) = the column sums of each [splits, columns] block (rows strided, columns
    contiguous), one block's after another's, added in a fixed order, in out's dtype; 1 to
    MAX_BLOCKS blocks."""
    assert 1 <= len(blocks) <= MAX_BLOCKS, f"finalize sums 1 to {MAX_BLOCKS} blocks"
    blocks = list(blocks) + [blocks[0][:0, :0]] * (MAX_BLOCKS - len(blocks))
    assert out.numel() == sum(b.shape[1] for b in blocks)
    programs = sum(triton.cdiv(b.shape[1], _FINALIZE_BLOCK) for b in blocks)
    return Launch(_finalize_kernel, (programs,),
                  (*blocks, out, *(b.shape[1] for b in blocks), *(b.shape[0] for b in blocks),
                   *(b.stride(0) for b in blocks)),
                  dict(BLOCK=_FINALIZE_BLOCK, INTERPRETED=INTERPRETED))


class GradWorkspace:
    """fp32 partials of the named gradients; see the module docstring. `shapes` maps a gradient's
    name to its shape, in the order of finalize_flat's buffer; `splits` is every gradient's
    split count, or a map from each name to its own (at most MAX_BLOCKS runs of equal counts);
    `dtype` is the dtype gradients are written in (their parameters' dtype). `direct`: names,
    the last of `shapes` (names not in it ignored), whose producers can write in `dtype` (they
    cast as they store); those with one split are written straight into `flat`, the buffer
    finalize_flat returns, made here."""

    def __init__(self, shapes, splits, dtype, device, direct=()):
        self.shapes = dict(shapes)
        self.dtype = dtype
        self.columns_of = _column_ranges(self.shapes)
        self.columns = sum(math.prod(shape) for shape in self.shapes.values())
        self.splits = splits if isinstance(splits, dict) else dict.fromkeys(self.shapes, splits)
        names = list(self.shapes)
        direct = [name for name in direct if name in self.shapes]
        if direct != names[len(names) - len(direct):]:
            raise ValueError(f"GradWorkspace: direct gradients {list(direct)} are not the last "
                             f"of {names}")
        self.direct = [name for name in direct if self.splits[name] == 1]
        self.flat = (torch.empty(self.columns, device=device, dtype=dtype) if direct else None)
        runs = []  # [splits, first column, end column] of each block
        for name, columns in self.columns_of.items():
            if name in self.direct:
                continue
            if runs and runs[-1][0] == self.splits[name]:
                runs[-1][2] = columns.stop
            else:
                runs.append([self.splits[name], columns.start, columns.stop])
        if len(runs) > MAX_BLOCKS:
            raise ValueError(f"GradWorkspace: finalize reads {MAX_BLOCKS} blocks, the split "
                             f"counts {self.splits} make {len(runs)}")
        self.partial = torch.empty(sum(n * (stop - start) for n, start, stop in runs),
                                   device=device, dtype=torch.float32)
        self.blocks, offset = [], 0  # (first column, end column, [splits, columns] view)
        for n, start, stop in runs:
            size = n * (stop - start)
            self.blocks.append((start, stop,
                                self.partial[offset:offset + size].view(n, stop - start)))
            offset += size

    def __getitem__(self, name):
        """The [splits, numel] strided view a producer writes name's partials into (for a direct
        gradient, [1, numel] of `flat`, in `dtype`)."""
        columns = self.columns_of[name]
        if name in self.direct:
            return self.flat[columns].view(1, -1)
        start, block = next((start, block) for start, stop, block in self.blocks
                            if start <= columns.start and columns.stop <= stop
                            and block.shape[0] == self.splits[name])
        return block[:, columns.start - start:columns.stop - start]

    def finalize_flat(self):
        """Every gradient, in `dtype`, in one flat buffer (see `unflatten`): one launch. (One
        tensor, because a custom op's outputs may not alias each other.)"""
        flat = self.flat if self.flat is not None else torch.empty(
            self.columns, device=self.partial.device, dtype=self.dtype)
        summed = self.blocks[-1][1] if self.blocks else 0  # columns before the direct ones
        if summed:
            finalize_launch(flat[:summed], *(block for _, _, block in self.blocks))()
        return flat

    def finalize_each(self):
        """{name: gradient} as separate tensors in `dtype`: one launch per gradient."""
        assert self.flat is None, "a workspace with direct gradients finalizes flat"
        grads = {}
        for name, shape in self.shapes.items():
            grads[name] = torch.empty(shape, device=self.partial.device, dtype=self.dtype)
            if grads[name].numel():
                finalize_launch(grads[name], self[name])()
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


def slots_string(shapes):
    """A flat gradient buffer's layout as text, "name:d0xd1;...", in `shapes` order: an op
    argument, so that torch.compile's caches, which key a custom op's graph on its arguments and
    not on its Python backward formula, see a changed layout (a stale cached backward would take
    its views at the old offsets)."""
    return ";".join(f"{name}:{'x'.join(map(str, shape))}" for name, shape in shapes.items())


def slots_shapes(layout):
    """The `shapes` of a slots_string."""
    return {name: tuple(int(d) for d in dims.split("x")) if dims else ()
            for name, dims in (entry.split(":") for entry in layout.split(";") if entry)}
