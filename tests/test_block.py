import copy
import io

import pytest
import torch
from torch import nn

import convnext_kernels as ck
from convnext_kernels import reference
from convnext_kernels.models import ConvNeXtBlock
from convnext_kernels.testing import block_sum_scales
from numerics import assert_accurate, fresh_generator, kernel_targets

TARGETS = kernel_targets()
DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def _randomise(module, gen):
    """Non-trivial values for every parameter (zero-initialised GRN and 1e-6 layer scale would
    hide errors in their paths)."""
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float64) * 0.5)


def _pair(gen, dim, use_grn, dtype=torch.float64, **kwargs):
    """A plain block and a fused one with the same weights (loaded through state_dict)."""
    plain = ConvNeXtBlock(dim, use_grn=use_grn, layer_scale_init_value=0.0 if use_grn else 1e-6,
                          **kwargs).to(torch.float64)
    _randomise(plain, gen)
    fused = ck.FusedConvNeXtBlock(dim, use_grn=use_grn,
                                  layer_scale_init_value=0.0 if use_grn else 1e-6,
                                  **kwargs).to(torch.float64)
    fused.load_state_dict(plain.state_dict())
    return plain, fused


def _grads(block, x, grad):
    x = x.detach().requires_grad_()
    block.zero_grad()
    out = block(x)
    out.backward(grad)
    return out, {"x": x.grad, **{n: p.grad for n, p in block.named_parameters()}}


