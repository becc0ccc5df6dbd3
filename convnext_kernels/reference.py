"""Plain-PyTorch definition of every op: the executable spec the kernels are tested against.

Every function here is differentiable by autograd, runs on any device and dtype (tests run it in
float64), and imports nothing from this package.
"""
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor


def statistics_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype every kernel keeps its statistics in (LayerNorm's mean and rstd, GRN's norms):
    fp32, float64 for float64 inputs."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def drop_path_scale(x: Tensor, drop_prob: float) -> Optional[Tensor]:
    """Drop path's per-sample factor [x.shape[0]] (0, or 1/keep with probability keep, as timm
    draws it), or None where nothing is dropped."""
    if drop_prob == 0.0:
        return None
    keep = 1.0 - drop_prob
    return x.new_empty(x.shape[0]).bernoulli_(keep).div_(keep)


def dwconv2d(x: Tensor, weight: Tensor, bias: Optional[Tensor] = None) -> Tensor:
    """Depthwise k×k convolution of N,C,H,W `x` with `weight` [C,1,k,k]: stride 1, padding k//2."""
    return F.conv2d(x, weight, bias, padding=weight.shape[-1] // 2, groups=x.shape[1])


def layer_norm_2d(x: Tensor, weight: Tensor, bias: Tensor, eps: float = 1e-6) -> Tensor:
    """LayerNorm over the channels of N,C,H,W `x` (timm's LayerNorm2d, the official
    `channels_first` LayerNorm): biased variance, eps inside the square root."""
    mean = x.mean(1, keepdim=True)
    var = (x - mean).pow(2).mean(1, keepdim=True)
    return (x - mean) * torch.rsqrt(var + eps) * weight[:, None, None] + bias[:, None, None]


def dwconv_layer_norm(x: Tensor, dw_weight: Tensor, dw_bias: Optional[Tensor], ln_weight: Tensor,
                      ln_bias: Tensor, eps: float = 1e-6) -> Tensor:
    return layer_norm_2d(dwconv2d(x, dw_weight, dw_bias), ln_weight, ln_bias, eps)


def mlp(x: Tensor, fc1_w: Tensor, fc1_b: Tensor, fc2_w: Tensor, fc2_b: Tensor,
        gamma: Optional[Tensor] = None, residual: Optional[Tensor] = None,
        drop_scale: Optional[Tensor] = None, grn_weight: Optional[Tensor] = None,
        grn_bias: Optional[Tensor] = None, grn_eps: float = 1e-6) -> Tensor:
    """Rows (..., C): [residual +] [drop_scale *] [gamma *] fc2([grn](gelu(fc1(x)))), exact-erf
    GELU. `drop_scale` holds one factor per sample (the leading dimension of x); with GRN, x is
    N,H,W,C."""
    hidden = F.gelu(F.linear(x, fc1_w, fc1_b))
    if grn_weight is not None:
        hidden = grn(hidden, grn_weight, grn_bias, grn_eps)
    out = F.linear(hidden, fc2_w, fc2_b)
    if gamma is not None:
        out = out * gamma
    if drop_scale is not None:
        out = out * drop_scale.reshape((-1,) + (1,) * (out.dim() - 1))
    if residual is not None:
        out = residual + out
    return out


def grn_response(x: Tensor, eps: float = 1e-6) -> Tensor:
    """GRN's normalised response nx [N,1,1,C] of N,H,W,C `x`: each channel's L2 norm over the
    pixels of its sample, divided by the mean over channels of those norms (plus eps)."""
    gx = torch.linalg.vector_norm(x, ord=2, dim=(1, 2), keepdim=True)
    return gx / (gx.mean(dim=-1, keepdim=True) + eps)


def grn(x: Tensor, weight: Tensor, bias: Tensor, eps: float = 1e-6) -> Tensor:
    """ConvNeXt-V2 Global Response Normalisation of N,H,W,C `x`; weight and bias hold C values,
    as [C] (timm) or [1,1,1,C] (official)."""
    return weight.reshape(-1) * (x * grn_response(x, eps)) + bias.reshape(-1) + x


def convnext_block(x: Tensor, dw_weight: Tensor, dw_bias: Tensor, ln_weight: Tensor,
                   ln_bias: Tensor, fc1_w: Tensor, fc1_b: Tensor, fc2_w: Tensor, fc2_b: Tensor,
                   gamma: Optional[Tensor] = None, grn_weight: Optional[Tensor] = None,
                   grn_bias: Optional[Tensor] = None, drop_scale: Optional[Tensor] = None,
                   eps: float = 1e-6) -> Tensor:
    """One ConvNeXt block on N,C,H,W `x`. V1: `gamma` (layer scale), no GRN. V2: `grn_weight`
    and `grn_bias`, no gamma. `drop_scale` [N] is drop-path's per-sample factor (0 or 1/keep)."""
    y = dwconv_layer_norm(x, dw_weight, dw_bias, ln_weight, ln_bias, eps).permute(0, 2, 3, 1)
    out = mlp(y, fc1_w, fc1_b, fc2_w, fc2_b, gamma, None, drop_scale, grn_weight, grn_bias)
    return x + out.permute(0, 3, 1, 2)
