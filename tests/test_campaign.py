"""The GPU campaign's rehearsal on the CPU: every step runs (Triton interpreter, tiny shapes) and
leaves at most 8 flat files with the schema the campaign promises, with matplotlib, tqdm and
pytest-benchmark missing; a spent budget stops it cleanly."""
import json
import os
import subprocess
import sys

import pytest

from benchmarks.campaign import MAX_FILES, STEPS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BLOCKED = ("matplotlib", "tqdm", "pytest_benchmark")


def _campaign(tmp_path, *argv, blocked=()):
    """Runs the campaign in a fresh process where the `blocked` packages fail to import."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    if blocked:
        stubs = tmp_path / "missing_packages"
        for name in blocked:
            (stubs / name).mkdir(parents=True)
            (stubs / name / "__init__.py").write_text(
                f"raise ImportError('{name} is missing (the rehearsal hides it)')\n")
        env["PYTHONPATH"] = os.pathsep.join([str(stubs), ROOT])
        env["PYTEST_DISABLE_PLUGIN_AUTOLOAD"] = "1"
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "benchmarks.campaign", *argv, "--rehearse",
                           "--out", str(out)], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=1200)
    return proc, out


def _files(out):
    return [os.path.relpath(os.path.join(d, f), out) for d, _, fs in os.walk(out) for f in fs]


@pytest.fixture(scope="module")
def rehearsal(tmp_path_factory):
    proc, out = _campaign(tmp_path_factory.mktemp("rehearsal"), "all", "--budget", "1500",
                          blocked=BLOCKED)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    with open(out / "results.json") as f:
        return proc, out, json.load(f)


def test_every_step_ran_or_said_why_not(rehearsal):
    proc, _, data = rehearsal
    steps = data["steps"]
    assert list(steps) == list(STEPS)
    for name in ("env", "smoke", "tests", "ops", "block", "model", "compile"):
        assert steps[name]["status"] == "ok", (name, steps[name])
    assert steps["profile"]["status"] == "ok"
    for name in ("sanitize", "ncu"):
        assert steps[name]["status"] == "skipped" and "rehearsal" in steps[name]["reason"]
    assert "## ncu: skipped" in proc.stdout  # the summary tables come last


def test_files_are_few_and_flat(rehearsal):
    _, out, _ = rehearsal
    files = _files(out)
    assert 3 <= len(files) <= MAX_FILES, files
    assert all(os.sep not in f for f in files), files
    assert {"results.json", "summary.md", "campaign.log", "tests.log"} <= set(files)


def test_missing_packages_are_reported_not_fatal(rehearsal):
    _, _, data = rehearsal
    packages = data["steps"]["env"]["packages"]
    assert not any(packages[name] for name in BLOCKED)
    assert packages["numpy"]


def test_rows_have_the_benchmark_schema(rehearsal):
    _, _, data = rehearsal
    steps = data["steps"]
    keys = {"op", "case", "dtype", "provider", "pass", "median_ms", "p20_ms", "p80_ms",
            "device", "torch", "triton"}
    for name in ("ops", "block", "model", "compile"):
        rows = steps[name]["rows"]
        assert rows and all(keys <= set(row) for row in rows), name
        assert not steps[name]["errors"], steps[name]["errors"]
    assert {r["op"] for r in steps["ops"]["rows"]} == {"dwconv2d", "layer_norm_2d",
                                                      "dwconv_layer_norm", "mlp"}
    assert not any("compile" in r["provider"] for name in ("ops", "block", "model")
                   for r in steps[name]["rows"])
    compiled = [r for r in steps["compile"]["rows"] if "compile" in r["provider"]]
    assert compiled and all(r["compiled_graphs"] >= 0 for r in compiled)
    assert any(r["compiled_graphs"] >= 1 for r in compiled)  # the first call compiles
    assert all("speedup_vs_eager_channels_last" in r for r in steps["compile"]["rows"])
    assert all(r["images_per_s"] > 0 for r in steps["model"]["rows"])


def test_smoke_compares_every_op_on_both_backends(rehearsal):
    _, _, data = rehearsal
    rows = data["steps"]["smoke"]["rows"]
    assert {(r[0], r[1]) for r in rows} >= {(op, "triton") for op in (
        "dwconv2d", "layer_norm_2d", "dwconv_layer_norm", "mlp", "grn", "block")}
    assert all(r[-1] == "ok" for r in rows), rows


def test_tests_step_names_its_results(rehearsal):
    _, out, data = rehearsal
    assert data["steps"]["tests"]["failures"] == []
    assert "passed" in (out / "tests.log").read_text()


def test_spent_budget_stops_cleanly(tmp_path):
    proc, out = _campaign(tmp_path, "env", "smoke", "--budget", "0")
    assert proc.returncode == 0, proc.stderr[-2000:]
    steps = json.loads((out / "results.json").read_text())["steps"]
    assert steps["env"]["status"] == "skipped" and "budget" in steps["env"]["reason"]
    assert steps["smoke"]["status"] == "skipped"
