"""Converted models go where timm and torchvision models go: FX tracing and feature extraction,
official V1/V2 checkpoints (strict), revert_model back to the source library's modules,
torch.export with static and dynamic batch."""
import copy

import pytest
import torch
from torch import nn

import convnext_kernels as ck
from numerics import FP32_TOLERANCE, fresh_generator, rel_error

timm = pytest.importorskip("timm")
torchvision = pytest.importorskip("torchvision")
from timm.models import FeatureGraphNet, FeatureListNet  # noqa: E402
from torchvision.models.feature_extraction import create_feature_extractor  # noqa: E402

SOURCES = {
    "timm_atto": lambda: timm.create_model("convnext_atto", drop_path_rate=0.1),
    "timm_femto_linear_mlp": lambda: timm.create_model("convnext_femto", conv_mlp=False),
    "timm_v2_atto": lambda: timm.create_model("convnextv2_atto"),
    "torchvision_tiny": lambda: torchvision.models.convnext_tiny(),
    "official_atto": lambda: ck.models.convnext_atto(fused=False),
    "official_v2_atto": lambda: ck.models.convnextv2_atto(fused=False),
}
STAGES = {"torchvision_tiny": ["features.1", "features.3", "features.5", "features.7"]}


def _randomised(name):
    """A source model whose layer scales, GRN and norm parameters are random (they start at
    0/1e-6, which would hide their paths)."""
    gen, seed = fresh_generator()
    model = SOURCES[name]()
    with torch.no_grad():
        for pname, p in model.named_parameters():
            if p.dim() <= 1 or "grn" in pname or "layer_scale" in pname:
                p.add_(torch.randn(p.shape, generator=gen) * 0.5)
    return model.eval(), torch.randn(2, 3, 64, 64, generator=gen), seed


def _stage_nodes(name):
    return STAGES.get(name, [f"stages.{i}" for i in range(4)])


@pytest.mark.parametrize("name", SOURCES)
def test_fx_feature_extraction_of_a_converted_model(name):
    model, x, seed = _randomised(name)
    fused = ck.convert_model(copy.deepcopy(model), backend="cpp")
    traced = torch.fx.symbolic_trace(fused)
    assert any(n.op == "call_function" and n.target.__name__ == "fused_block"
               for n in traced.graph.nodes)
    assert rel_error(traced(x), model(x)) <= FP32_TOLERANCE, f"seed {seed}"
    nodes = {n: n.replace(".", "_") for n in _stage_nodes(name)}
    ours, theirs = create_feature_extractor(fused, nodes), create_feature_extractor(model, nodes)
    got, want = ours(x), theirs(x)
    for key in nodes.values():
        assert rel_error(got[key], want[key]) <= FP32_TOLERANCE, f"{key} (seed {seed})"


@pytest.mark.parametrize("name", ["timm_atto", "timm_v2_atto"])
def test_timm_features_only_fx_and_hooks(name):
    model, x, seed = _randomised(name)
    want = FeatureListNet(copy.deepcopy(model), out_indices=(0, 1, 2, 3),
                          flatten_sequential=True)(x)
    fused = ck.convert_model(copy.deepcopy(model), backend="cpp")
    converted_before = [FeatureGraphNet(fused, out_indices=(0, 1, 2, 3)),
                        FeatureListNet(copy.deepcopy(fused), out_indices=(0, 1, 2, 3),
                                       flatten_sequential=True)]
    converted_after = ck.convert_model(FeatureListNet(
        copy.deepcopy(model), out_indices=(0, 1, 2, 3), flatten_sequential=True), backend="cpp")
    for features in converted_before + [converted_after]:
        for got, ref in zip(features(x), want, strict=True):
            assert rel_error(got, ref) <= FP32_TOLERANCE, f"{type(features)} (seed {seed})"


def test_converting_a_traced_model_is_refused_by_name():
    traced = FeatureGraphNet(timm.create_model("convnext_atto"), out_indices=(0, 1))
    with pytest.raises(ValueError, match="traced with torch.fx through its ConvNeXt blocks"):
        ck.convert_model(traced)


# The official code's state_dict layout (facebookresearch ConvNeXt / ConvNeXt-V2), written out
# by hand: block keys, and the model-level keys around them.
def _official_block_state(dim, v2, gen):
    shapes = {"dwconv.weight": (dim, 1, 7, 7), "dwconv.bias": (dim,), "norm.weight": (dim,),
              "norm.bias": (dim,), "pwconv1.weight": (4 * dim, dim), "pwconv1.bias": (4 * dim,),
              "pwconv2.weight": (dim, 4 * dim), "pwconv2.bias": (dim,)}
    if v2:
        shapes.update({"grn.gamma": (1, 1, 1, 4 * dim), "grn.beta": (1, 1, 1, 4 * dim)})
    else:
        shapes["gamma"] = (dim,)
    return {k: torch.randn(s, generator=gen) for k, s in shapes.items()}


