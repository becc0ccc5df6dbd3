"""Error measures and tolerances of DESIGN.md, and where each kernel backend runs."""
import os

import torch

import convnext_kernels as ck
from convnext_kernels.testing import FP32_TOLERANCE, rel_error, tolerance  # noqa: F401


def kernel_targets(exclude=()):
    """(backend, device) pairs to test: every kernel backend available here that implements the
    op (`exclude`: the backends it has no kernels on)."""
    cuda = torch.cuda.is_available()
    targets = []
    available = [name for name in ck.available_backends() if name not in exclude]
    if "cpp" in available:
        targets.append(("cpp", "cpu"))
    if "triton" in available:
        targets.append(("triton", "cuda" if cuda else "cpu"))
    if "cuda" in available:
        targets.append(("cuda", "cuda"))
    return targets


def fresh_generator():
    """A generator seeded from the OS, so every run sees new inputs, or from CK_TEST_SEED when
    set, to replay a failure: every accuracy failure message names its seed."""
    seed = int(os.environ.get("CK_TEST_SEED") or int.from_bytes(os.urandom(4), "little"))
    gen = torch.Generator().manual_seed(seed)
    return gen, seed


def randn(gen, *shape, dtype=torch.float32, device="cpu", scale=1.0):
    return (torch.randn(*shape, generator=gen, dtype=torch.float64) * scale).to(device=device,
                                                                              dtype=dtype)


def assert_accurate(name, out, ref, eager, dtype, seed, scale=None, roundings=0.5):
    """fp32 (and float64): relative error ≤ 1e-5. fp16/bf16: no worse than 2× the error of
    eager PyTorch in the same dtype (`eager`), and finite. Eager's error is taken as at least
    one rounding to the dtype (its unit roundoff): on small tensors eager is sometimes luckier
    than that, and 2× a lucky draw made the check fail at random (seen: a 12-pixel fp16 bias
    gradient, ours 9.6e-4 against eager 4.3e-4, unit roundoff 4.9e-4). `roundings` sets that
    floor in units of eps (0.5: one rounding)."""
    err = rel_error(out, ref, scale)
    eager_error = 0.0 if dtype in (torch.float32, torch.float64) else rel_error(eager, ref, scale)
    tol = tolerance(dtype, eager_error, roundings)
    assert err <= tol, f"{name}: relative error {err:.3e} > {tol:.3e} ({dtype}, seed {seed})"
