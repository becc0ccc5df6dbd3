"""The op benchmark cases (dwconv, LayerNorm, MLP) through pytest-benchmark: fwd+bwd of every
provider at the quick plan's ConvNeXt-T shapes, the device synchronised inside each timed call.

    pytest benchmarks/ --benchmark-only --benchmark-json=out.json
"""
import argparse
from types import SimpleNamespace

import pytest
import torch

from benchmarks import bench_dwconv, bench_layernorm, bench_mlp, harness

SUITES = (bench_dwconv, bench_layernorm, bench_mlp)
ARGS = argparse.Namespace(autotune=False)
_gpu = torch.cuda.is_available()
PLAN = SimpleNamespace(device=torch.device("cuda" if _gpu else "cpu"), gpu=_gpu, compile=True,
                       dtypes=[torch.bfloat16 if _gpu else torch.float32],
                       stages=harness.STAGES[:4], batch=64 if _gpu else 2)


def _params():
    for suite in SUITES:
        tables = suite.providers(PLAN, ARGS)
        for case in suite.cases(PLAN):
            for provider, entry in suite.table_for(tables, case).items():
                yield pytest.param(suite, case, entry,
                                   id=f"{suite.describe(PLAN, case)} | {provider}")


@pytest.mark.parametrize("suite,case,entry", list(_params()))
def test_fwd_bwd(benchmark, suite, case, entry):
    fmt, fn = entry
    *inputs, grad = suite.make_inputs(PLAN, case)
    inputs = [t.contiguous(memory_format=fmt) if t.dim() == 4 else t for t in inputs]
    inputs = [t.requires_grad_() for t in inputs]

    def step():
        torch.autograd.grad(fn(*inputs), inputs, grad)
        harness.sync(PLAN.device)

    step()  # warm-up (and compilation for the torch.compile providers)
    benchmark(step)
