"""convnext-kernels: fused Triton and C++/CUDA kernels for ConvNeXt blocks."""
from .backends import available_backends
from .ops.dwconv import dwconv2d
from .ops.grn import grn
from .ops.layer_norm import dwconv_layer_norm, layer_norm_2d
from .ops.mlp import mlp

__all__ = ["available_backends", "dwconv2d", "dwconv_layer_norm", "grn", "layer_norm_2d", "mlp"]
__version__ = "0.1.0"
