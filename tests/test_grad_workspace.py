"""GradWorkspace: gradients with split counts of their own, summed in split order and written in
their parameters' dtype by one finalize launch (up to three blocks of partials), or one launch
each."""
import pytest
import torch

from numerics import assert_accurate, fresh_generator, kernel_targets, randn

TRITON_DEVICES = [d for b, d in kernel_targets() if b == "triton"]
# Column counts off the finalize block (1024): a program's columns straddle gradients.
SHAPES = {"dw_weight": (40, 1, 7, 7), "ln_weight": (40,), "gamma": (40,), "fc1_w": (160, 40),
          "fc1_b": (160,), "fc2_w": (40, 160), "fc2_b": (40,)}


def _filled(ws, gen, device):
    """Every partial a producer owns, random; {name: its float64 column sums}."""
    sums = {}
    for name, shape in SHAPES.items():
        view = ws[name]
        assert view.shape == (ws.splits[name], torch.Size(shape).numel())
        values = randn(gen, *view.shape, dtype=torch.float64)
        view.copy_(values.to(device))
        sums[name] = values.float().double().sum(0).reshape(shape)
    return sums


@pytest.mark.parametrize("ln_splits", [3, 5], ids=lambda n: f"ln-{n}")
@pytest.mark.parametrize("gemm_splits", [1, 3, 7], ids=lambda n: f"gemm-{n}")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("device", TRITON_DEVICES)
def test_up_to_three_split_counts_in_one_launch(device, dtype, gemm_splits, ln_splits,
                                                poisoned):
    """As in the block: the rows' count, the LayerNorm's own, the weight GEMMs' (gamma's with
    them): one, two or three blocks."""
    from convnext_kernels.triton.common import recorded_launches
    from convnext_kernels.triton.grad_workspace import GradWorkspace, unflatten
    gen, seed = fresh_generator()
    splits = {name: gemm_splits for name in SHAPES}
    splits.update(dw_weight=3, ln_weight=ln_splits)
    ws = GradWorkspace(SHAPES, splits, dtype, device)
    runs = [3, ln_splits, gemm_splits]
    assert len(ws.blocks) == 1 + sum(a != b for a, b in zip(runs, runs[1:]))
    sums = _filled(ws, gen, device)
    with recorded_launches() as launches:
        ws.finalize_flat()
    assert len(launches) == 1
    grads = unflatten(ws.finalize_flat(), SHAPES)
    each = ws.finalize_each()
    for name, ref in sums.items():
        assert grads[name].dtype == each[name].dtype == dtype
        assert torch.equal(grads[name], each[name])
        # one rounding of the fp32 sum to dtype: the float64 sum of the same fp32 partials
        assert_accurate(name, grads[name], ref, ref.to(dtype), dtype, seed)


@pytest.mark.parametrize("device", TRITON_DEVICES)
def test_at_most_three_runs_of_split_counts(device):
    """finalize reads three blocks: counts alternating over four runs are refused by name."""
    from convnext_kernels.triton.grad_workspace import GradWorkspace
    shapes = {"a": (3,), "b": (3,), "c": (3,), "d": (3,)}
    with pytest.raises(ValueError, match="reads 3 blocks"):
        GradWorkspace(shapes, {"a": 2, "b": 1, "c": 2, "d": 1}, torch.float32, device)


@pytest.mark.parametrize("gemm_splits", [1, 3], ids=lambda n: f"gemm-{n}")
@pytest.mark.parametrize("device", TRITON_DEVICES)
def test_direct_gradients_with_one_split_are_views_of_the_flat_buffer(device, gemm_splits,
                                                                     poisoned):
    """The GEMM gradients named direct, at one split: [1, numel] views of `flat` in the
    parameters' dtype that finalize leaves as written, summing only the other gradients (one
    launch); at more splits they are partials like the rest."""
    from convnext_kernels.triton.common import recorded_launches
    from convnext_kernels.triton.grad_workspace import GradWorkspace, unflatten
    gen, seed = fresh_generator()
    dtype = torch.bfloat16
    gemms = ("gamma", "fc1_w", "fc1_b", "fc2_w", "fc2_b", "absent")
    splits = {name: gemm_splits if name in gemms else 3 for name in SHAPES}
    ws = GradWorkspace(SHAPES, splits, dtype, device, direct=gemms)
    assert ws.direct == (list(gemms[:-1]) if gemm_splits == 1 else [])
    written = {}
    for name, shape in SHAPES.items():
        if name in ws.direct:
            view = ws[name]
            assert view.shape == (1, torch.Size(shape).numel()) and view.dtype == dtype
            written[name] = randn(gen, *shape, dtype=torch.float64).to(device, dtype)
            view.copy_(written[name].reshape(1, -1))
    sums = {}
    for name, shape in SHAPES.items():
        if name not in ws.direct:
            values = randn(gen, *ws[name].shape, dtype=torch.float64)
            ws[name].copy_(values.to(device))
            sums[name] = values.float().double().sum(0).reshape(shape)
    with recorded_launches() as launches:  # (recorded, not run)
        ws.finalize_flat()
    assert len(launches) == 1
    flat = ws.finalize_flat()
    assert flat is ws.flat
    grads = unflatten(flat, SHAPES)
    for name, value in written.items():
        assert torch.equal(grads[name], value), name
    for name, ref in sums.items():
        assert_accurate(name, grads[name], ref, ref.to(dtype), dtype, seed)


@pytest.mark.parametrize("device", TRITON_DEVICES)
def test_direct_gradients_must_be_the_last(device):
    """Direct gradients are the flat buffer's tail (finalize sums the columns before them)."""
    from convnext_kernels.triton.grad_workspace import GradWorkspace
    with pytest.raises(ValueError, match="not the last"):
        GradWorkspace(SHAPES, 1, torch.float32, device, direct=("fc1_w", "fc1_b"))
