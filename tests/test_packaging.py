"""The package as users install it: a wheel built with `python -m build --wheel --no-isolation`
(torch from the environment; CPU kernels only and unoptimised, CK_DEBUG=1, to keep the test short:
74 s against ~4 minutes with -O3 on 2 cores), installed with pip
into a folder of its own, imports and runs from another directory; its metadata says what it
needs."""
import importlib.util
import os
import shutil
import subprocess
import sys
import zipfile

import pytest


def _pypa_build_installed():
    # Not importorskip("build"): a setup.py `build/` folder in the working directory imports as
    # a namespace package (no origin) where the build tool is not installed (make compat's tree).
    spec = importlib.util.find_spec("build")
    return spec is not None and spec.origin is not None


pytestmark = pytest.mark.skipif(not _pypa_build_installed(),
                                reason="python -m build is not installed here (requirements-dev "
                                       "pins it; requirements-compat and the GPU machine do not)")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SKIP = shutil.ignore_patterns(".git", ".venv*", "build", ".cache", "*.so", "*.egg-info",
                              "results", "__pycache__", ".pytest_cache")

SMOKE = """
import torch, convnext_kernels as ck
assert ck.__file__.startswith({target!r}), ck.__file__
assert "cpp" in ck.available_backends()
x = torch.randn(2, 8, 9, 9, requires_grad=True)
block = ck.FusedConvNeXtBlock(8, backend="cpp")
block(x).sum().backward()
assert x.grad is not None and torch.isfinite(x.grad).all()
print("installed package OK")
"""


def test_wheel_builds_installs_and_runs_elsewhere(tmp_path):
    source = tmp_path / "source"
    shutil.copytree(ROOT, source, ignore=SKIP)
    env = dict(os.environ, CK_NO_CUDA="1", CK_DEBUG="1", MAX_JOBS=str(os.cpu_count() or 2))
    subprocess.run([sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir",
                    str(tmp_path / "dist")], cwd=source, env=env, check=True,
                   capture_output=True)
    (wheel,) = (tmp_path / "dist").glob("convnext_kernels-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        (meta,) = [n for n in names if n.endswith(".dist-info/METADATA")]
        metadata = archive.read(meta).decode()
    assert any(n.startswith("convnext_kernels/_C") and n.endswith(".so") for n in names)
    assert "convnext_kernels/reference.py" in names
    assert not any(n.startswith(("tests/", "benchmarks/")) for n in names)
    for line in ("Requires-Python: >=3.10", "Requires-Dist: torch<2.15,>=2.11",
                 "Classifier: Environment :: GPU :: NVIDIA CUDA",
                 "License-Expression: BSD-3-Clause", "License-File: LICENSE"):
        assert line in metadata, line
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names), names
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index",
                    "--target", str(target), str(wheel)], check=True, capture_output=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    run = subprocess.run([sys.executable, "-c", SMOKE.format(target=str(target))],
                         cwd=elsewhere, env=dict(os.environ, PYTHONPATH=str(target)),
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "installed package OK" in run.stdout
