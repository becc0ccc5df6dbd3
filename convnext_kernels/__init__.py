"""convnext-kernels: fused Triton and C++/CUDA kernels for ConvNeXt blocks."""
from . import models
from ._ext import release_cpu_pool
from .backends import available_backends
from .modules import FusedConvNeXtBlock, LayerNorm2d
from .convert import convert_model, prepack_weights, revert_model
from .integrations import fx_leaf_modules, patch_timm
from .ops.dwconv import dwconv2d
from .ops.grn import grn
from .ops.dwconv_layer_norm import dwconv_layer_norm
from .ops.layer_norm import layer_norm_2d
from .ops.mlp import mlp

__all__ = ["FusedConvNeXtBlock", "LayerNorm2d", "available_backends", "convert_model",
           "dwconv2d", "dwconv_layer_norm", "fx_leaf_modules", "grn", "layer_norm_2d", "mlp",
           "models", "patch_timm", "prepack_weights", "release_cpu_pool", "revert_model"]
__version__ = "0.1.0"
