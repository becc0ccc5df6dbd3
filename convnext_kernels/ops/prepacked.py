"""Weights packed once for oneDNN, for fp32 CPU inference (ck.prepack_weights): the blocks' MLP
weights (ops/mlp.py: mlp_prepacked) and the stem's and downsampling layers' patchify convs
(block.PrepackedConv2d). ATen's calls with plain weights reorder them into oneDNN's (or MKL's)
blocked layout on every call, a large part of a call with few rows and a large weight."""
import functools

import torch


@functools.cache  # asked on every packed call (block.packs_may_serve); fixed per process
def available():
    """Whether this torch has the oneDNN ops the prepacked paths call (x86 and aarch64 builds
    with oneDNN do)."""
    return (torch.backends.mkldnn.is_available()
            and all(hasattr(torch.ops.mkldnn, op) for op in (
                "_linear_pointwise", "_reorder_linear_weight", "_convolution_pointwise"))
            and hasattr(torch._C._nn, "mkldnn_reorder_conv2d_weight"))


class PackedWeight:
    """One fp32 weight packed for a oneDNN call, with what it was packed from: the tensor itself
    (held, so that no other tensor can take its storage's address), its data pointer and version
    counter, and the call's context (what the packed layout was chosen for). A change of any (an
    optimizer step, load_state_dict, copy_, a new storage, another image size) packs it again; a
    write that bypasses the version counter (through .data, or a numpy view) is not seen."""

    def __init__(self):
        self.source, self.key, self.packed = None, None, None

    def get(self, weight, pack, context=()):
        """The packed weight; pack(contiguous weight) makes it where it is missing or stale."""
        key = (weight.data_ptr(), weight._version, tuple(weight.shape), weight.stride(), context)
        if self.source is None or self.key != key:
            source = weight.detach()
            self.packed = pack(source.contiguous())
            self.source, self.key = source, key
        return self.packed


def pack_linear(rows):
    """pack for a [N, K] Linear weight used on about `rows` rows."""
    return lambda weight: torch.ops.mkldnn._reorder_linear_weight(weight, rows)


def is_patchify(conv):
    """Whether an nn.Conv2d is a patchify conv (the stem's and the downsampling layers' in
    ConvNeXt): kernel = stride, no padding, no dilation, one group."""
    return (conv.groups == 1 and tuple(conv.stride) == tuple(conv.kernel_size)
            and tuple(conv.padding) == (0, 0) and tuple(conv.dilation) == (1, 1)
            and conv.padding_mode == "zeros")


def pack_patchify(stride, input_shape):
    """pack for a patchify conv's [O, C, k, k] weight on N,C,H,W inputs of input_shape (the
    layout oneDNN picks for one image; packed without a shape, it picked a layout that ran
    2-16x slower than ATen's conv at ConvNeXt-T's downsamplings)."""
    _, C, H, W = input_shape
    return lambda weight: torch._C._nn.mkldnn_reorder_conv2d_weight(
        weight.to_mkldnn(), [0, 0], list(stride), [1, 1], 1, [1, C, H, W])


def patchify_conv(x, packed, bias, stride):
    """conv2d(x, weight, bias, stride) of a patchify conv with its weight packed by
    pack_patchify; x N,C,H,W channels_last fp32, the output channels_last."""
    return torch.ops.mkldnn._convolution_pointwise(x, packed, bias, [0, 0], list(stride),
                                                   [1, 1], 1, "none", [], "")
