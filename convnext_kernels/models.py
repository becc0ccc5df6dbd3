"""ConvNeXt V1 and V2 in every size, with the official code's module names (official checkpoints
load unchanged): downsample_layers (stem: 4×4/4 conv + LayerNorm2d; then LayerNorm2d + 2×2/2
conv), stages of blocks, a final LayerNorm on the pooled features and a linear head.

`fused=True` (default) builds FusedConvNeXtBlock and ck's LayerNorm2d; `fused=False` builds the
plain PyTorch modules (ConvNeXtBlock below, the official block's structure), for comparison.
"""
import torch
from torch import nn

from . import reference
from .modules import GRN, FusedConvNeXtBlock, LayerNorm2d


class PlainLayerNorm2d(nn.LayerNorm):
    """Eager channels-first LayerNorm (the official data_format="channels_first")."""

    def forward(self, x):
        return reference.layer_norm_2d(x, self.weight, self.bias, self.eps)


class DropPath(nn.Module):
    """Per-sample stochastic depth scaled by 1/keep (timm's DropPath, which the official code
    uses)."""

    def __init__(self, drop_prob=0.0):
        super().__init__()
        self.drop_prob = drop_prob
        self.scale_by_keep = True

    def forward(self, x):
        if not self.training or self.drop_prob == 0.0:
            return x
        scale = reference.drop_path_scale(x, self.drop_prob)
        return x * scale.reshape((-1,) + (1,) * (x.dim() - 1))

    def extra_repr(self):
        return f"drop_prob={self.drop_prob}"


class ConvNeXtBlock(nn.Module):
    """The plain PyTorch ConvNeXt block (official structure and names): dwconv → permute →
    LayerNorm → Linear → GELU → [GRN] → Linear → [·gamma] → permute → drop path → + x."""

    def __init__(self, dim, drop_path=0.0, layer_scale_init_value=None, kernel_size=7,
                 mlp_ratio=4, use_grn=False, eps=1e-6):
        super().__init__()
        if layer_scale_init_value is None:  # V1: layer scale; V2 (GRN): none, as official
            layer_scale_init_value = 0.0 if use_grn else 1e-6
        self.dwconv = nn.Conv2d(dim, dim, kernel_size, padding=kernel_size // 2, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=eps)
        self.pwconv1 = nn.Linear(dim, mlp_ratio * dim)
        self.act = nn.GELU()
        if use_grn:
            self.grn = GRN(mlp_ratio * dim)
        self.pwconv2 = nn.Linear(mlp_ratio * dim, dim)
        use_gamma = layer_scale_init_value is not None and layer_scale_init_value > 0
        self.gamma = nn.Parameter(layer_scale_init_value * torch.ones(dim)) if use_gamma else None
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x):
        y = self.norm(self.dwconv(x).permute(0, 2, 3, 1))
        y = self.act(self.pwconv1(y))
        if hasattr(self, "grn"):
            y = self.grn(y)
        y = self.pwconv2(y)
        if self.gamma is not None:
            y = y * self.gamma
        return x + self.drop_path(y.permute(0, 3, 1, 2))


