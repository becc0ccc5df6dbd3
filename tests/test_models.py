"""ck.models and convert_model on real timm and torchvision models (random init, small images):
converted outputs and every parameter's gradient match the original, train and eval, V1 and V2;
parameter counts equal timm's; compile, autocast, DDP."""
import pytest
import torch

import convnext_kernels as ck
from numerics import FP32_TOLERANCE, fresh_generator, kernel_targets, rel_error

timm = pytest.importorskip("timm")
torchvision = pytest.importorskip("torchvision")

TARGETS = kernel_targets()


def _randomise(model, gen):
    """Parameters that start at 0 or 1e-6 (GRN, layer scale, LayerNorm bias) get random values so
    that their paths matter."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() <= 1 or "grn" in name or "layer_scale" in name:
                p.add_(torch.randn(p.shape, generator=gen) * 0.5)


ANCHORS = {
    "timm_atto_conv_mlp": lambda: timm.create_model("convnext_atto"),
    "timm_femto_linear_mlp": lambda: timm.create_model("convnext_femto", conv_mlp=False),
    "timm_v2_atto": lambda: timm.create_model("convnextv2_atto"),
    "torchvision_tiny": lambda: torchvision.models.convnext_tiny(stochastic_depth_prob=0.2),
    "official_atto": lambda: ck.models.convnext_atto(fused=False, drop_path_rate=0.2),
    "official_v2_atto": lambda: ck.models.convnextv2_atto(fused=False),
}


def _step(model, x, seed):
    model.zero_grad()
    torch.manual_seed(seed)  # the same drop-path draws for both models
    out = model(x)
    out.square().mean().backward()
    return out.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


def _assert_converted_matches(model, backend, x, train):
    gen, seed = fresh_generator()
    _randomise(model, gen)
    model.train(train)
    keys = list(model.state_dict())
    params = {n: id(p) for n, p in model.named_parameters()}
    ref_out, ref_grads = _step(model, x, seed)
    assert ck.convert_model(model, backend=backend) is model
    assert list(model.state_dict()) == keys
    assert {n: id(p) for n, p in model.named_parameters()} == params
    out, grads = _step(model, x, seed)
    assert rel_error(out, ref_out) <= FP32_TOLERANCE, f"output (seed {seed})"
    for name, g in grads.items():
        # a parameter gradient is a sum over pixels and samples: error against its largest entry
        assert rel_error(g, ref_grads[name]) <= FP32_TOLERANCE, f"{name} (seed {seed})"


@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("anchor", list(ANCHORS))
def test_convert_model_matches_original_cpp(anchor, train):
    model = ANCHORS[anchor]()
    x = torch.randn(2, 3, 64, 64).contiguous(memory_format=torch.channels_last)
    _assert_converted_matches(model, "cpp", x, train)
    assert sum(isinstance(m, ck.FusedConvNeXtBlock) for m in model.modules()) > 0


@pytest.mark.parametrize("anchor", ["timm_v2_atto", "official_atto"])
def test_convert_model_matches_original_triton(anchor):
    if not any(b == "triton" for b, _ in TARGETS):
        pytest.fail("triton is not available here (TRITON_INTERPRET=1 is set by conftest)")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = ANCHORS[anchor]().to(device)
    x = torch.randn(2, 3, 32, 32, device=device).contiguous(memory_format=torch.channels_last)
    _assert_converted_matches(model, "triton", x, True)


def test_convert_twice_is_a_no_op_and_unknown_models_are_refused():
    model = timm.create_model("convnext_atto")
    ck.convert_model(model, backend="cpp")
    blocks = [id(m) for m in model.modules()]
    ck.convert_model(model, backend="torch")
    assert [id(m) for m in model.modules()] == blocks
    assert all(m.backend == "torch" for m in model.modules()
               if isinstance(m, (ck.FusedConvNeXtBlock, ck.LayerNorm2d)))
    with pytest.raises(ValueError, match="found no ConvNeXt block"):
        ck.convert_model(torchvision.models.resnet18())
    with pytest.raises(ValueError, match="single block"):
        ck.convert_model(ck.models.ConvNeXtBlock(8))
    with pytest.raises(TypeError, match="nn.Module"):
        ck.convert_model("convnext_tiny")


def _count(model):
    return sum(p.numel() for p in model.parameters())


V1 = list(ck.models.V1_SIZES)
V2 = list(ck.models.V2_SIZES)


@pytest.mark.parametrize("name", [f"convnext_{s}" for s in V1] + [f"convnextv2_{s}" for s in V2])
def test_every_variant_builds_with_timms_parameter_count(name):
    with torch.device("meta"):
        ours = getattr(ck.models, name)()
        plain = getattr(ck.models, name)(fused=False)
        theirs = timm.create_model(name)
    assert _count(ours) == _count(theirs) == _count(plain)
    assert list(ours.state_dict()) == list(plain.state_dict())


def test_official_keys_load_between_fused_and_plain_models():
    gen, _ = fresh_generator()
    plain = ck.models.convnextv2_atto(fused=False).eval()
    _randomise(plain, gen)
    fused = ck.models.convnextv2_atto(backend="cpp").eval()
    fused.load_state_dict(plain.state_dict())
    x = torch.randn(1, 3, 32, 32)
    assert rel_error(fused(x), plain(x)) <= FP32_TOLERANCE
    keys = set(plain.state_dict())
    assert {"downsample_layers.0.1.weight", "stages.0.0.dwconv.weight", "stages.0.0.grn.gamma",
            "norm.weight", "head.weight"} <= keys


def _small_model(**kwargs):
    return ck.models.ConvNeXt(depths=(1, 1, 1, 1), dims=(16, 32, 48, 64), num_classes=10,
                              **kwargs)


def test_torch_compile_fullgraph_model():
    torch._dynamo.reset()
    gen, _ = fresh_generator()
    model = _small_model(backend="cpp", drop_path_rate=0.1)
    _randomise(model, gen)
    model.eval()
    x = torch.randn(2, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    compiled = torch.compile(model, fullgraph=True)
    torch.testing.assert_close(compiled(x), model(x), rtol=1e-4, atol=1e-4)
    model.train()
    compiled(x).sum().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_autocast_bf16_runs_in_bf16_close_to_eager():
    gen, _ = fresh_generator()
    plain = _small_model(fused=False)
    _randomise(plain, gen)
    fused = _small_model(backend="cpp")
    fused.load_state_dict(plain.state_dict())
    x = torch.randn(2, 3, 32, 32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        expected = plain(x)
        out = fused(x)
    out.float().sum().backward()
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in fused.parameters())
    assert rel_error(out, expected) < 0.05  # two bf16 paths through 4 stages
    assert rel_error(out, plain(x)) < 0.05


def _ddp_worker(rank, world, init_file, result_file):
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                            world_size=world)
    torch.manual_seed(0)
    plain = _small_model(fused=False)
    fused = _small_model(backend="cpp")
    fused.load_state_dict(plain.state_dict())
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(rank))
    grads = []
    for model in (plain, fused):
        ddp = DDP(model)
        ddp(x).square().mean().backward()
        torch.optim.SGD(model.parameters(), lr=0.1).step()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    if rank == 0:
        worst = max(rel_error(grads[1][n], grads[0][n]) for n in grads[0])
        torch.save({"worst": worst, "weights_equal": all(
            rel_error(p, q) <= FP32_TOLERANCE for p, q in
            zip(fused.parameters(), plain.parameters()))}, result_file)
    dist.destroy_process_group()


def test_ddp_two_cpu_processes_match_unfused(tmp_path):
    import torch.multiprocessing as mp
    result = tmp_path / "result.pt"
    mp.spawn(_ddp_worker, args=(2, str(tmp_path / "init"), str(result)), nprocs=2, join=True)
    outcome = torch.load(result)
    assert outcome["worst"] <= FP32_TOLERANCE and outcome["weights_equal"]


def test_models_to_device_and_half():
    model = _small_model(backend="cpp").half()
    assert all(p.dtype == torch.float16 for p in model.parameters())
    out = model(torch.randn(1, 3, 32, 32, dtype=torch.float16))
    assert out.dtype == torch.float16 and torch.isfinite(out).all()
