"""convert_model(): swap the blocks and channels-first LayerNorms of a timm, torchvision or
official ConvNeXt (V1 or V2) for fused ones, in place, keeping every Parameter object.

Blocks are recognised by structure (describe_block): what each anchor names its submodules, and
that every piece computes what the fused block computes (depthwise 'same' conv, LayerNorm over C,
exact GELU, no dropout, identity shortcut, per-sample drop path scaled by 1/keep). Anything else
is refused by name rather than converted into something that computes differently.
"""
from torch import nn

from .block import LAYOUTS, FusedConvNeXtBlock, LayerNorm2d, lookup
from .models import ConvNeXtBlock, DropPath, PlainLayerNorm2d


def _layout(block):
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
    """{layout, eps, drop_path, use_grn, grn_eps} of a block the fused block can replace, else a
    ValueError saying what differs."""
    layout = _layout(block)
    if layout is None:
        _refuse(block, "not a ConvNeXt block of timm, torchvision or the official code")
    paths = LAYOUTS[layout]
    if layout == "timm":
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
    elif layout == "torchvision":
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
            missing = lookup(block, paths[name]) is None
        except AttributeError:
            missing = True
        if missing:
            _refuse(block, f"{paths[name]} is missing (bias-free MLPs not supported)")
    return {"layout": layout, "eps": float(norm.eps), "drop_path": drop,
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


def _is_channels_first_norm(module):
    name = type(module).__name__
    if name == "LayerNorm2d" and isinstance(module, nn.LayerNorm):  # timm, torchvision
        return module.weight is not None and len(module.normalized_shape) == 1
    # the official LayerNorm with data_format="channels_first"
    return (name == "LayerNorm" and getattr(module, "data_format", None) == "channels_first"
            and hasattr(module, "weight"))


def _refuse_traced_through(block):
    raise ValueError(
        "convert_model: this model was traced with torch.fx through its ConvNeXt blocks (e.g. an "
        "FX feature extractor): its graph calls the blocks' pieces, so replacing modules would "
        "not change what it computes. Convert the model before tracing it, or trace with "
        "ck.fx_leaf_modules() as leaf modules (timm: ck.patch_timm() does) so that the graph "
        "calls each block as a module")


def _check_children(module):
    """describe_block of every block convert would replace: a refusal comes before any change."""
    for child in module.children():
        if type(child) is nn.Module and _layout(child) is not None:  # a GraphModule's copy
            _refuse_traced_through(child)
        if isinstance(child, (FusedConvNeXtBlock, LayerNorm2d)):
            continue
        if _layout(child) is not None:
            describe_block(child)
        else:
            _check_children(child)


def _convert_children(module, backend):
    converted = 0
    for name, child in module.named_children():
        if isinstance(child, (FusedConvNeXtBlock, LayerNorm2d)):
            child.backend = backend
            converted += 1
        elif _layout(child) is not None:
            setattr(module, name, FusedConvNeXtBlock.from_block(child, backend))
            converted += 1
        elif _is_channels_first_norm(child):
            setattr(module, name, LayerNorm2d.from_norm(child, backend))
            converted += 1
        else:
            converted += _convert_children(child, backend)
    return converted


def convert_model(model: nn.Module, backend: str = "auto") -> nn.Module:
    """Replaces, in place, every ConvNeXt block of `model` (timm ConvNeXt incl. conv_mlp and V2,
    torchvision ConvNeXt, official ConvNeXt / ConvNeXtV2) with a FusedConvNeXtBlock and every
    channels-first LayerNorm with ck's LayerNorm2d, keeping the same Parameter objects (so
    device, dtype, optimizer state and state_dict keys are unchanged); returns the model.
    Converting again only sets `backend`. A model with nothing to convert, or a block that
    computes something the fused block does not, raises ValueError, and then nothing was
    changed."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"convert_model: expected an nn.Module, got {type(model).__name__}")
    if _layout(model) is not None:
        raise ValueError("convert_model: got a single block; use "
                         "FusedConvNeXtBlock.from_block(block) for a block")
    _check_children(model)
    if _convert_children(model, backend) == 0:
        raise ValueError(f"convert_model: found no ConvNeXt block or channels-first LayerNorm "
                         f"in {type(model).__name__} (supported: timm, torchvision and official "
                         "ConvNeXt / ConvNeXtV2)")
    return model


def _reverted_block(fused):
    """The source library's block computing what `fused` computes, holding its Parameters: the
    block it was converted from, or (built directly) the plain official-structure block."""
    source = getattr(fused, "source_block", None)
    if source is None:
        source = ConvNeXtBlock.__new__(ConvNeXtBlock)
        nn.Module.__init__(source)
        source.act = nn.GELU()
        source.drop_path = DropPath(fused.drop_prob) if fused.drop_prob > 0 else nn.Identity()
    for name, child in fused.named_children():  # the fused block's, possibly replaced since
        setattr(source, name, child)
    for name, param in fused.named_parameters(recurse=False):
        setattr(source, name, param)
    if getattr(fused, "gamma", None) is None and "gamma" not in source._parameters:
        source.gamma = None
    return source.train(fused.training)


def _reverted_norm(norm):
    source = getattr(norm, "source_norm", None)
    if source is None:
        source = PlainLayerNorm2d(norm.weight.shape[0], eps=norm.eps)
    source.weight, source.bias = norm.weight, norm.bias
    return source.train(norm.training)


def _revert_children(module):
    reverted = 0
    for name, child in module.named_children():
        if isinstance(child, FusedConvNeXtBlock):
            setattr(module, name, _reverted_block(child))
            reverted += 1
        elif isinstance(child, LayerNorm2d):
            setattr(module, name, _reverted_norm(child))
            reverted += 1
        else:
            reverted += _revert_children(child)
    return reverted


def revert_model(model: nn.Module) -> nn.Module:
    """Undoes convert_model in place: every FusedConvNeXtBlock and LayerNorm2d becomes the source
    library's module again (the timm / torchvision / official block or norm it was converted
    from, holding the same Parameter objects; blocks built by ck.models become the plain
    official-structure block), for export paths and tools that only know stock modules. Returns
    the model; a model with nothing fused raises ValueError."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"revert_model: expected an nn.Module, got {type(model).__name__}")
    if isinstance(model, (FusedConvNeXtBlock, LayerNorm2d)):
        raise ValueError("revert_model: got a single fused module; revert the model holding it")
    if _revert_children(model) == 0:
        raise ValueError(f"revert_model: {type(model).__name__} holds no FusedConvNeXtBlock or "
                         "LayerNorm2d")
    return model
