"""pytest plugin for running timm's own tests/test_models.py over converted models (see the
README): every timm ConvNeXt model the tests create goes through ck.patch_timm (cpp backend)."""
import convnext_kernels as ck

_patch = None


def pytest_configure(config):
    global _patch
    _patch = ck.patch_timm(backend="cpp")


def pytest_unconfigure(config):
    if _patch is not None:
        _patch.undo()