def _official_model_state(depths, dims, v2, gen):
    state = {"downsample_layers.0.0.weight": torch.randn(dims[0], 3, 4, 4, generator=gen),
             "downsample_layers.0.0.bias": torch.randn(dims[0], generator=gen),
             "downsample_layers.0.1.weight": torch.randn(dims[0], generator=gen),
             "downsample_layers.0.1.bias": torch.randn(dims[0], generator=gen)}
    for i in range(1, 4):
        state.update({
            f"downsample_layers.{i}.0.weight": torch.randn(dims[i - 1], generator=gen),
            f"downsample_layers.{i}.0.bias": torch.randn(dims[i - 1], generator=gen),
            f"downsample_layers.{i}.1.weight": torch.randn(dims[i], dims[i - 1], 2, 2,
                                                           generator=gen),
            f"downsample_layers.{i}.1.bias": torch.randn(dims[i], generator=gen)})
    for s, (depth, dim) in enumerate(zip(depths, dims)):
        for b in range(depth):
            state.update({f"stages.{s}.{b}.{k}": v
                          for k, v in _official_block_state(dim, v2, gen).items()})
    state.update({"norm.weight": torch.randn(dims[-1], generator=gen),
                  "norm.bias": torch.randn(dims[-1], generator=gen),
                  "head.weight": torch.randn(1000, dims[-1], generator=gen),
                  "head.bias": torch.randn(1000, generator=gen)})
    return state


@pytest.mark.parametrize("v2", [False, True], ids=["v1", "v2"])
def test_official_checkpoints_load_strict(v2):
    gen, _ = fresh_generator()
    block = ck.FusedConvNeXtBlock(16, use_grn=v2)
    assert (block.gamma is None) == v2  # V2: exactly the official block's parameters
    state = _official_block_state(16, v2, gen)
    block.load_state_dict(state, strict=True)
    assert set(block.state_dict()) == set(state)
    builder = ck.models.convnextv2_atto if v2 else ck.models.convnext_atto
    for fused in (True, False):
        model = builder(fused=fused)
        state = _official_model_state((2, 2, 6, 2), (40, 80, 160, 320), v2, gen)
        model.load_state_dict(state, strict=True)
        assert set(model.state_dict()) == set(state)


def test_v2_layer_scale_only_when_asked():
    assert ck.FusedConvNeXtBlock(8, use_grn=True, layer_scale_init_value=0.5).gamma is not None
    assert ck.FusedConvNeXtBlock(8).gamma is not None


@pytest.mark.parametrize("name", ["timm_atto", "timm_v2_atto", "torchvision_tiny",
                                  "official_atto", "official_v2_atto"])
def test_revert_and_round_trip(name):
    model, x, seed = _randomised(name)
    want = model(x)
    params = {n: id(p) for n, p in model.named_parameters()}
    kinds = {n: type(m) for n, m in model.named_modules()}
    ck.convert_model(model, backend="cpp")
    assert ck.revert_model(model) is model
    assert {n: type(m) for n, m in model.named_modules()} == kinds  # the source's own modules
    assert {n: id(p) for n, p in model.named_parameters()} == params
    assert torch.equal(model(x), want)
    ck.convert_model(model, backend="cpp")
    assert any(isinstance(m, ck.FusedConvNeXtBlock) for m in model.modules())
    assert rel_error(model(x), want) <= FP32_TOLERANCE, f"seed {seed}"


def test_revert_a_model_built_fused():
    gen, seed = fresh_generator()
    model = ck.models.convnextv2_atto().eval()
    plain = ck.models.convnextv2_atto(fused=False).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.2)
    plain.load_state_dict(model.state_dict())
    x = torch.randn(1, 3, 64, 64, generator=gen)
    ck.revert_model(model)
    assert not any(isinstance(m, (ck.FusedConvNeXtBlock, ck.LayerNorm2d))
                   for m in model.modules())
    assert torch.equal(model(x), plain(x))


def test_revert_refusals():
    with pytest.raises(ValueError, match="holds no FusedConvNeXtBlock"):
        ck.revert_model(nn.Sequential(nn.Linear(2, 2)))
    with pytest.raises(TypeError, match="expected an nn.Module"):
        ck.revert_model("model")


@pytest.mark.parametrize("name", ["timm_atto", "timm_v2_atto"])
def test_torch_export_static_and_dynamic_batch(name):
    model, x, seed = _randomised(name)
    want = model(x)
    ck.convert_model(model, backend="cpp")
    exported = torch.export.export(model, (x,))
    assert rel_error(exported.module()(x), want) <= FP32_TOLERANCE, f"seed {seed}"
    batch = torch.export.Dim("batch", min=1, max=64)
    exported = torch.export.export(model, (x,), dynamic_shapes={"x": {0: batch}})
    x3 = torch.randn(3, *x.shape[1:])
    assert rel_error(exported.module()(x3), model(x3)) <= FP32_TOLERANCE, f"seed {seed}"


