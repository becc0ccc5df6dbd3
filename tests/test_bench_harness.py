"""The benchmark harness itself: floor arithmetic against hand counts, the results schema, the
tables and the plot files."""
import importlib.util
import json
import os
import re

import pytest
import torch

from benchmarks import __main__ as suite
from benchmarks import harness


def test_activation_pass_cost_by_hand():
    # ConvNeXt-T stage 1, batch 64, bf16, 7×7: 64*96*56*56 = 19,267,584 elements of 2 bytes.
    cost = harness.activation_pass_cost(64, 96, 56, 56, 49, 2)
    numel = 19_267_584
    assert cost["fwd"] == (2 * 2 * numel, 2 * 49 * numel)          # read x, write y
    assert cost["bwd"] == (3 * 2 * numel, 4 * 49 * numel)          # read g, x; write grad_x
    assert cost["fwd+bwd"] == (5 * 2 * numel, 6 * 49 * numel)
    assert harness.activation_pass_cost(1, 8, 2, 2, 0, 4)["fwd"] == (2 * 4 * 32, 0)


def test_floor_is_the_slower_of_memory_and_compute():
    assert harness.floor_ms(3e9, 0, 3e12, 1e12) == pytest.approx(1.0)      # 1 ms of traffic
    assert harness.floor_ms(1e3, 5e10, 3e12, 1e13) == pytest.approx(5.0)   # 5 ms of FMAs


def test_rotation_exceeds_twice_l2():
    sets = harness.rotation(1 << 20, torch.device("cpu"))
    assert sets * (1 << 20) > 2 * (32 << 20) or sets == 16


def test_mlp_and_block_costs_by_hand():
    from benchmarks.bench_block import block_cost
    from benchmarks.bench_mlp import mlp_cost
    # ConvNeXt-T stage 4 at batch 64: M = 64*7*7 = 3136 rows, C = 768, H = 3072, bf16.
    cost = mlp_cost(3136, 768, 3072, 2)
    gemm = 2 * 3136 * 768 * 3072  # one GEMM's FLOPs
    assert cost["fwd"] == (3 * 3136 * 768 * 2, 2 * gemm)       # x, residual in; out
    assert cost["bwd"] == (2 * 3136 * 768 * 2, 4 * gemm)       # grad in; grad_x out
    assert cost["fwd+bwd"] == (5 * 3136 * 768 * 2, 6 * gemm)
    block = block_cost(64, 768, 7, 2)
    assert block["fwd"] == (2 * 2 * 64 * 768 * 49, 2 * 49 * 64 * 768 * 49 + 2 * gemm)


COMMON = {"device", "label", "torch", "triton", "cuda", "op", "dtype", "shape", "memory_format",
          "provider", "pass", "median_ms", "p20_ms", "p80_ms", "calls", "peak_memory_MiB"}
REQUIRED = COMMON | {"bytes", "flops", "floor_ms", "pct_of_floor"}
REQUIRED_MODEL = COMMON | {"images_per_s", "speedup_vs_eager_channels_last"}


def test_suite_writes_schema_tables_and_plots(tmp_path):
    suite.main(["--tiny", "--no-compile", "--out", str(tmp_path)])
    (directory,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    ledger = (directory / "ledger.md").read_text()
    # The launch ledger runs with make bench: its row, within the block's 12-launch budget.
    (launches,) = re.findall(r"\| T stage 4 \| bf16 \| v1 \| (\d+) \|", ledger)
    assert 0 < int(launches) <= 12
    data = json.loads((directory / "results.json").read_text())
    floors = data["floors"]
    assert floors["copy_bandwidth_GBps"] > 0 and floors["fma_TFLOPs"] > 0
    assert floors["float32_matmul_TFLOPs"] > 0
    rows = data["rows"]
    assert {r["op"] for r in rows} == {"dwconv2d", "layer_norm_2d", "dwconv_layer_norm", "mlp",
                                       "block", "model"}
    for row in rows:
        assert row["p20_ms"] <= row["median_ms"] <= row["p80_ms"] and row["median_ms"] > 0
        if row["op"] == "model":
            assert REQUIRED_MODEL <= row.keys(), REQUIRED_MODEL - row.keys()
            assert row["images_per_s"] == pytest.approx(
                row["shape"][0] / (row["median_ms"] * 1e-3))
            continue
        assert REQUIRED <= row.keys(), REQUIRED - row.keys()
        assert 0 < row["pct_of_floor"]
        assert row["pct_of_floor"] == pytest.approx(100 * row["floor_ms"] / row["median_ms"])
        assert harness.speedup_over_eager(row) > 0
    assert all("saved_activation_MiB" in r for r in rows if r["op"] == "mlp")
    label = "GPU" if torch.cuda.is_available() else "CPU"
    assert all(r["label"] == label for r in rows)
    markdown = (directory / "results.md").read_text()
    assert f"({label})" in markdown
    if label == "CPU":  # CPU results name the CPU and the instruction set our kernels ran on
        from convnext_kernels import _C
        env = data["env"]
        assert env["cpu_model"] and env["cpu_isa"] == _C.cpu_isa()
        assert f"CPU: {env['cpu_model']}, cpp kernels on {env['cpu_isa']}." in markdown
    assert os.path.basename(directory).endswith(data["env"]["date"])
    plots = ("speedup.png", "floor.png", "model.png")
    if importlib.util.find_spec("matplotlib") is None:  # optional: the results come without
        assert not any((directory / plot).exists() for plot in plots)
        return
    assert "![speedup.png]" in markdown
    for plot in plots:
        with open(directory / plot, "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"


@pytest.mark.skipif(importlib.util.find_spec("timm") is None, reason="needs timm")
def test_cpu_profile_splits_each_providers_time(tmp_path):
    """profile_cpu_model: per provider, the GEMMs and the strided convs are parts of the total
    (eager's dwconvs not among the strided convs), and the bound is eager's total over them. What
    the split counts is asserted by op calls, not by times, which a loaded machine reorders."""
    from benchmarks import profile_cpu_model
    profile_cpu_model.main(["--batch", "1", "--calls", "1", "--out", str(tmp_path)])
    (json_path,) = tmp_path.glob("profile-cpu-*.json")
    rows = json.loads(json_path.read_text())["rows"]
    assert [r["provider"] for r in rows] == ["eager channels_last", "ours", "ours prepacked"]
    eager_total = rows[0]["total_ms"]
    for r in rows:
        assert 0 < r["gemm_ms"] and 0 < r["strided_conv_ms"]
        assert r["gemm_ms"] + r["strided_conv_ms"] + r["rest_ms"] == pytest.approx(r["total_ms"])
        assert r["rest_ms"] > 0
        assert r["bound_vs_eager"] == pytest.approx(
            eager_total / (r["gemm_ms"] + r["strided_conv_ms"]))
    # every provider's GEMMs are counted, MKL's or (prepacked) oneDNN's: 18 blocks' fc1 and fc2
    # and the head; eager's 18 dwconvs are rest, the strided convs the stem and 3 downsamplings
    for r in rows:
        assert (r["gemm_calls"], r["strided_conv_calls"]) == (2 * 18 + 1, 4), r["provider"]
    assert "| convnext_tiny | 1 | ours |" in (tmp_path / json_path.name.replace(
        ".json", ".md")).read_text()