class ConvNeXt(nn.Module):
    """ConvNeXt (V1: layer scale; V2: use_grn=True, no layer scale) on N,3,H,W images."""

    def __init__(self, in_chans=3, num_classes=1000, depths=(3, 3, 9, 3),
                 dims=(96, 192, 384, 768), drop_path_rate=0.0, layer_scale_init_value=1e-6,
                 head_init_scale=1.0, use_grn=False, eps=1e-6, fused=True, backend="auto"):
        super().__init__()
        if fused:
            def norm2d(dim):
                return LayerNorm2d(dim, eps, backend=backend)

            def block(dim, rate):
                return FusedConvNeXtBlock(dim, rate, layer_scale_init_value, use_grn=use_grn,
                                          eps=eps, backend=backend)
        else:
            def norm2d(dim):
                return PlainLayerNorm2d(dim, eps=eps)

            def block(dim, rate):
                return ConvNeXtBlock(dim, rate, layer_scale_init_value, use_grn=use_grn,
                                     eps=eps)
        self.downsample_layers = nn.ModuleList(
            [nn.Sequential(nn.Conv2d(in_chans, dims[0], kernel_size=4, stride=4),
                           norm2d(dims[0]))]
            + [nn.Sequential(norm2d(dims[i]), nn.Conv2d(dims[i], dims[i + 1], kernel_size=2,
                                                        stride=2))
               for i in range(3)])
        total = sum(depths)
        rates = [drop_path_rate * i / max(1, total - 1) for i in range(total)]  # linear decay
        starts = [sum(depths[:i]) for i in range(4)]
        self.stages = nn.ModuleList(
            nn.Sequential(*(block(dims[i], rates[starts[i] + j]) for j in range(depths[i])))
            for i in range(4))
        self.norm = nn.LayerNorm(dims[-1], eps=eps)
        self.head = nn.Linear(dims[-1], num_classes)
        self.apply(self._init_weights)
        with torch.no_grad():
            self.head.weight.mul_(head_init_scale)
            self.head.bias.mul_(head_init_scale)

    @staticmethod
    def _init_weights(m):
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.trunc_normal_(m.weight, std=0.02)
            nn.init.zeros_(m.bias)

    def forward_features(self, x):
        for downsample, stage in zip(self.downsample_layers, self.stages):
            x = stage(downsample(x))
        return self.norm(x.mean((-2, -1)))

    def forward(self, x):
        return self.head(self.forward_features(x))


# (depths, dims) of every size; xxlarge uses LayerNorm eps 1e-5 (as timm).
V1_SIZES = {
    "atto": ((2, 2, 6, 2), (40, 80, 160, 320)), "femto": ((2, 2, 6, 2), (48, 96, 192, 384)),
    "pico": ((2, 2, 6, 2), (64, 128, 256, 512)), "nano": ((2, 2, 8, 2), (80, 160, 320, 640)),
    "tiny": ((3, 3, 9, 3), (96, 192, 384, 768)), "small": ((3, 3, 27, 3), (96, 192, 384, 768)),
    "base": ((3, 3, 27, 3), (128, 256, 512, 1024)),
    "large": ((3, 3, 27, 3), (192, 384, 768, 1536)),
    "xlarge": ((3, 3, 27, 3), (256, 512, 1024, 2048)),
    "xxlarge": ((3, 4, 30, 3), (384, 768, 1536, 3072)),
}
V2_SIZES = {name: V1_SIZES[name] for name in ("atto", "femto", "pico", "nano", "tiny", "base",
                                                "large")}
V2_SIZES["huge"] = ((3, 3, 27, 3), (352, 704, 1408, 2816))


def _builder(name, depths, dims, v2, eps):
    def build(**kwargs):
        defaults = dict(depths=depths, dims=dims, eps=eps)
        if v2:
            defaults.update(use_grn=True, layer_scale_init_value=0.0)
        return ConvNeXt(**{**defaults, **kwargs})
    build.__name__ = build.__qualname__ = name
    build.__doc__ = (f"ConvNeXt{'V2' if v2 else ''} {name.split('_')[1]}: depths {depths}, dims "
                     f"{dims}. Keyword arguments go to ConvNeXt (fused, backend, num_classes...).")
    return build


for _name, (_depths, _dims) in V1_SIZES.items():
    globals()[f"convnext_{_name}"] = _builder(f"convnext_{_name}", _depths, _dims, False,
                                              1e-5 if _name == "xxlarge" else 1e-6)
for _name, (_depths, _dims) in V2_SIZES.items():
    globals()[f"convnextv2_{_name}"] = _builder(f"convnextv2_{_name}", _depths, _dims, True, 1e-6)

__all__ = (["ConvNeXt", "ConvNeXtBlock", "FusedConvNeXtBlock", "LayerNorm2d"]
           + [f"convnext_{n}" for n in V1_SIZES] + [f"convnextv2_{n}" for n in V2_SIZES])
