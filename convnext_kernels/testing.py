"""The accuracy rule of DESIGN.md, in one place for the tests and the GPU campaign's smoke step:
fp32 (and float64) relative error ≤ 1e-5 against a float64 reference; fp16/bf16 no worse than 2×
eager PyTorch's error in the same dtype, and finite."""
import torch

from convnext_kernels.reference import grn_response

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


def block_sum_scales(plain, x, grad):
    """{name: scale} of a ConvNeXt block's output ("out") and parameter gradients, against which
    each half-precision error is judged (rel_error's scale): every parameter gradient is a sum
    over pixels, the output a sum over the hidden channels (x + γ·(b₂ + Σ W₂·act)), and a sum's
    scale is the sum of its terms' magnitudes, the largest over its elements. `plain` is the
    float64 plain block (models.ConvNeXtBlock, no drop path), `x` its input, `grad` the output's
    gradient. Against the sum itself (or the largest output), cancellation makes the error of
    anyone's bf16 sum a random multiple of it, and two roundings of the same sums, ours and
    eager's, differ by more than 2x on a few seeds in a hundred while neither is the worse."""
    x = x.detach()
    conv = plain.dwconv(x).permute(0, 2, 3, 1)
    y = plain.norm(conv)
    h = plain.pwconv1(y)
    act = plain.act(h)
    grn_in, z_in = act, plain.grn(act) if hasattr(plain, "grn") else act
    z = plain.pwconv2(z_in)
    out = x + (z * plain.gamma if plain.gamma is not None else z).permute(0, 3, 1, 2)
    g_conv, g_y, g_h, g_z_in, g_z = (
        g.abs() for g in torch.autograd.grad(out, (conv, y, h, z_in, z), grad))

    def rows(t):
        return t.detach().abs().reshape(-1, t.shape[-1])

    def column_sums(*factors):
        return torch.stack([rows(f) for f in factors]).prod(0).sum(0).max()

    layer_scale = 1.0 if plain.gamma is None else plain.gamma.detach().abs()
    xhat = torch.nn.functional.layer_norm(conv, conv.shape[-1:], eps=plain.norm.eps)
    k = plain.dwconv.kernel_size[0]
    scales = {
        "dwconv.weight": torch.nn.grad.conv2d_weight(
            x.abs(), plain.dwconv.weight.shape, g_conv.permute(0, 3, 1, 2), padding=k // 2,
            groups=x.shape[1]).max(),
        "dwconv.bias": column_sums(g_conv),
        "norm.weight": column_sums(g_y, xhat),
        "norm.bias": column_sums(g_y),
        "pwconv1.weight": (rows(g_h).T @ rows(y)).max(),
        "pwconv1.bias": column_sums(g_h),
        "pwconv2.weight": (rows(g_z).T @ rows(z_in)).max(),
        "pwconv2.bias": column_sums(g_z),
        "gamma": column_sums(grad.permute(0, 2, 3, 1), z),
        "out": (x.abs().permute(0, 2, 3, 1) + layer_scale * (
            rows(z_in) @ plain.pwconv2.weight.abs().T + plain.pwconv2.bias.abs()).reshape(
                z.shape)).max(),
    }
    if hasattr(plain, "grn"):
        scales["grn.gamma"] = column_sums(g_z_in, grn_in * grn_response(grn_in))
        scales["grn.beta"] = column_sums(g_z_in)
    return scales
