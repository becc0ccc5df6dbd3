import atexit
import os
import shutil
import tempfile

# torch.compile's on-disk caches (FX graph, AOTAutograd) key a custom op by its name, not by its
# Python backward formula: a cache written by another checkout or commit replays that one's
# backward graph (seen: parameter gradients taken from an older flat-buffer layout). Each test
# session compiles into a cache of its own.
if "TORCHINDUCTOR_CACHE_DIR" not in os.environ:
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="ck-inductor-")
    atexit.register(shutil.rmtree, os.environ["TORCHINDUCTOR_CACHE_DIR"], ignore_errors=True)

import torch  # noqa: E402

# The Triton interpreter must be chosen before triton is imported (by convnext_kernels).
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch.utils.deterministic  # noqa: E402

# DESIGN.md's fp32 rule (1e-5) holds for IEEE fp32: cuDNN's convolutions default to TF32 on a GPU
# (10-bit mantissa). Tests run with TF32 off; a test about TF32 turns it on for itself.
torch.backends.cuda.matmul.allow_tf32 = False
torch.backends.cudnn.allow_tf32 = False


@pytest.fixture
def poisoned():
    """Every tensor created by torch.empty* (ours, in Python and in C++) starts as NaN, so an
    output element a kernel forgets to write shows up as NaN."""
    old_mode = torch.are_deterministic_algorithms_enabled()
    old_fill = torch.utils.deterministic.fill_uninitialized_memory
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.utils.deterministic.fill_uninitialized_memory = True
    yield
    torch.use_deterministic_algorithms(old_mode)
    torch.utils.deterministic.fill_uninitialized_memory = old_fill
