"""How the ops register their Triton implementations with torch.library.

Where Triton compiles the kernels, an op is a `torch.library.triton_op` whose launches go through
`torch.library.wrap_triton` (triton/common.py: Launch): torch.compile then traces into the op and
sees each kernel launch as a node of its graph (tests/test_triton_registration.py), as
flash-attention registers its Triton LayerNorm. Under TRITON_INTERPRET=1 (the CPU tests) the
same functions are a `torch.library.custom_op`: there `wrap_triton` would run the interpreter on
fake tensors (it reads their data pointers) and opcheck's fake-tensor test and torch.compile
would fail, so the interpreted ops stay opaque, with the fake impls their modules register.
"""
import torch

from .triton.common import INTERPRETED


def triton_custom_op(name):
    """The decorator registering `name` (a functional op: it mutates none of its inputs)."""
    if INTERPRETED:
        return torch.library.custom_op(name, mutates_args=())
    return torch.library.triton_op(name, mutates_args=())
