"""The accuracy rule of DESIGN.md, in one place for the tests and the GPU campaign's smoke step:
fp32 (and float64) relative error ≤ 1e-5 against a float64 reference; fp16/bf16 no worse than 2×
eager PyTorch's error in the same dtype, and finite."""
import torch

FP32_TOLERANCE = 1e-5


def rel_error(out, ref, scale=None):
    """max |out - ref| / scale, in float64 on the CPU; NaN anywhere gives inf. The scale is
    max |ref| unless given (a sum's scale is the sum of its terms' magnitudes)."""
    out = out.detach().to("cpu", torch.float64)
    ref = ref.detach().to("cpu", torch.float64)
    if not torch.isfinite(out).all():
        return float("inf")
    scale = torch.as_tensor(ref.abs().max() if scale is None else scale).clamp_min(1e-30)
    return ((out - ref).abs().max() / scale).item()


def tolerance(dtype, eager_error, roundings=0.5):
    """The largest error allowed to a kernel in `dtype` whose eager PyTorch counterpart erred by
    `eager_error`. Eager's error counts as at least `roundings` × eps (0.5: one rounding to the
    dtype): on small tensors eager is sometimes luckier than that, and 2× a lucky draw made a
    check fail at random (a 12-pixel fp16 bias gradient whose eager error was below one
    rounding)."""
    if dtype in (torch.float32, torch.float64):
        return FP32_TOLERANCE
    return 2 * max(eager_error, torch.finfo(dtype).eps * roundings)
