"""Weights packed once for oneDNN in fp32 CPU inference (ck.prepack_weights): the cache that
holds a packed weight while its source is unchanged (PackedWeight), when a call may use packs
(packs_may_serve), the modules holding packs (DropsPacks) and the patchify conv that
prepack_weights swaps in (PrepackedConv2d). The packing and the packed ops: ops/packed.py."""
import torch
from torch import nn

from .backends import autocast_dtype, gradient_needed
from .ops import packed as packed_ops


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


def packs_may_serve(module, x, params):
    """Whether a call of `module` (with ck.prepack_weights) may use weights packed for oneDNN:
    fp32 CPU inference without gradients on a real 4-D tensor, with this torch's oneDNN ops, not
    traced, compiled or under a dispatch mode or autocast (a graph must not capture packs of
    weights that may change)."""
    return (type(x) is torch.Tensor and x.device.type == "cpu" and x.dtype == torch.float32
            and x.dim() == 4 and not module.training
            and not torch.compiler.is_compiling() and not torch.jit.is_tracing()
            and torch._C._len_torch_dispatch_stack() == 0 and autocast_dtype(x) is None
            and all(t.device.type == "cpu" and t.dtype == torch.float32 for t in params)
            and not gradient_needed(x, *params) and packed_ops.available())


class DropsPacks:
    """For modules holding oneDNN packs in _packed: .to()/.half()/... (_apply) drop them, and so
    do pickling and deepcopy (oneDNN tensors do neither; a copy packs anew)."""
    _packed = None

    def _apply(self, fn, *args, **kwargs):
        self._packed = None
        return super()._apply(fn, *args, **kwargs)

    def __getstate__(self):
        state = self.__dict__.copy()
        state.pop("_packed", None)
        return state


def is_patchify(conv):
    """Whether an nn.Conv2d is a patchify conv (the stem's and the downsampling layers' in
    ConvNeXt): kernel = stride, no padding, no dilation, one group."""
    return (conv.groups == 1 and tuple(conv.stride) == tuple(conv.kernel_size)
            and tuple(conv.padding) == (0, 0) and tuple(conv.dilation) == (1, 1)
            and conv.padding_mode == "zeros")


class PrepackedConv2d(DropsPacks, nn.Conv2d):
    """What ck.prepack_weights turns a model's patchify nn.Conv2d (is_patchify) into, in place
    (the same object, parameters and state_dict; enabled=False and revert_model turn it back):
    where packs_may_serve and x is channels_last, oneDNN's conv with the weight packed once
    (ops/packed.py: ATen's conv reorders the weight on every call); every other call is
    nn.Conv2d's."""

    def forward(self, x):
        params = [self.weight] + ([self.bias] if self.bias is not None else [])
        if not (packs_may_serve(self, x, params)
                and x.is_contiguous(memory_format=torch.channels_last)):
            return super().forward(x)
        if self._packed is None:
            self._packed = PackedWeight()
        weight = self._packed.get(self.weight, packed_ops.pack_patchify(self.stride, x.shape),
                                  context=tuple(x.shape[1:]))
        return packed_ops.patchify_conv(x, weight, self.bias, self.stride)
