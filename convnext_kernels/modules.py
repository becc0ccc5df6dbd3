"""FusedConvNeXtBlock: the ConvNeXt V1/V2 block.

Where its backend resolves to triton: one op with one autograd, the whole block forward and
backward in 7 to 10 launches (V2, with GRN: 11 to 12; ops/whole_block.py,
triton/whole_block.py).
Otherwise two fused ops,

    y   = dwconv_layer_norm(x)                          (one kernel on GPU)
    out = mlp(y, residual=x, gamma, drop_scale, grn)    (fc1+GELU[+GRN sums], fc2+scales+residual)

on channels_last data, where the N,H,W,C views of x and y are the MLP's rows: no permute copies.

Its parameters live where the source block keeps them. Built directly, its source is the
official code (dwconv, norm, pwconv1, [grn], pwconv2, gamma), so official checkpoints load
unchanged; built by `from_block` from a timm or torchvision block, the fused block adopts that
block's own submodules (same Parameter objects, same state_dict keys) and reads the weights
through sources.WEIGHT_PATHS (a 1×1 conv weight or torchvision's [C,1,1] layer scale is a
view).
"""

import torch
import torch.fx
from torch import nn

from . import reference
from .backends import autocast_dtype
from .ops import packed as packed_ops
from .ops.dwconv_layer_norm import dwconv_layer_norm
from .ops.layer_norm import layer_norm_2d
from .ops.mlp import MLP, mlp
from .ops.whole_block import BLOCK, BlockWeights, whole_block
from .prepack import DropsPacks, PackedWeight, packs_may_serve
from .sources import PATHS, WEIGHT_PATHS, describe_block, get_path

class GRN(nn.Module):
    """The official ConvNeXt-V2 GRN's parameters (gamma, beta [1,1,1,C], zero-initialised), so
    that state_dict keys match; the computation is fused into the MLP."""

    def __init__(self, dim):
        super().__init__()
        self.gamma = nn.Parameter(torch.zeros(1, 1, 1, dim))
        self.beta = nn.Parameter(torch.zeros(1, 1, 1, dim))

    def forward(self, x):
        return reference.grn(x, self.gamma, self.beta)


