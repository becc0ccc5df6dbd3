"""convert_model(): swap the blocks and channels-first LayerNorms of a timm, torchvision or
official ConvNeXt (V1 or V2) for fused ones, in place, keeping every Parameter object.

Blocks are recognised by structure (describe_block): what each anchor names its submodules, and
that every piece computes what the fused block computes (depthwise 'same' conv, LayerNorm over C,
exact GELU, no dropout, identity shortcut, per-sample drop path scaled by 1/keep). Anything else
is refused by name rather than converted into something that computes differently.
"""
from torch import nn

from .models import ConvNeXtBlock, DropPath, PlainLayerNorm2d
from .modules import FusedConvNeXtBlock, LayerNorm2d
from .prepack import PrepackedConv2d, is_patchify
from .sources import describe_block, is_channels_first_norm, source_of


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
        if type(child) is nn.Module and source_of(child) is not None:  # a GraphModule's copy
            _refuse_traced_through(child)
        if isinstance(child, (FusedConvNeXtBlock, LayerNorm2d)):
            continue
        if source_of(child) is not None:
            describe_block(child)
        else:
            _check_children(child)


def _convert_children(module, backend):
    converted = 0
    for name, child in module.named_children():
        if isinstance(child, (FusedConvNeXtBlock, LayerNorm2d)):
            child.backend = backend
            converted += 1
        elif source_of(child) is not None:
            setattr(module, name, FusedConvNeXtBlock.from_block(child, backend))
            converted += 1
        elif is_channels_first_norm(child):
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
    if source_of(model) is not None:
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
            if type(child) is PrepackedConv2d:
                _unpack_conv(child)
                reverted += 1
            reverted += _revert_children(child)
    return reverted


def _unpack_conv(conv):
    """A PrepackedConv2d back to the plain nn.Conv2d it was (the same object)."""
    conv._packed = None
    conv.__class__ = nn.Conv2d


def revert_model(model: nn.Module) -> nn.Module:
    """Undoes convert_model in place: every FusedConvNeXtBlock and LayerNorm2d becomes the source
    library's module again (the timm / torchvision / official block or norm it was converted
    from, holding the same Parameter objects; blocks built by ck.models become the plain
    official-structure block), and every conv prepack_weights switched a plain nn.Conv2d again,
    for export paths and tools that only know stock modules. Returns the model; a model with
    nothing fused raises ValueError."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"revert_model: expected an nn.Module, got {type(model).__name__}")
    if isinstance(model, (FusedConvNeXtBlock, LayerNorm2d)):
        raise ValueError("revert_model: got a single fused module; revert the model holding it")
    if _revert_children(model) == 0:
        raise ValueError(f"revert_model: {type(model).__name__} holds no FusedConvNeXtBlock or "
                         "LayerNorm2d")
    return model


def prepack_weights(model: nn.Module, enabled: bool = True) -> nn.Module:
    """For fp32 CPU inference: every FusedConvNeXtBlock in model (or model itself) packs its MLP
    weights once for oneDNN's GEMM and reuses them while they do not change, with fc1's GELU in
    the GEMM (ops/packed.py), and every patchify nn.Conv2d (the stem's and the
    downsampling layers': kernel = stride, no padding, one group) becomes a PrepackedConv2d,
    which does the same for oneDNN's conv on channels_last inputs. Used in eval mode without
    gradients, on real tensors (not under torch.compile or tracing), and for the MLP where the
    cpp MLP serves and the [rows, 4C] hidden is at most ops.packed.MAX_HIDDEN elements; other
    calls run as before. A weight is packed again when its version counter or storage changes
    (optimizer steps, load_state_dict, copy_ under no_grad, .to); writes that bypass the version
    counter (through .data or a numpy view) are not seen: call prepack_weights(model) again after
    them. enabled=False turns it off, drops the packs and makes the convs plain nn.Conv2d again.
    Returns the model."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"prepack_weights: expected an nn.Module, got {type(model).__name__}")
    blocks = [m for m in model.modules() if isinstance(m, FusedConvNeXtBlock)]
    if not blocks:
        raise ValueError(f"prepack_weights: {type(model).__name__} holds no FusedConvNeXtBlock "
                         "(convert it with ck.convert_model first)")
    for block in blocks:
        block.prepack_weights = bool(enabled)
        block._packed = None
    for conv in model.modules():
        if type(conv) is PrepackedConv2d:
            _unpack_conv(conv)
        if enabled and type(conv) is nn.Conv2d and is_patchify(conv):
            conv.__class__ = PrepackedConv2d
    return model