@pytest.mark.parametrize("channels_last", [True, False], ids=["nhwc", "nchw"])
@pytest.mark.parametrize("version", ["v1", "v2"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("backend,device", TARGETS)
def test_block_matches_float64_reference(backend, device, dtype, version, channels_last,
                                         poisoned):
    gen, seed = fresh_generator()
    plain, fused = _pair(gen, 24, version == "v2")
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = torch.randn(2, 24, 6, 7, generator=gen, dtype=torch.float64).contiguous(
        memory_format=fmt)
    grad = torch.randn(x.shape, generator=gen, dtype=torch.float64)
    ref_out, ref = _grads(plain, x, grad)
    scales = block_sum_scales(plain, x, grad)
    eager_block = plain.to(device=device, dtype=dtype)
    eager_out, eager = _grads(eager_block, x.to(device, dtype), grad.to(device, dtype))
    fused.backend = backend
    fused = fused.to(device=device, dtype=dtype)
    out, ours = _grads(fused, x.to(device, dtype), grad.to(device, dtype))
    assert out.is_contiguous(memory_format=fmt)
    # (1500 seeds of each cpp fp16/bf16 V1/V2: out ≤ 1.04 eps of its sum scale, ≤ 0.78 of the
    # tolerance.)
    assert_accurate("out", out, ref_out, eager_out, dtype, seed, scale=scales["out"])
    for name in ref:
        assert ours[name].dtype == dtype
        # (200 seeds of each cpp fp16/bf16 V1/V2: ours ≤ 0.71 eps of the sum scale, the
        # tolerance ≥ 1 eps.)
        assert_accurate(name, ours[name], ref[name], eager[name], dtype, seed,
                        scale=scales.get(name))


@pytest.mark.parametrize("backend,device", TARGETS)
def test_drop_path_per_sample_as_timm(backend, device):
    """Training mode draws one keep/drop per sample, scaled by 1/keep, from the same RNG calls as
    the eager block (so seeded runs agree); eval mode is the identity."""
    gen, _ = fresh_generator()
    plain, fused = _pair(gen, 16, False, drop_path=0.5)
    fused.backend = backend
    plain, fused = plain.float().to(device), fused.float().to(device)
    x = torch.randn(8, 16, 5, 5, generator=gen).to(device)
    for mode in (True, False):
        plain.train(mode)
        fused.train(mode)
        torch.manual_seed(3)
        expected = plain(x)
        torch.manual_seed(3)
        torch.testing.assert_close(fused(x), expected, rtol=1e-5, atol=1e-5)
    fused.train()
    dropped = [(fused(x) - x).flatten(1).abs().amax(1) == 0 for _ in range(4)]
    assert torch.stack(dropped).any()  # some sample dropped at p = 0.5 over 32 draws


def test_torch_backend_block_is_the_plain_block(poisoned):
    """backend="torch" runs the eager reference of each op (it has no whole-block op: it raised
    a KeyError before)."""
    gen, seed = fresh_generator()
    plain, fused = _pair(gen, 24, False)
    fused.backend = "torch"
    x = torch.randn(2, 24, 5, 6, generator=gen, dtype=torch.float64)
    with torch.no_grad():
        assert_accurate("out", fused(x), plain(x), None, torch.float64, seed)


def test_state_dict_keys_are_the_official_blocks():
    for use_grn, extra in ((False, {"gamma"}), (True, {"grn.gamma", "grn.beta"})):
        keys = set(ck.FusedConvNeXtBlock(8, use_grn=use_grn,
                                         layer_scale_init_value=0 if use_grn else 1e-6
                                         ).state_dict())
        base = {f"{m}.{p}" for m in ("dwconv", "norm", "pwconv1", "pwconv2")
                for p in ("weight", "bias")}
        assert keys == base | extra
    fused = ck.FusedConvNeXtBlock(8, use_grn=True, layer_scale_init_value=0)
    assert fused.grn.gamma.shape == (1, 1, 1, 32) and fused.pwconv1.weight.shape == (32, 8)


def test_from_block_shares_parameters_and_matches():
    timm = pytest.importorskip("timm")
    from timm.models.convnext import ConvNeXtBlock as TimmBlock
    from torchvision.models.convnext import CNBlock

    gen, _ = fresh_generator()
    blocks = [TimmBlock(16, conv_mlp=True), TimmBlock(16, use_grn=True, ls_init_value=None),
              TimmBlock(16, conv_mlp=False), CNBlock(16, 1e-6, 0.0),
              ConvNeXtBlock(16, use_grn=True, layer_scale_init_value=0)]
    assert timm is not None
    for block in blocks:
        _randomise(block, gen)
        block.eval()
        x = torch.randn(2, 16, 6, 6, generator=gen)
        fused = ck.FusedConvNeXtBlock.from_block(block, backend="cpp").eval()
        assert {n: id(p) for n, p in fused.named_parameters()} == \
            {n: id(p) for n, p in block.named_parameters()}
        assert fused.state_dict().keys() == block.state_dict().keys()
        torch.testing.assert_close(fused(x), block(x), rtol=1e-5, atol=1e-5)


def _timm_block(**kwargs):
    from timm.models.convnext import ConvNeXtBlock as TimmBlock
    return TimmBlock(16, **kwargs)


REFUSED = [
    ("dilation", lambda: _timm_block(dilation=2), "dilation 1"),
    ("tanh gelu", lambda: _timm_block(act_layer="gelu_tanh"), "exact \\(erf\\) GELU"),
    ("channel change", lambda: _timm_block(out_chs=32), "shortcut is not the identity|depthwise"),
    ("not a block", lambda: nn.Linear(3, 3), "not a ConvNeXt block"),
]


@pytest.mark.parametrize("case,make,match", REFUSED, ids=[c[0] for c in REFUSED])
def test_from_block_refuses_what_it_cannot_compute(case, make, match):
    pytest.importorskip("timm")
    with pytest.raises(ValueError, match=match):
        ck.FusedConvNeXtBlock.from_block(make())


def test_constructor_checks():
    with pytest.raises(ValueError, match="kernel_size must be odd"):
        ck.FusedConvNeXtBlock(8, kernel_size=4)
    with pytest.raises(ValueError, match="drop_path must be in"):
        ck.FusedConvNeXtBlock(8, drop_path=1.0)
    with pytest.raises(ValueError, match="mlp_ratio must be a positive int"):
        ck.FusedConvNeXtBlock(8, mlp_ratio=0)
    with pytest.raises(ValueError, match="4-D"):
        ck.FusedConvNeXtBlock(8)(torch.randn(8, 5, 5))
    # a wrong channel count names the input and the block's dim (not a weight)
    with pytest.raises(ValueError, match=r"x has 6 channels .*the block's dim is 8"):
        ck.FusedConvNeXtBlock(8)(torch.randn(1, 6, 5, 5))
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="backend 'cuda' cannot serve"):
            ck.FusedConvNeXtBlock(8, backend="cuda")(torch.randn(1, 8, 5, 5))


def test_activation_checkpointing_half_and_state_dict_round_trip():
    gen, _ = fresh_generator()
    _, fused = _pair(gen, 16, False)
    fused = fused.float()
    fused.backend = "cpp"
    x = torch.randn(2, 16, 5, 5, generator=gen).contiguous(memory_format=torch.channels_last)
    out, grads = _grads(fused, x, torch.ones_like(x))
    xc = x.detach().requires_grad_()
    fused.zero_grad()
    torch.utils.checkpoint.checkpoint(fused, xc, use_reentrant=False).backward(
        torch.ones_like(x))
    torch.testing.assert_close(xc.grad, grads["x"])
    for n, p in fused.named_parameters():
        torch.testing.assert_close(p.grad, grads[n])

    copy = ck.FusedConvNeXtBlock(16, backend="cpp")
    copy.load_state_dict(fused.state_dict())
    torch.testing.assert_close(copy(x), out)
    half = copy.half()
    assert all(p.dtype == torch.float16 for p in half.parameters())
    assert half(x.half()).dtype == torch.float16


def test_reference_block_agrees_with_plain_block():
    """reference.convnext_block (the executable spec) and the plain module agree."""
    gen, _ = fresh_generator()
    plain, _ = _pair(gen, 8, True)
    x = torch.randn(2, 8, 4, 4, generator=gen, dtype=torch.float64)
    expected = reference.convnext_block(
        x, plain.dwconv.weight, plain.dwconv.bias, plain.norm.weight, plain.norm.bias,
        plain.pwconv1.weight, plain.pwconv1.bias, plain.pwconv2.weight, plain.pwconv2.bias,
        grn_weight=plain.grn.gamma, grn_bias=plain.grn.beta)
    torch.testing.assert_close(plain(x), expected)


# ------------------------------------------------------------ the block as one op (triton)

TRITON_DEVICES = [d for b, d in TARGETS if b == "triton"]


def _triton_block(gen, dim, dtype, device, use_grn=False, **kwargs):
    plain, fused = _pair(gen, dim, use_grn, **kwargs)
    fused.backend = "triton"
    return plain, fused.to(device, dtype)


@pytest.mark.parametrize("use_grn", [False, True], ids=["v1", "v2"])
@pytest.mark.parametrize("device", TRITON_DEVICES)
def test_whole_block_is_one_op(device, use_grn):
    """The triton block, V1 and V2, is the whole-block op (not the two composed ops)."""
    gen, _ = fresh_generator()
    _, fused = _triton_block(gen, 16, torch.float32, device, use_grn)
    x = torch.randn(2, 16, 5, 5, generator=gen).to(device)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        fused(x)
    names = {e.name for e in prof.events()}
    assert "convnext_kernels::block_triton" in names
    assert "convnext_kernels::mlp_triton" not in names


@pytest.mark.parametrize("use_grn", [False, True], ids=["v1", "v2"])
@pytest.mark.parametrize("device", TRITON_DEVICES)
def test_weight_gemms_with_fewer_splits(device, use_grn, monkeypatch, poisoned):
    """The weight GEMMs' gradients (V1 at C = 16: the fused backward's weight-gradient kernel)
    take their own split count (as many splits as fill the device's SMs with their programs)
    next to the rows' count of the other gradients: with one SM
    they take one split where 1152 rows take two, so they are written straight into the flat
    buffer (no partials), and the block still matches float64."""
    from convnext_kernels.triton import grad_workspace, matmul, mlp_fused_backward
    monkeypatch.setattr(matmul, "sm_count", lambda device: 1)
    monkeypatch.setattr(mlp_fused_backward, "sm_count", lambda device: 1)
    seen = []
    finalize_flat = grad_workspace.GradWorkspace.finalize_flat

    def spy(ws):
        seen.append(([block.shape[0] for _, _, block in ws.blocks], list(ws.direct)))
        return finalize_flat(ws)

    monkeypatch.setattr(grad_workspace.GradWorkspace, "finalize_flat", spy)
    gen, seed = fresh_generator()
    plain, fused = _triton_block(gen, 16, torch.float32, device, use_grn)
    x = torch.randn(2, 16, 24, 24, generator=gen, dtype=torch.float64)
    grad = torch.randn(x.shape, generator=gen, dtype=torch.float64)
    ref_out, ref = _grads(plain, x, grad)
    scales = block_sum_scales(plain, x, grad)
    out, ours = _grads(fused, x.to(device, torch.float32), grad.to(device, torch.float32))
    ((partial_splits, direct),) = seen
    # the rows' gradients in two splits, the LayerNorm's from the grad-hidden kernel's 18
    # programs (its backward in that kernel's epilogue: 1152 rows, 64 a program)
    assert partial_splits == [2, 18]
    assert direct == (["fc1_w", "fc1_b", "fc2_w", "fc2_b"] if use_grn else
                      ["gamma", "fc1_w", "fc1_b", "fc2_w", "fc2_b"])
    assert_accurate("out", out, ref_out, ref_out, torch.float32, seed)
    for name in ref:
        assert_accurate(name, ours[name], ref[name], ref[name], torch.float32, seed,
                        scale=scales.get(name))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("use_grn", [False, True], ids=["v1", "v2"])
@pytest.mark.parametrize("device", TRITON_DEVICES)
def test_layer_norm_backward_in_the_grad_hidden_kernel(device, use_grn, dtype, monkeypatch,
                                                       poisoned):
    """The LayerNorm backward in the fused MLP backward's grad-hidden kernel: C = 40 in two
    channel pieces (32 + 16, 8 masked), 2 x 7 x 9 = 126 rows in two row tiles (the second 62
    rows), so the LayerNorm's gradient partials are two splits beside the rows' one; no
    LayerNorm backward launch; against float64, and a second run equal bit for bit."""
    from convnext_kernels.triton import layer_norm, mlp_fused_backward
    assert mlp_fused_backward.channel_pieces(40) == (32, 16)
    assert mlp_fused_backward.grad_hidden_programs(126) == 2
    monkeypatch.setattr(layer_norm, "backward_launch", None)  # (called: a TypeError)
    gen, seed = fresh_generator()
    plain, fused = _triton_block(gen, 40, dtype, device, use_grn)
    x = torch.randn(2, 40, 7, 9, generator=gen, dtype=torch.float64)
    grad = torch.randn(x.shape, generator=gen, dtype=torch.float64)
    ref_out, ref = _grads(plain, x, grad)
    scales = block_sum_scales(plain, x, grad)
    eager_out, eager = _grads(copy.deepcopy(plain).to(device, dtype), x.to(device, dtype),
                              grad.to(device, dtype))
    out, ours = _grads(fused, x.to(device, dtype), grad.to(device, dtype))
    _, again = _grads(fused, x.to(device, dtype), grad.to(device, dtype))
    assert_accurate("out", out, ref_out, eager_out, dtype, seed, scale=scales["out"])
    for name in ref:
        assert_accurate(name, ours[name], ref[name], eager[name], dtype, seed,
                        scale=scales.get(name))
        assert torch.equal(ours[name], again[name]), (name, seed)


@pytest.mark.parametrize("use_grn", [False, True], ids=["v1", "v2"])
@pytest.mark.parametrize("device", TRITON_DEVICES)
def test_one_split_gradients_written_direct_equal_their_summed_partials(device, use_grn,
                                                                         monkeypatch, poisoned):
    """In bf16, the weight GEMMs' gradients written in the parameter's dtype straight into the
    flat buffer are bit for bit what their fp32 partials summed by finalize give: one split,
    one rounding either way."""
    from convnext_kernels.triton import grad_workspace, matmul, mlp_fused_backward
    monkeypatch.setattr(matmul, "sm_count", lambda device: 1)
    monkeypatch.setattr(mlp_fused_backward, "sm_count", lambda device: 1)
    gen, _ = fresh_generator()
    _, fused = _triton_block(gen, 16, torch.bfloat16, device, use_grn)
    x = torch.randn(2, 16, 8, 8, generator=gen).to(device, torch.bfloat16)
    grad = torch.randn(x.shape, generator=gen).to(device, torch.bfloat16)
    init, direct_counts = grad_workspace.GradWorkspace.__init__, []

    def counting(ws, *args, **kwargs):
        init(ws, *args, **kwargs)
        direct_counts.append(len(ws.direct))

    monkeypatch.setattr(grad_workspace.GradWorkspace, "__init__", counting)
    _, direct = _grads(fused, x, grad)

    def no_direct(ws, *args, direct=(), **kwargs):
        counting(ws, *args, **kwargs)

    monkeypatch.setattr(grad_workspace.GradWorkspace, "__init__", no_direct)
    _, summed = _grads(fused, x, grad)
    assert direct_counts == [4 if use_grn else 5, 0]
    for name, g in summed.items():
        assert torch.equal(direct[name], g), name


@pytest.mark.parametrize("dim,use_grn", [(16, False), (160, False), (16, True)],
                         ids=["fused-mlp", "two-gemms", "v2"])
@pytest.mark.parametrize("device", TRITON_DEVICES)
def test_whole_block_under_autocast(device, dim, use_grn, poisoned):
    """fp32 parameters and input under bf16 autocast: the kernels read fp32 and compute in bf16
    (no casts); out in bf16, every gradient in its parameter's dtype (fp32), within the bf16
    tolerance of the float64 reference, judged against eager's autocast error."""
    gen, seed = fresh_generator()
    plain, fused = _triton_block(gen, dim, torch.float32, device, use_grn)
    x = torch.randn(2, dim, 5, 6, generator=gen, dtype=torch.float64)
    grad = torch.randn(x.shape, generator=gen, dtype=torch.float64)
    ref_out, ref = _grads(plain, x, grad)
    scales = block_sum_scales(plain, x, grad)
    eager_block = plain.to(device=device, dtype=torch.float32)
    with torch.autocast(torch.device(device).type, dtype=torch.bfloat16):
        eager_out, eager = _grads(eager_block, x.to(device, torch.float32),
                                  grad.to(device, torch.float32))
        out, ours = _grads(fused, x.to(device, torch.float32),
                           grad.to(device, torch.bfloat16))
    assert out.dtype == torch.bfloat16
    assert_accurate("out", out, ref_out, eager_out, torch.bfloat16, seed, scale=scales["out"])
    for name in ref:
        assert ours[name].dtype == torch.float32, name
        # (120 seeds: ours ≤ 0.52 eps of the sum scale, the tolerance ≥ 1 eps.)
        assert_accurate(name, ours[name], ref[name], eager[name], torch.bfloat16, seed,
                        scale=scales.get(name))


def _block_op_args(gen, device, use_grn, dim=16):
    _, fused = _triton_block(gen, dim, torch.float32, device, use_grn, drop_path=0.0)
    w = fused.weights()
    x = torch.randn(2, dim, 3, 4, generator=gen).to(device).contiguous(
        memory_format=torch.channels_last)
    drop = torch.tensor([1.0, 2.0], device=device)
    params = {n: t.detach().requires_grad_() if t is not None else None
              for n, t in w._asdict().items()}
    return x, params, drop


@pytest.mark.parametrize("use_grn", [False, True], ids=["v1", "v2"])
@pytest.mark.parametrize("device", TRITON_DEVICES)
def test_whole_block_opcheck(device, use_grn):
    gen, _ = fresh_generator()
    x, params, drop = _block_op_args(gen, device, use_grn)
    from convnext_kernels.triton import whole_block as triton_block
    from convnext_kernels.triton.grad_workspace import slots_string
    forward_op = torch.ops.convnext_kernels.block_triton.default
    layout = slots_string(triton_block.grad_shapes(
        params["dw_weight"], params["fc1_w"], params["fc2_w"], params["gamma"] is not None,
        params["grn_weight"], params["grn_bias"]))
    args = (x.requires_grad_(), *params.values(), drop, 1e-6, 1e-6, torch.float32,
            params["gamma"] is not None, layout)
    torch.library.opcheck(forward_op, args)
    _, y_rows, conv, mean, rstd, hidden, y2, G, nx = forward_op(
        *[a.detach() if isinstance(a, torch.Tensor) else a for a in args])
    p = {n: t.detach() if t is not None else None for n, t in params.items()}
    grad = torch.randn(x.shape, generator=gen).to(device).contiguous(
        memory_format=torch.channels_last)
    torch.library.opcheck(torch.ops.convnext_kernels.block_backward_triton.default,
                          (grad, x.detach(), p["dw_weight"], p["ln_weight"], p["fc1_w"],
                           p["fc1_b"], p["fc2_w"], p["gamma"], p["grn_weight"], p["grn_bias"],
                           drop, y_rows, conv, mean, rstd, hidden, y2, G, nx, 1e-6, layout))


@pytest.mark.parametrize("use_grn", [False, True], ids=["v1", "v2"])
@pytest.mark.parametrize("device", TRITON_DEVICES)
def test_whole_block_torch_compile_fullgraph(device, use_grn):
    gen, _ = fresh_generator()
    _, fused = _triton_block(gen, 16, torch.float32, device, use_grn)
    _assert_compiled_grads_match_eager(fused, torch.randn(2, 16, 4, 5, generator=gen).to(device))


def _assert_compiled_grads_match_eager(fused, x):
    """The block compiled (fullgraph, after a dynamo reset) and eager give the same input and
    parameter gradients."""
    torch._dynamo.reset()
    fused.zero_grad()
    x_c, x_e = (x.clone().requires_grad_() for _ in range(2))
    torch.compile(fused, fullgraph=True)(x_c).square().sum().backward()
    grads_c = [p.grad.clone() for p in fused.parameters()]
    fused.zero_grad()
    fused(x_e).square().sum().backward()
    torch.testing.assert_close(x_c.grad, x_e.grad, rtol=1e-4, atol=1e-4)
    for c, p in zip(grads_c, fused.parameters()):
        torch.testing.assert_close(c, p.grad, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("device", TRITON_DEVICES)
def test_changed_gradient_layout_is_not_replayed_from_compile_caches(device, monkeypatch):
    """The flat gradient buffer's layout is an argument of the block ops, so a layout changed
    (as by an upgrade) changes the compiled forward graph, and torch.compile's caches cannot
    replay a backward that takes its views at the old offsets: compiled twice with the layout
    reversed in between, the gradients match eager both times."""
    from convnext_kernels.triton import whole_block as triton_block
    gen, _ = fresh_generator()
    _, fused = _triton_block(gen, 16, torch.float32, device)
    x = torch.randn(2, 16, 4, 5, generator=gen).to(device)
    grad_shapes = triton_block.grad_shapes
    _assert_compiled_grads_match_eager(fused, x)
    monkeypatch.setattr(triton_block, "grad_shapes",
                        lambda *a: dict(reversed(grad_shapes(*a).items())))
    _assert_compiled_grads_match_eager(fused, x)


@pytest.mark.parametrize("use_grn", [False, True], ids=["v1", "v2"])
@pytest.mark.parametrize("device", TRITON_DEVICES)
def test_whole_block_empty_batch_and_frozen_parameters(device, use_grn):
    gen, seed = fresh_generator()
    plain, fused = _triton_block(gen, 16, torch.float32, device, use_grn)
    x = torch.randn(0, 16, 4, 4, device=device, requires_grad=True)
    fused(x).sum().backward()
    assert x.grad.shape == x.shape
    assert all(p.grad is not None and not p.grad.any() for p in fused.parameters())
    # Frozen parameters get no gradient; the others are still right.
    fused.zero_grad()
    # (a frozen layer scale: y2 is not saved, no gamma partials)
    frozen = ("dwconv.weight", "pwconv2.weight", "grn.gamma" if use_grn else "gamma")
    for name in frozen:
        fused.get_parameter(name).requires_grad_(False)
    x = torch.randn(2, 16, 4, 4, generator=gen, dtype=torch.float64)
    fused(x.float().to(device)).square().sum().backward()
    plain(x).square().sum().backward()  # the float64 reference
    assert all(fused.get_parameter(name).grad is None for name in frozen)
    # Norm-wise, as every accuracy check here (an elementwise rtol failed once at random on
    # one near-zero element: 1.5e-5 absolute on a 1024-element fp32 gradient).
    for name in ("pwconv1.weight", "pwconv1.bias", "norm.weight", "dwconv.bias"):
        ours = fused.get_parameter(name).grad
        assert_accurate(name, ours.cpu(), plain.get_parameter(name).grad, None,
                        torch.float32, seed)


PREPACK = pytest.mark.skipif(
    "cpp" not in ck.available_backends() or not ck.ops.packed.available(),
    reason="needs the cpp backend and torch's oneDNN ops")


def _prepacked_case(gen, dim=24, **kwargs):
    """The fp32 fused block in eval mode with prepacked weights, and reference(x, block): the
    float64 plain block's output with block's current weights."""
    plain, fused = _pair(gen, dim, False, **kwargs)

    def reference_of_current_weights(x, block):
        plain.load_state_dict(block.state_dict())
        with torch.no_grad():
            return plain(x.double())
    return ck.prepack_weights(fused.float().eval()), reference_of_current_weights


def _packed_used(block):
    return block._packed is not None and block._packed[0].packed is not None


@PREPACK
@pytest.mark.parametrize("channels_last", [True, False], ids=["nhwc", "nchw"])
def test_prepacked_inference_matches_float64_reference(channels_last, poisoned):
    gen, seed = fresh_generator()
    fused, reference_out = _prepacked_case(gen)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = torch.randn(2, 24, 6, 7, generator=gen).contiguous(memory_format=fmt)
    with torch.no_grad():
        out = fused(x)
    assert _packed_used(fused)
    assert out.is_contiguous(memory_format=fmt)
    assert_accurate("out", out, reference_out(x, fused), None, torch.float32, seed)


@PREPACK
def test_prepacked_weights_follow_every_weight_change(poisoned):
    """Packs are redone when a weight changes through an optimizer step, load_state_dict, an
    in-place copy, or a new storage (.double().float()): the output follows the new weights."""
    gen, seed = fresh_generator()
    fused, reference_out = _prepacked_case(gen)
    x = torch.randn(2, 24, 5, 5, generator=gen)

    def check(what):
        with torch.no_grad():
            out = fused(x)
        assert _packed_used(fused), what
        assert_accurate(f"out after {what}", out, reference_out(x, fused), None, torch.float32,
                        seed)

    check("packing")
    optimizer = torch.optim.SGD(fused.parameters(), lr=0.5)
    fused.train()
    fused(x).square().sum().backward()
    optimizer.step()
    fused.eval()
    check("an optimizer step")
    state = {k: torch.randn(v.shape, generator=gen) for k, v in fused.state_dict().items()}
    fused.load_state_dict(state)
    check("load_state_dict")
    with torch.no_grad():
        fused.pwconv1.weight.copy_(torch.randn(fused.pwconv1.weight.shape, generator=gen))
        fused.pwconv2.weight.mul_(-2)
    check("in-place writes")
    fused.double().float()
    check("a round trip through float64")
    fused = copy.deepcopy(fused)  # the packs are oneDNN tensors: neither copied nor pickled
    check("deepcopy")
    buffer = io.BytesIO()
    torch.save(fused, buffer)
    buffer.seek(0)
    fused = torch.load(buffer, weights_only=False)
    check("torch.save and torch.load of the module")


@PREPACK
def test_prepacked_weights_only_where_they_serve(monkeypatch):
    """Gradients, training mode, GRN, autocast, other backends, large hiddens, tracing and a
    torch without the oneDNN ops all take the regular path; enabled=False drops the packs."""
    from torch.fx.experimental.proxy_tensor import make_fx
    gen, _ = fresh_generator()
    fused, _ = _prepacked_case(gen)
    x = torch.randn(2, 24, 5, 5, generator=gen)

    def packs_after(call):
        fused._packed = None
        call()
        return _packed_used(fused)

    with torch.no_grad():
        assert packs_after(lambda: fused(x))
        assert not packs_after(lambda: fused.train()(x))
        fused.eval()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert not packs_after(lambda: fused(x))
        fused.backend = "torch"
        assert not packs_after(lambda: fused(x))
        fused.backend = "auto"
        monkeypatch.setattr(ck.ops.packed, "MAX_HIDDEN", 2 * 5 * 5 * 96 - 1)
        assert not packs_after(lambda: fused(x))
        monkeypatch.undo()
        monkeypatch.setattr(ck.ops.packed, "available", lambda: False)
        assert not packs_after(lambda: fused(x))
        monkeypatch.undo()
        graph = make_fx(fused)(x)
        assert not _packed_used(fused)
        assert not any("mkldnn" in str(node.target) for node in graph.graph.nodes)
    assert not packs_after(lambda: fused(x))  # gradients to compute
    ck.prepack_weights(fused, enabled=False)
    with torch.no_grad():
        assert not packs_after(lambda: fused(x))
    grn_block = ck.prepack_weights(ck.FusedConvNeXtBlock(24, use_grn=True).eval())
    with torch.no_grad():
        grn_block(x)
    assert grn_block._packed is None


def _small_models(gen):
    """A plain ck.models ConvNeXt (float64) and a fused fp32 one with the same weights."""
    kwargs = dict(depths=(1, 1, 1, 1), dims=(16, 32, 48, 64), num_classes=10)
    plain = ck.models.ConvNeXt(fused=False, **kwargs).double()
    _randomise(plain, gen)
    fused = ck.models.ConvNeXt(**kwargs)
    fused.load_state_dict(plain.state_dict())
    return plain.eval(), fused.eval()


def _convs(model):
    return [m for m in model.modules() if isinstance(m, nn.Conv2d) and m.groups == 1]


@PREPACK
def test_prepacked_patchify_convs(poisoned):
    """prepack_weights turns the stem's and the downsampling layers' convs (not the dwconvs) into
    PrepackedConv2d in place: the model's output matches the float64 plain model's, the packs are
    used on channels_last input only and follow weight changes, the state_dict is unchanged, and
    enabled=False, revert_model, deepcopy and pickling all leave plain behaviour."""
    gen, seed = fresh_generator()
    plain, fused = _small_models(gen)
    keys = list(fused.state_dict())
    convs = _convs(fused)
    assert len(convs) == 4
    ck.prepack_weights(fused)
    assert all(type(c) is ck.prepack.PrepackedConv2d for c in convs) and _convs(fused) == convs
    assert list(fused.state_dict()) == keys
    x = torch.randn(2, 3, 64, 64, generator=gen)
    x_cl = x.contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        ref = plain(x.double())
        out = fused(x_cl)
        assert all(c._packed is not None and c._packed.packed is not None for c in convs)
        assert_accurate("out", out, ref, None, torch.float32, seed)
        for c in convs:
            c._packed = None
        assert_accurate("out nchw", fused(x), ref, None, torch.float32, seed)
        assert all(c._packed is None for c in convs)  # NCHW input: nn.Conv2d's path
        convs[0].weight.mul_(-1)  # a weight change (the stem's): packed again
        _convs(plain)[0].weight.mul_(-1)
        assert_accurate("out after a weight change", fused(x_cl), plain(x.double()), None,
                        torch.float32, seed)
    fused.train()
    for c in convs:
        c._packed = None
    fused(x_cl).sum().backward()
    assert all(c._packed is None for c in convs)  # training and gradients: nn.Conv2d's path
    fused.eval()
    copied = copy.deepcopy(fused)
    buffer = io.BytesIO()
    torch.save(fused, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    with torch.no_grad():
        for model in (copied, loaded):
            torch.testing.assert_close(model(x_cl), fused(x_cl), rtol=0, atol=0)
    from torch.fx.experimental.proxy_tensor import make_fx
    with torch.no_grad():
        graph = make_fx(fused)(x_cl)  # a traced graph must not capture the packs
    assert not any("mkldnn" in str(node.target) for node in graph.graph.nodes)
    ck.prepack_weights(fused, enabled=False)
    assert all(type(c) is nn.Conv2d and c._packed is None for c in convs)
    ck.prepack_weights(fused)
    ck.revert_model(fused)
    assert all(type(c) is nn.Conv2d for c in _convs(fused))


def test_prepack_weights_checks_its_argument():
    with pytest.raises(TypeError, match="nn.Module"):
        ck.prepack_weights("model")
    with pytest.raises(ValueError, match="no FusedConvNeXtBlock"):
        ck.prepack_weights(nn.Sequential(nn.Linear(2, 2)))