def test_torchvision_feature_extractor_traced_with_leaves_converts_after():
    model, x, seed = _randomised("torchvision_tiny")
    nodes = {"features.3": "s2", "features.7": "s4"}
    want = create_feature_extractor(model, nodes)(x)
    extractor = create_feature_extractor(copy.deepcopy(model), nodes,
                                         tracer_kwargs={"leaf_modules": ck.fx_leaf_modules()})
    ck.convert_model(extractor, backend="cpp")
    assert sum(isinstance(m, ck.FusedConvNeXtBlock) for m in extractor.modules()) == 18
    got = extractor(x)
    for key in nodes.values():
        assert rel_error(got[key], want[key]) <= FP32_TOLERANCE, f"{key} (seed {seed})"


@pytest.mark.parametrize("feature_cls", [None, "fx"], ids=["hooks", "fx"])
def test_patch_timm(feature_cls):
    gen, seed = fresh_generator()
    x = torch.randn(1, 3, 64, 64, generator=gen)
    kwargs = {"features_only": True, "out_indices": (1, 3)}
    if feature_cls:
        kwargs["feature_cls"] = feature_cls
    for name in ("convnext_atto", "convnextv2_atto", "convnext_atto_ols"):
        torch.manual_seed(seed)
        stock = timm.create_model(name).eval()
        torch.manual_seed(seed)
        stock_features = timm.create_model(name, **kwargs).eval()
        with ck.patch_timm(backend="cpp"):
            torch.manual_seed(seed)
            patched = timm.create_model(name).eval()
            torch.manual_seed(seed)
            patched_features = timm.create_model(name, **kwargs).eval()
        assert any(isinstance(m, ck.FusedConvNeXtBlock) for m in patched.modules())
        assert any(isinstance(m, ck.FusedConvNeXtBlock) for m in patched_features.modules())
        assert rel_error(patched(x), stock(x)) <= FP32_TOLERANCE, f"{name} (seed {seed})"
        for got, want in zip(patched_features(x), stock_features(x), strict=True):
            assert rel_error(got, want) <= FP32_TOLERANCE, f"{name} features (seed {seed})"
    # undone on leaving the block: timm builds its own modules again, and traces through them
    assert not any(isinstance(m, ck.FusedConvNeXtBlock)
                   for m in timm.create_model("convnext_atto").modules())
    from timm.layers import is_notrace_module
    from timm.models.convnext import ConvNeXtBlock
    assert not is_notrace_module(ConvNeXtBlock)


def test_patch_timm_keeps_other_models_and_undo_without_with():
    patch = ck.patch_timm()
    try:
        assert not any(isinstance(m, ck.FusedConvNeXtBlock)
                       for m in timm.create_model("resnet10t").modules())
        assert any(isinstance(m, ck.FusedConvNeXtBlock)
                   for m in timm.create_model("convnext_atto").modules())
    finally:
        patch.undo()
    assert not any(isinstance(m, ck.FusedConvNeXtBlock)
                   for m in timm.create_model("convnext_atto").modules())


def test_check_command(capsys):
    from convnext_kernels.__main__ import main
    assert main(["check", "convnext_atto", "--size", "32", "--backend", "cpp", "--rounds",
                 "3"]) == 0
    out = capsys.readouterr().out
    assert "train worst gradient" in out and "speed-up" in out and out.strip().endswith("OK")
    # the setting timed, printed beside the ratio: what users run by default
    assert "batch 4, 32 px, channels_last, median of 3 interleaved rounds" in out


def test_check_command_names_the_models_for_an_unknown_one(capsys):
    from convnext_kernels.__main__ import main
    assert main(["check", "convnext_tinyy"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "no ConvNeXt model 'convnext_tinyy'" in err and "convnext_tiny," in err


def test_patch_timm_leaves_a_refused_model_as_timm_built_it():
    with ck.patch_timm(), pytest.warns(UserWarning, match="test_convnext stays timm's own.*GELU"):
        model = timm.create_model("test_convnext")
    assert not any(isinstance(m, (ck.FusedConvNeXtBlock, ck.LayerNorm2d))
                   for m in model.modules())


def test_a_refused_conversion_changes_nothing():
    model = timm.create_model("convnext_atto")
    model.stages[3].blocks[1].mlp.act = nn.GELU(approximate="tanh")
    kinds = [type(m) for m in model.modules()]
    with pytest.raises(ValueError, match="exact .erf. GELU"):
        ck.convert_model(model)
    assert [type(m) for m in model.modules()] == kinds


@pytest.mark.parametrize("backend", ["auto", "cpp", "triton"])
def test_meta_tensors_give_shapes_on_every_backend(backend):
    """timm's config tests build models on the meta device: shapes flow, nothing runs."""
    with torch.device("meta"):
        model = ck.convert_model(timm.create_model("convnextv2_atto"), backend=backend)
        out = model(torch.empty(1, 3, 64, 64))
    assert out.device.type == "meta" and out.shape == (1, 1000)
    with pytest.raises(ValueError, match="backend must be one of"):
        ck.layer_norm_2d(torch.empty(1, 4, 2, 2, device="meta"), torch.empty(4, device="meta"),
                         torch.empty(4, device="meta"), backend="cudnn")
