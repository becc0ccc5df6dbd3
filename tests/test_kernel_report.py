"""Every Triton kernel compiles for the H100 (sm_90) at the configs its launchers use, and the
compiled code keeps the properties a fast kernel needs: no spills, 16-byte global accesses on
aligned channel counts, at least two blocks per SM for these memory-bound kernels."""
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("kernel_report")
    env = {key: val for key, val in os.environ.items() if key != "TRITON_INTERPRET"}
    subprocess.run([sys.executable, "-m", "benchmarks.kernel_report", "--out", str(out)],
                   cwd=ROOT, env=env, check=True, capture_output=True)
    with open(out / "kernel_report.json") as f:
        data = json.load(f)
    assert (out / "kernel_report.md").exists()
    return data["kernels"]


def test_every_kernel_compiled(report):
    assert {row["kernel"] for row in report} >= {"_dwconv_forward_kernel",
                                                  "_dwconv_wgrad_partial_kernel"}
    assert all(row["registers"] > 0 for row in report)


def test_no_kernel_spills(report):
    spilling = [(r["kernel"], r["dtype"], r["shape"], r["k"], r["spill_stores"], r["local_bytes"])
                for r in report if r["spill_stores"] or r["local_bytes"]]
    assert not spilling


def test_aligned_channels_use_16_byte_accesses(report):
    narrow = [(r["kernel"], r["dtype"], r["shape"], r["widest_load_bytes"])
              for r in report if r["shape"][1] % 16 == 0
              and (r["widest_load_bytes"] < 16 or r["widest_store_bytes"] < 16)]
    assert not narrow


def test_memory_bound_kernels_fit_two_blocks_per_sm(report):
    crowded = [(r["kernel"], r["dtype"], r["shape"], r["k"], r["blocks_per_sm"])
               for r in report if r["blocks_per_sm"] < 2]
    assert not crowded
