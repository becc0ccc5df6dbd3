"""The source libraries of a ConvNeXt block (timm, torchvision, the official code): where each
keeps a block's weights (WEIGHT_PATHS: attribute paths per source), how a block's source is
recognised (source_of), and what the fused block refuses to replace and why (describe_block):
the one place modules.py and convert.py read."""
from torch import nn

# Where each weight of a block lives, per source library (attribute paths).
WEIGHT_PATHS = {
    "official": dict(dw_weight="dwconv.weight", dw_bias="dwconv.bias", ln_weight="norm.weight",
                     ln_bias="norm.bias", fc1_w="pwconv1.weight", fc1_b="pwconv1.bias",
                     fc2_w="pwconv2.weight", fc2_b="pwconv2.bias", gamma="gamma",
                     grn_weight="grn.gamma", grn_bias="grn.beta"),
    "timm": dict(dw_weight="conv_dw.weight", dw_bias="conv_dw.bias", ln_weight="norm.weight",
                 ln_bias="norm.bias", fc1_w="mlp.fc1.weight", fc1_b="mlp.fc1.bias",
                 fc2_w="mlp.fc2.weight", fc2_b="mlp.fc2.bias", gamma="gamma",
                 grn_weight="mlp.grn.weight", grn_bias="mlp.grn.bias"),
    "torchvision": dict(dw_weight="block.0.weight", dw_bias="block.0.bias",
                        ln_weight="block.2.weight", ln_bias="block.2.bias",
                        fc1_w="block.3.weight", fc1_b="block.3.bias", fc2_w="block.5.weight",
                        fc2_b="block.5.bias", gamma="layer_scale", grn_weight=None,
                        grn_bias=None),
}


# WEIGHT_PATHS split once, name -> attribute names (None: the source has no such weight): a
# block's forward reads its weights through them on every call (splitting each path anew cost a
# fifth of FusedConvNeXtBlock.weights). Still a getattr walk per call, so a swapped
# submodule or a parametrized weight is read as it is now. (Not operator.attrgetter: dynamo
# cannot trace it, and a converted model must compile with fullgraph.)
PATHS = {source: {name: tuple(path.split(".")) if path else None for name, path in paths.items()}
         for source, paths in WEIGHT_PATHS.items()}


def get_path(module, names):
    """The attribute at `names` (a PATHS entry) of `module`."""
    for name in names:
        module = getattr(module, name)
    return module


def source_of(block):
    """The library `block` is a ConvNeXt block of ("timm", "torchvision", "official"), or None."""
    if all(hasattr(block, n) for n in ("conv_dw", "norm", "mlp")):
        return "timm"
    if isinstance(getattr(block, "block", None), nn.Sequential) and hasattr(block, "layer_scale"):
        return "torchvision"
    if all(hasattr(block, n) for n in ("dwconv", "norm", "pwconv1", "pwconv2")):
        return "official"
    return None


def _refuse(block, why):
    raise ValueError(f"convert: cannot fuse {type(block).__name__}: {why}")


def _check_gelu(block, act):
    if act is None:
        return
    if type(act).__name__ != "GELU" or getattr(act, "approximate", "none") != "none":
        _refuse(block, f"the activation must be the exact (erf) GELU, got {act}")


def _check_no_dropout(block, *modules):
    for m in modules:
        if isinstance(m, nn.Dropout) and m.p > 0:
            _refuse(block, f"MLP dropout (p={m.p}) is not supported")


def _drop_path(block, module):
    """The per-sample drop probability of a DropPath / StochasticDepth('row') module."""
    if module is None or isinstance(module, nn.Identity):
        return 0.0
    name = type(module).__name__
    if name == "DropPath" and getattr(module, "scale_by_keep", True):
        return float(module.drop_prob)
    if name == "StochasticDepth" and module.mode == "row":
        return float(module.p)
    _refuse(block, f"drop path {module} is not per-sample with 1/keep scaling")


def describe_block(block):
    """{source, eps, drop_path, use_grn, grn_eps} of a block the fused block can replace, else a
    ValueError saying what differs."""
    source = source_of(block)
    if source is None:
        _refuse(block, "not a ConvNeXt block of timm, torchvision or the official code")
    paths = WEIGHT_PATHS[source]
    if source == "timm":
        conv, norm, mlp = block.conv_dw, block.norm, block.mlp
        _check_gelu(block, getattr(mlp, "act", None))
        _check_no_dropout(block, getattr(mlp, "drop1", None), getattr(mlp, "drop2", None),
                          getattr(mlp, "drop", None))
        if not isinstance(getattr(block, "shortcut", nn.Identity()), nn.Identity):
            _refuse(block, "the shortcut is not the identity (stride or channel change)")
        grn = getattr(mlp, "grn", None)
        if not isinstance(getattr(mlp, "norm", nn.Identity()), nn.Identity):
            _refuse(block, "an MLP with a norm layer is not supported")
        drop = _drop_path(block, block.drop_path)
    elif source == "torchvision":
        seq = block.block
        if len(seq) != 7:
            _refuse(block, f"expected torchvision's 7-layer CNBlock, got {len(seq)} layers")
        conv, norm, grn = seq[0], seq[2], None
        _check_gelu(block, seq[4])
        drop = _drop_path(block, block.stochastic_depth)
    else:
        conv, norm, grn = block.dwconv, block.norm, getattr(block, "grn", None)
        _check_gelu(block, getattr(block, "act", None))
        drop = _drop_path(block, getattr(block, "drop_path", None))
    _check_depthwise_same(block, conv)
    C = conv.weight.shape[0]
    for name in ("weight", "bias"):
        if getattr(norm, name, None) is None or getattr(norm, name).shape != (C,):
            _refuse(block, f"the norm needs an affine {name} of shape [{C}]")
    for name in ("fc1_w", "fc1_b", "fc2_w", "fc2_b"):
        try:
            missing = get_path(block, PATHS[source][name]) is None
        except AttributeError:
            missing = True
        if missing:
            _refuse(block, f"{paths[name]} is missing (bias-free MLPs not supported)")
    return {"source": source, "eps": float(norm.eps), "drop_path": drop,
            "use_grn": grn is not None, "grn_eps": float(getattr(grn, "eps", 1e-6))}


def _check_depthwise_same(block, conv):
    if not isinstance(conv, nn.Conv2d):
        _refuse(block, f"the depthwise conv must be an nn.Conv2d, got {type(conv).__name__}")
    k = conv.kernel_size[0]
    C = conv.in_channels
    if not (conv.groups == C == conv.out_channels and conv.kernel_size == (k, k) and k % 2 == 1
            and conv.stride == (1, 1) and conv.dilation == (1, 1)
            and conv.padding in ((k // 2, k // 2), "same") and conv.padding_mode == "zeros"):
        _refuse(block, f"the conv must be depthwise, odd square kernel, stride 1, dilation 1, "
                       f"zero 'same' padding; got {conv}")


def is_channels_first_norm(module):
    name = type(module).__name__
    if name == "LayerNorm2d" and isinstance(module, nn.LayerNorm):  # timm, torchvision
        return module.weight is not None and len(module.normalized_shape) == 1
    # the official LayerNorm with data_format="channels_first"
    return (name == "LayerNorm" and getattr(module, "data_format", None) == "channels_first"
            and hasattr(module, "weight"))