class FusedConvNeXtBlock(DropsPacks, nn.Module):
    """ConvNeXt block on N,C,H,W input: dwconv k×k → LayerNorm → Linear(C, r·C) → GELU → [GRN] →
    Linear(r·C, C) → [·gamma] → drop path → + x. V1: layer scale (layer_scale_init_value,
    1e-6 by default), V2: use_grn=True, no layer scale unless layer_scale_init_value > 0 is
    given (so its parameters are exactly the official V2 block's). channels_last input is the
    fast path and the output keeps the input's memory format. `backend` as for every ck op;
    "cuda" runs the CUDA dwconv+norm kernel and the Triton MLP (the MLP op's in_block rule)."""

    def __init__(self, dim, drop_path=0.0, layer_scale_init_value=None, kernel_size=7,
                 mlp_ratio=4, use_grn=False, eps=1e-6, backend="auto"):
        super().__init__()
        if layer_scale_init_value is None:
            layer_scale_init_value = 0.0 if use_grn else 1e-6
        if kernel_size % 2 == 0:
            raise ValueError(f"FusedConvNeXtBlock: kernel_size must be odd, got {kernel_size}")
        if not isinstance(mlp_ratio, int) or mlp_ratio < 1:
            raise ValueError(f"FusedConvNeXtBlock: mlp_ratio must be a positive int, got "
                             f"{mlp_ratio!r}")
        hidden = mlp_ratio * dim
        self.dwconv = nn.Conv2d(dim, dim, kernel_size, padding=kernel_size // 2, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=eps)
        self.pwconv1 = nn.Linear(dim, hidden)
        if use_grn:
            self.grn = GRN(hidden)
        self.pwconv2 = nn.Linear(hidden, dim)
        use_gamma = layer_scale_init_value is not None and layer_scale_init_value > 0
        self.gamma = nn.Parameter(layer_scale_init_value * torch.ones(dim)) if use_gamma else None
        self._configure("official", drop_path, eps, backend, use_grn)

    def _configure(self, source, drop_path, eps, backend, use_grn, grn_eps=1e-6):
        if not 0.0 <= drop_path < 1.0:
            raise ValueError(f"FusedConvNeXtBlock: drop_path must be in [0, 1), got {drop_path}")
        self.source = source  # the library whose weight paths it reads (sources.WEIGHT_PATHS)
        # Not `drop_path`: the anchors keep their DropPath module under that name.
        self.drop_prob = float(drop_path)
        self.eps = float(eps)
        self.grn_eps = float(grn_eps)
        self.backend = backend
        self.use_grn = use_grn

    @classmethod
    def from_block(cls, block, backend="auto"):
        """A fused block computing what `block` computes (an official V1/V2 Block, a timm
        ConvNeXtBlock or a torchvision CNBlock), adopting its submodules and parameters."""
        spec = describe_block(block)
        fused = cls.__new__(cls)
        nn.Module.__init__(fused)
        for name, child in block.named_children():
            fused.add_module(name, child)
        for name, param in block.named_parameters(recurse=False):
            fused.register_parameter(name, param)
        gamma_path = WEIGHT_PATHS[spec["source"]]["gamma"]
        if not hasattr(fused, gamma_path):  # no layer scale (V2): the anchors set it to None
            setattr(fused, gamma_path, None)
        fused._configure(spec["source"], spec["drop_path"], spec["eps"], backend,
                         spec["use_grn"], spec["grn_eps"])
        # The source block itself, for revert_model (not a submodule: its parameters are the
        # fused block's own, registered once).
        object.__setattr__(fused, "source_block", block)
        return fused.train(block.training)

    def weights(self):
        """BlockWeights: every weight the ops take (views where the source's shape differs, e.g.
        a 1×1 conv's [r·C, C, 1, 1] weight as [r·C, C])."""
        grn = ("grn_weight", "grn_bias")
        w = {name: get_path(self, path) if path is not None and (self.use_grn or name not in grn)
             else None for name, path in PATHS[self.source].items()}
        for name in ("fc1_w", "fc2_w"):
            w[name] = w[name].flatten(1)
        if w["gamma"] is not None:
            w["gamma"] = w["gamma"].reshape(-1)
        return BlockWeights(**w)

    # ck.prepack_weights sets it; the packs themselves are not state (not in state_dict), and
    # _apply (to, half, cuda, ...) drops them (DropsPacks).
    prepack_weights = False

    def forward(self, x):
        w = self.weights()
        packed = self._packed_mlp_weights(x, w) if self.prepack_weights else None
        return fused_block(x, w, self.eps, self.grn_eps, self.drop_prob if self.training else 0.0,
                           self.backend, packed)

    def _packed_mlp_weights(self, x, w):
        """(fc1, fc2) packed for ops.packed.mlp_packed where this call may use packs
        (packs_may_serve) and the packed MLP stands in for the MLP op (packed_mlp_serves), else
        None."""
        mlp_w = [t for t in (w.fc1_w, w.fc1_b, w.fc2_w, w.fc2_b, w.gamma) if t is not None]
        if (self.use_grn or not packs_may_serve(self, x, mlp_w)
                or not packed_ops.packed_mlp_serves(x, w.fc1_w.shape[0], self.backend)):
            return None
        if self._packed is None:
            self._packed = (PackedWeight(), PackedWeight())
        pack = packed_ops.pack_linear(x.shape[0] * x.shape[2] * x.shape[3])
        return tuple(p.get(weight, pack) for p, weight in zip(self._packed, (w.fc1_w, w.fc2_w)))

    def extra_repr(self):
        return (f"source={self.source}, drop_path={self.drop_prob}, eps={self.eps}, "
                f"use_grn={self.use_grn}, backend={self.backend!r}")


def fused_block(x, w, eps, grn_eps, drop_prob, backend, packed_mlp=None):
    """The block's computation (see FusedConvNeXtBlock). One function so that torch.fx records a
    block as one call (torch.fx.wrap below): FX feature extraction (timm, torchvision) traces a
    converted model without stepping into the shape, dtype and autocast checks here. As for
    every module FX traces, the graph keeps the training mode it was traced in (drop_prob).
    w: BlockWeights; packed_mlp: (fc1, fc2) from FusedConvNeXtBlock._packed_mlp_weights, or
    None."""
    if x.dim() != 4:
        raise ValueError(f"FusedConvNeXtBlock: x must be 4-D (N, C, H, W), got shape "
                         f"{tuple(x.shape)}")
    if x.shape[1] != w.dw_weight.shape[0]:
        raise ValueError(f"FusedConvNeXtBlock: x has {x.shape[1]} channels (shape "
                         f"{tuple(x.shape)}), the block's dim is {w.dw_weight.shape[0]}")
    dtype = autocast_dtype(x)
    block_backend = BLOCK.first_serving(backend, x, x.shape[1],
                                        "v2" if w.grn_weight is not None else "v1")
    # "torch" has no whole-block op: its two ops run the eager reference.
    if block_backend not in (None, "torch"):
        # One op for the whole block; under autocast its kernels read x and the parameters in
        # their own dtypes (no cast launches) and compute in the autocast dtype.
        x_cl = x.contiguous(memory_format=torch.channels_last)
        drop_scale = reference.drop_path_scale(x, drop_prob)
        out = whole_block(x_cl, w, drop_scale, eps, grn_eps, dtype or x.dtype, block_backend)
        return out if x.is_contiguous(memory_format=torch.channels_last) else out.contiguous()
    if dtype is not None:
        x, w = x.to(dtype), w.cast(dtype)
    channels_last = x.is_contiguous(memory_format=torch.channels_last)
    x_cl = x if channels_last else x.contiguous(memory_format=torch.channels_last)
    y = dwconv_layer_norm(x_cl, w.dw_weight, w.dw_bias, w.ln_weight, w.ln_bias, eps,
                          backend=backend)
    if packed_mlp is not None:
        out = packed_ops.mlp_packed(y.permute(0, 2, 3, 1), packed_mlp[0], w.fc1_b,
                                    packed_mlp[1], w.fc2_b, w.gamma,
                                    x_cl.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        return out if channels_last else out.contiguous()
    drop_scale = reference.drop_path_scale(x, drop_prob)
    out = mlp(y.permute(0, 2, 3, 1), w.fc1_w, w.fc1_b, w.fc2_w, w.fc2_b, w.gamma,
              x_cl.permute(0, 2, 3, 1), drop_scale, grn_weight=w.grn_weight, grn_bias=w.grn_bias,
              grn_eps=grn_eps, backend=MLP.in_block(backend)).permute(0, 3, 1, 2)
    return out if channels_last else out.contiguous()


def layer_norm_2d_autocast(x, weight, bias, eps, backend):
    """LayerNorm2d's computation, one call for torch.fx (as fused_block): under autocast x keeps
    its dtype and the parameters follow it, as F.layer_norm does."""
    if autocast_dtype(x) is not None:
        weight, bias = weight.to(x.dtype), bias.to(x.dtype)
    return layer_norm_2d(x, weight, bias, eps, backend=backend)


torch.fx.wrap(fused_block)
torch.fx.wrap(layer_norm_2d_autocast)


class LayerNorm2d(nn.Module):
    """LayerNorm over the channels of N,C,H,W input (the stem's and downsampling layers' norm)
    with ck.layer_norm_2d; parameters `weight` and `bias` [C] as timm's, torchvision's and the
    official channels_first LayerNorm name them."""

    def __init__(self, dim, eps=1e-6, backend="auto"):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim))
        self.eps = float(eps)
        self.backend = backend

    @classmethod
    def from_norm(cls, norm, backend="auto"):
        """Adopts the weight and bias Parameters of a channels-first LayerNorm module."""
        fused = cls.__new__(cls)
        nn.Module.__init__(fused)
        fused.weight, fused.bias = norm.weight, norm.bias
        fused.eps = float(norm.eps)
        fused.backend = backend
        object.__setattr__(fused, "source_norm", norm)  # for revert_model, as source_block
        return fused.train(norm.training)

    def forward(self, x):
        return layer_norm_2d_autocast(x, self.weight, self.bias, self.eps, self.backend)

    def extra_repr(self):
        return f"{self.weight.shape[0]}, eps={self.eps}, backend={self.backend!r}"
