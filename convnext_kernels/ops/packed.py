"""Ops on weights packed once for oneDNN, for fp32 CPU inference (ck.prepack_weights): the block's
MLP with fc1 and fc2 packed (PACKED_MLP) and a patchify conv with its weight packed
(PATCHIFY_CONV), and how each weight is packed. ATen's calls with plain weights reorder them
into oneDNN's (or MKL's) blocked layout on every call, a large part of a call with few rows and
a large weight (ConvNeXt's later stages, small batches).

Both are cpp-backend implementations (oneDNN is the CPU library the cpp MLP's GEMMs already
run on). Whether a call may use packs at all is the modules' rule (prepack.packs_may_serve:
inference on real fp32 CPU tensors); whether the packed MLP stands in for the MLP op is this
module's (packed_mlp_serves)."""
import functools

import torch

from .. import backends
from .mlp import MLP

PACKED_MLP = backends.Op("mlp_packed", auto_order={"cpu": ("cpp",)})
PATCHIFY_CONV = backends.Op("patchify_conv_packed", auto_order={"cpu": ("cpp",)})

# The largest [rows, 4C] hidden the packed MLP takes: a larger one leaves the cache, and there
# the cpp MLP, which runs large hiddens in row tiles that stay in cache, was the faster (the two
# timed against each other at ConvNeXt-T's stage shapes: the packed path won at batch 1 and 4,
# lost at batch 32).
MAX_HIDDEN = 1 << 22


@functools.cache  # asked on every packed call (prepack.packs_may_serve); fixed per process
def available():
    """Whether this torch has the oneDNN ops the packed paths call (x86 and aarch64 builds with
    oneDNN do)."""
    return (torch.backends.mkldnn.is_available()
            and all(hasattr(torch.ops.mkldnn, op) for op in (
                "_linear_pointwise", "_reorder_linear_weight", "_convolution_pointwise"))
            and hasattr(torch._C._nn, "mkldnn_reorder_conv2d_weight"))


def pack_linear(rows):
    """pack for a [N, K] Linear weight used on about `rows` rows."""
    return lambda weight: torch.ops.mkldnn._reorder_linear_weight(weight, rows)


def pack_patchify(stride, input_shape):
    """pack for a patchify conv's [O, C, k, k] weight on N,C,H,W inputs of input_shape (the
    layout oneDNN picks for one image; packed without a shape, it picked a layout that ran
    2-16x slower than ATen's conv at ConvNeXt-T's downsamplings)."""
    _, C, H, W = input_shape
    return lambda weight: torch._C._nn.mkldnn_reorder_conv2d_weight(
        weight.to_mkldnn(), [0, 0], list(stride), [1, 1], 1, [1, C, H, W])


def _mlp_packed_cpp(x, fc1_packed, fc1_b, fc2_packed, fc2_b, gamma, residual):
    lp = torch.ops.mkldnn._linear_pointwise
    rows = x.reshape(-1, x.shape[-1])
    hidden = lp(rows, fc1_packed, fc1_b, "gelu", [], "none")  # "none": the exact (erf) GELU
    y = lp(hidden, fc2_packed, fc2_b, "none", [], "")
    res = residual.reshape(y.shape)
    # into y, fc2's fresh output, still in cache: no new tensor to fault in
    out = torch.addcmul(res, y, gamma, out=y) if gamma is not None else y.add_(res)
    return out.view(x.shape)


def _patchify_conv_cpp(x, packed, bias, stride):
    return torch.ops.mkldnn._convolution_pointwise(x, packed, bias, [0, 0], list(stride),
                                                   [1, 1], 1, "none", [], "")


PACKED_MLP.register("cpp", _mlp_packed_cpp)
PATCHIFY_CONV.register("cpp", _patchify_conv_cpp)


def packed_mlp_serves(x, hidden_channels, backend):
    """Whether the packed MLP may stand in for the MLP op in a block call on N,C,H,W `x` with
    the block's `backend`: the MLP op would run cpp there, and the [rows, hidden] tensor has at
    most MAX_HIDDEN elements."""
    rows = x.shape[0] * x.shape[2] * x.shape[3]
    return (rows * hidden_channels <= MAX_HIDDEN
            and MLP.first_serving(MLP.in_block(backend), x, x.shape[1]) == "cpp")


def mlp_packed(x, fc1_packed, fc1_b, fc2_packed, fc2_b, gamma, residual):
    """residual + [gamma *] fc2(gelu(fc1(x))) on rows (..., C), fp32, no autograd, with the
    weights pack_linear packed."""
    return PACKED_MLP.impls["cpp"](x, fc1_packed, fc1_b, fc2_packed, fc2_b, gamma, residual)


def patchify_conv(x, packed, bias, stride):
    """conv2d(x, weight, bias, stride) of a patchify conv with its weight packed by
    pack_patchify; x N,C,H,W channels_last fp32, the output channels_last."""
    return PATCHIFY_CONV.impls["cpp"](x, packed, bias, stride)
