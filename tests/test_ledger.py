"""The block's launch budget, counted (not timed): FusedConvNeXtBlock(backend="triton") forward +
backward runs at most 12 launches (V1 and V2) at every ConvNeXt-T stage, in bf16 and with fp32
parameters under autocast, and none of its launchers makes the host wait for the device
(CUDA-graph safe).
Counted by benchmarks/ledger.py in a dry run (our kernels recorded, not run)."""
import ast
import json
import os

import pytest
import torch

from benchmarks import ledger
from convnext_kernels import backends

pytestmark = pytest.mark.skipif("triton" not in backends.available_backends(),
                                reason="needs triton (on CPU: TRITON_INTERPRET=1)")
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"

BLOCK_LAUNCH_BUDGET = 12
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("dtype", ["bf16", "autocast"])
@pytest.mark.parametrize("stage", sorted(ledger.STAGES))
def test_v1_block_fits_the_launch_budget(stage, dtype):
    result = ledger.measure(stage, batch=2, dtype=dtype, variant="v1", backend="triton",
                            device=DEVICE)
    ours, eager = result["ours"], result["eager"]
    names = [e["name"] for e in ours["entries"]]
    assert ours["launches"] <= BLOCK_LAUNCH_BUDGET, names
    # Only our kernels: no torch glue (casts, fills, sums, flips, copies) at all.
    assert all(e["source"] == "ours" for e in ours["entries"]), names
    assert "_finalize_kernel" in names and names.count("_finalize_kernel") == 1
    assert ours["host_syncs"] == 0
    assert eager["launches"] > ours["launches"]
    assert ours["flops"] > 0 and ours["bytes"] > 0


# GRN (V2) adds its statistics kernel between fc1 and fc2 (every pixel's sums are needed before
# fc2) and in the backward a GEMM of its sums and its backward kernel: 10 launches at C <= 192,
# 12 above, as triton/whole_block.py lists them.
@pytest.mark.parametrize("dtype", ["bf16", "autocast"])
@pytest.mark.parametrize("stage", sorted(ledger.STAGES))
def test_v2_block_is_one_op_with_its_launches_counted(stage, dtype):
    result = ledger.measure(stage, batch=2, dtype=dtype, variant="v2", backend="triton",
                            device=DEVICE)
    ours, eager = result["ours"], result["eager"]
    names = [e["name"] for e in ours["entries"]]
    assert ours["launches"] <= BLOCK_LAUNCH_BUDGET, names
    assert all(e["source"] == "ours" for e in ours["entries"]), names
    assert names.count("_finalize_kernel") == 1
    assert ours["host_syncs"] == 0
    assert eager["launches"] > ours["launches"]


def test_ledger_counts_a_host_sync():
    def reads_a_value():
        torch.ones(3).sum().item()
    with ledger.Ledger() as book:
        reads_a_value()
    syncs = [e["host_sync"] for e in book.entries]
    assert syncs[-1] and sum(syncs) == 1  # the fill and the sum launch; .item() waits


_HOST_READS = {"item", "cpu", "tolist", "numpy", "nonzero"}


def test_launchers_never_read_device_values_on_the_host():
    """CUDA-graph capture forbids synchronising and data-dependent shapes: no launcher or op
    module calls .item(), .cpu(), .tolist(), .numpy() or .nonzero()."""
    found = []
    for folder in ("convnext_kernels/triton", "convnext_kernels/ops"):
        for name in sorted(os.listdir(os.path.join(ROOT, folder))):
            if not name.endswith(".py"):
                continue
            path = os.path.join(ROOT, folder, name)
            with open(path) as f:
                tree = ast.parse(f.read())
            found += [f"{folder}/{name}:{node.lineno} .{node.func.attr}()"
                      for node in ast.walk(tree)
                      if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                      and node.func.attr in _HOST_READS]
    assert not found


def test_the_model_times_every_tensor_core_kernel_as_a_gemm():
    """ledger.GEMMS, the launches the model times at the tensor-core rate, are torch's matmuls
    and the Triton kernels in which the committed kernel report (sm_90) finds tensor-core
    instructions: a kernel left out would be modeled at the FMA rate, 12x slower."""
    with open(os.path.join(ROOT, "benchmarks", "results", "kernel_report.json")) as f:
        rows = json.load(f)["kernels"]
    tensor_core = {row["kernel"] for row in rows if row["source"] == "triton"
                   and row["tensor_core"]}
    assert tensor_core == ledger.GEMMS - {"mm", "addmm", "bmm"}
