"""Hooks into timm and torchvision for converted models.

patch_timm()      timm.create_model("convnext*" / "convnextv2*", ...) returns converted models
fx_leaf_modules() the source libraries' block classes, to keep as modules when FX-tracing, so
                  that a feature extractor traced before conversion can still be converted
"""
import functools
import warnings

from .convert import convert_model
from .models import ConvNeXtBlock


def fx_leaf_modules():
    """The ConvNeXt block classes of the libraries installed here (timm's ConvNeXtBlock,
    torchvision's CNBlock, ck.models' plain block). FX-trace with them as leaves (torchvision:
    create_feature_extractor(..., tracer_kwargs={"leaf_modules": ck.fx_leaf_modules()})) and the
    traced graph calls each block as a module, which convert_model can then replace. A model
    converted before tracing needs nothing: a fused block traces as one call."""
    classes = [ConvNeXtBlock]
    try:
        from timm.models.convnext import ConvNeXtBlock as TimmBlock
        classes.append(TimmBlock)
    except ImportError:
        pass
    try:
        from torchvision.models.convnext import CNBlock
        classes.append(CNBlock)
    except ImportError:
        pass
    return classes


class TimmPatch:
    """What patch_timm changed; undo() (or leaving the `with` block) restores timm."""

    def __init__(self, backend):
        from timm.layers import _fx
        from timm.models import _registry
        self._registry, self._fx = _registry, _fx
        self._originals = {}
        for name, entry in list(_registry._model_entrypoints.items()):
            if _registry._model_to_module.get(name) == "convnext":
                self._originals[name] = entry
                _registry._model_entrypoints[name] = _converting(entry, backend)
        # timm's FX feature models (features_only, feature_cls="fx") are traced inside
        # create_model, before the conversion: tracing keeps timm's blocks as modules, so the
        # conversion that follows replaces them in the traced graph too.
        self._leaves = [cls for cls in fx_leaf_modules() if not _fx.is_notrace_module(cls)]
        for cls in self._leaves:
            _fx.register_notrace_module(cls)

    def undo(self):
        for name, entry in self._originals.items():
            self._registry._model_entrypoints[name] = entry
        for cls in self._leaves:
            self._fx._leaf_modules.discard(cls)
        self._originals, self._leaves = {}, []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.undo()


def _converting(entry, backend):
    @functools.wraps(entry)
    def create(*args, **kwargs):
        model = entry(*args, **kwargs)  # pretrained weights load here, into timm's modules
        try:
            return convert_model(model, backend=backend)
        except ValueError as error:  # e.g. a tanh-GELU test model: timm's own, said aloud
            warnings.warn(f"patch_timm: {entry.__name__} stays timm's own model: {error}",
                          stacklevel=2)
            return model
    return create


def patch_timm(backend="auto"):
    """After this, timm.create_model of any ConvNeXt / ConvNeXt-V2 model (including
    features_only, hooks or fx) returns it converted by convert_model(backend=...); pretrained
    weights load before the conversion, unchanged. A model convert_model refuses (a block it
    cannot reproduce, e.g. timm's tanh-GELU test_convnext) is returned as timm built it, with a
    warning that names why. Returns a TimmPatch: `.undo()`, or use it as
    a context manager (`with ck.patch_timm(): ...`) to restore timm afterwards."""
    return TimmPatch(backend)
