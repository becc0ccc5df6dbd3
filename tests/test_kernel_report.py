"""Every kernel compiles for Hopper (sm_90: H100, H200): Triton kernels at the configs their
launchers use, CUDA kernels at every instantiation the glue launches. The compiled code keeps
the properties a fast kernel needs: no spills, 16-byte global accesses on aligned channel counts
(Triton) and in the vector instantiations (CUDA), at least two blocks per SM for the
memory-bound kernels, and Hopper tensor cores (wgmma) in every fp16/bf16 GEMM of the MLP."""
import importlib
import json
import os
import pkgutil
import subprocess
import sys

import pytest

from benchmarks.kernel_report import nvcc_path
from benchmarks.ledger import GEMMS

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


def _triton_kernels():
    """Every kernel the Triton package defines (module-level JIT functions named *_kernel)."""
    from triton.runtime.interpreter import InterpretedFunction
    from triton.runtime.jit import JITFunction

    import convnext_kernels.triton as package
    kinds = (JITFunction, InterpretedFunction)  # (jit's result under TRITON_INTERPRET=1)
    names = set()
    for info in pkgutil.iter_modules(package.__path__):
        module = importlib.import_module(f"{package.__name__}.{info.name}")
        names |= {name for name, value in vars(module).items()
                  if isinstance(value, kinds) and name.endswith("_kernel")}
    return names


def test_every_kernel_compiled(report):
    """The report runs the launchers (not a hand list), so every kernel the package defines
    must show up: one that does not is launched by none of the report's calls."""
    kernels = _triton_kernels()
    assert len(kernels) >= 9
    assert {row["kernel"] for row in report if row["source"] == "triton"} == kernels
    if nvcc_path() is not None:
        assert {row["kernel"] for row in report if row["source"] == "cuda"} >= {
            "ck::cuda::dwconv_forward_kernel", "ck::cuda::dwconv_wgrad_partial_kernel",
            "ck::cuda::sum_partials_kernel"}
    assert all(row["registers"] > 0 for row in report)




def _channels(row):
    return row["shape"][3] if row["op"] == "grn" else row["shape"][1]


def _vectorised(row):
    if row["kernel"] in GEMMS:  # operands stream through cp.async / TMA, not LDG
        return False
    if row["source"] == "triton":
        return _channels(row) % 16 == 0
    args = row["template_args"].split(", ")
    return len(args) > 1 and int(args[1]) > 1  # <T, VEC, ...>


def test_no_kernel_spills(report):
    spilling = [(r["kernel"], r["dtype"], r["shape"], r["k"], r["spill_stores"], r["local_bytes"])
                for r in report if r["spill_stores"] or r["local_bytes"]]
    assert not spilling


# Column reductions: they stream their inputs and write one [C] fp32 partial per program (the
# reduced vector lands spread over threads), so only their loads must be 16 bytes wide. The
# dwconv weight gradient writes its [k, C] partial per program transposed, in the weight's
# [C, k*k] order (k*k apart: 4-byte stores), against the rows × W × C it loads.
REDUCTIONS = ("_per_sample_column_sums_kernel", "_dwconv_wgrad_partial_kernel")


def test_aligned_channels_use_16_byte_accesses(report):
    narrow = [(r["kernel"], r["dtype"], r["shape"], r["template_args"], r["widest_load_bytes"])
              for r in report if _vectorised(r)
              and (r["widest_load_bytes"] < 16
                   or (r["widest_store_bytes"] < 16 and r["kernel"] not in REDUCTIONS))]
    assert not narrow


def test_memory_bound_kernels_fit_two_blocks_per_sm(report):
    crowded = [(r["kernel"], r["dtype"], r["shape"], r["k"], r["blocks_per_sm"])
               for r in report if r["blocks_per_sm"] < 2 and r["kernel"] not in GEMMS]
    assert not crowded


def test_half_precision_gemms_use_wgmma(report):
    gemms = [r for r in report if r["kernel"] in GEMMS and r["dtype"] != "float32"]
    assert {r["op"] for r in gemms} == {"mlp", "block", "block autocast"} and len(gemms) > 20
    assert all(r["blocks_per_sm"] >= 1 for r in gemms)
    assert not [(r["kernel"], r["dtype"], r["shape"]) for r in gemms if not r["ptx_wgmma"]]
