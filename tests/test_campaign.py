"""The GPU campaign's one-call plan, rehearsed on the CPU (`make rehearse`: Triton interpreter,
tiny shapes): every step runs and leaves at most 8 flat files with the schema the campaign
promises, with matplotlib, tqdm and pytest-benchmark missing; the prewarm step's compiles are
the ones the timed steps hit; the budget admits a unit only where its estimate fits, so a small
budget overruns by at most one unit; the auto table it writes drives `auto`."""
import json
import os
import subprocess
import sys
import warnings

import pytest
import torch

from benchmarks import campaign as campaign_module
from benchmarks.campaign import MAX_FILES, PLANS, STEP_FILES, Budget, prior_key

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BLOCKED = ("matplotlib", "tqdm", "pytest_benchmark")


def _campaign(tmp_path, *argv, blocked=()):
    """Runs the campaign in a fresh process where the `blocked` packages fail to import."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    # caches of its own, fresh: the prewarm step's compiles must be its own, not earlier runs'
    env["TORCHINDUCTOR_CACHE_DIR"] = str(tmp_path / "inductor-cache")
    env["TRITON_CACHE_DIR"] = str(tmp_path / "triton-cache")
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
    """`make rehearse`'s command, with a budget the whole plan fits in."""
    proc, out = _campaign(tmp_path_factory.mktemp("rehearsal"), "quick", "--budget", "1200",
                          blocked=BLOCKED)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    with open(out / "results.json") as f:
        return proc, out, json.load(f)


def test_every_step_of_the_plan_ran(rehearsal):
    proc, _, data = rehearsal
    steps = data["steps"]
    assert list(steps) == list(PLANS["quick"])
    for name in PLANS["quick"]:
        assert steps[name]["status"] == "ok", (name, steps[name])
    assert data["not_started"] == []
    assert "## profile: ok" in proc.stdout  # the summary tables come last


def test_files_are_few_and_flat(rehearsal):
    _, out, _ = rehearsal
    files = _files(out)
    assert 3 <= len(files) <= MAX_FILES, files
    assert all(os.sep not in f for f in files), files
    assert {"results.json", "summary.md", "campaign.log", "prewarm.log",
            "auto_table.json"} <= set(files)


@pytest.mark.parametrize("plan", sorted(PLANS))
def test_every_plan_writes_at_most_eight_files(plan):
    files = {"results.json", "summary.md", "campaign.log"}
    for step in PLANS[plan]:
        files |= set(STEP_FILES.get(step, ()))
    assert len(files) <= MAX_FILES, sorted(files)


def test_missing_packages_are_reported_not_fatal(rehearsal):
    _, _, data = rehearsal
    packages = data["steps"]["env"]["packages"]
    assert not any(packages[name] for name in BLOCKED)
    assert packages["numpy"]


def test_rows_have_the_benchmark_schema(rehearsal):
    _, _, data = rehearsal
    steps = data["steps"]
    keys = {"op", "case", "dtype", "provider", "pass", "median_ms", "p20_ms", "p80_ms",
            "device", "torch", "triton", "first_call_s", "tf32", "cudnn_benchmark"}
    for name in ("ops", "block", "model"):
        rows = steps[name]["rows"]
        assert rows and all(keys <= set(row) for row in rows), name
        assert not steps[name]["errors"], steps[name]["errors"]
        assert all(row["tf32"] is False and row["cudnn_benchmark"] is True for row in rows)
    assert {r["op"] for r in steps["ops"]["rows"]} == {"dwconv2d", "layer_norm_2d",
                                                      "dwconv_layer_norm", "mlp"}
    # the weight gradient of the dwconv on its own row, eager's beside ours
    weight = {r["provider"] for r in steps["ops"]["rows"] if r["pass"] == "bwd weight"}
    assert weight == {"eager channels_last", "ours cpp"}
    compiled = [r for name in ("block", "model") for r in steps[name]["rows"]
                if "compile" in r["provider"]]
    assert {r["provider"] for r in compiled} >= {"compile default", "ours + compile"}
    assert all(r["compiled_graphs"] >= 1 and r["first_call_s"] > 0 for r in compiled)
    # the block's compiled baseline is timed in the pass the plan compiles for (fwd+bwd) only
    assert {r["pass"] for r in steps["block"]["rows"]
            if r["provider"] == "compile default"} == {"fwd+bwd"}
    assert all("speedup_vs_compile_default" in r for r in steps["block"]["rows"]
               if r["pass"] == "fwd+bwd")
    assert all(r["images_per_s"] > 0 for r in steps["model"]["rows"])
    assert {(r["pass"], r["provider"]) for r in steps["model"]["rows"]} == {
        (mode, p) for mode in ("train", "inference")
        for p in ("eager channels_last", "compile default", "ours", "ours + compile")}


def test_prewarm_compiled_what_the_timed_steps_run(rehearsal):
    """Every non-eager unit of the timed steps was warmed, and every compiled provider there
    found its graphs in Inductor's cache (the prewarm step compiled them: no cache miss)."""
    _, _, data = rehearsal
    warmed = set(data["steps"]["prewarm"]["warmed_labels"])
    timed = [(kind, label) for kind, label, _ in data["units"]
             if kind not in ("prewarm", "profile")]
    assert timed
    assert all(label in warmed for kind, label in timed
               if kind == "smoke" or "| ours" in label or "compile" in kind), \
        [label for _, label in timed if label not in warmed]
    compiled = [r for step in ("block", "model") for r in data["steps"][step]["rows"]
                if "compile" in r["provider"]]
    assert compiled
    for row in compiled:
        assert row["inductor_cache_misses"] == 0, row
        assert row["inductor_cache_hits"] + row["aot_cache_hits"] >= 1, row


def test_smoke_compares_every_op_on_both_backends(rehearsal):
    _, _, data = rehearsal
    rows = data["steps"]["smoke"]["rows"]
    assert {(r[0], r[1]) for r in rows} >= {(op, "triton") for op in (
        "dwconv2d", "layer_norm_2d", "dwconv_layer_norm", "mlp", "grn", "block")}
    assert all(r[-1] == "ok" for r in rows), rows


def test_a_small_budget_overruns_by_at_most_one_unit(tmp_path):
    budget = 45
    proc, out = _campaign(tmp_path, "quick", "--budget", str(budget))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    data = json.loads((out / "results.json").read_text())
    assert data["not_started"], "the budget admitted everything: it proves nothing"
    longest = max([u[2] for u in data["units"]] + [data["steps"]["env"]["seconds"]])
    # 5 s: what runs outside units (a step's set-up, the summary)
    assert data["elapsed_s"] <= budget + longest + 5, (data["elapsed_s"], longest)
    for kind, label, estimate, left in data["not_started"]:
        assert estimate > left, (label, estimate, left)
    files = _files(out)
    assert len(files) <= MAX_FILES and all(os.sep not in f for f in files), files


def test_spent_budget_starts_nothing(tmp_path):
    proc, out = _campaign(tmp_path, "env", "smoke", "--budget", "0")
    assert proc.returncode == 0, proc.stderr[-2000:]
    data = json.loads((out / "results.json").read_text())
    assert data["steps"]["smoke"]["status"] == "partial"
    assert not data["steps"]["smoke"].get("rows")
    assert data["not_started"]


def test_budget_estimates_from_what_it_measured():
    budget = Budget(100, {("run", False): 7, ("compile", False): 50, ("compile", True): 9})
    assert budget.estimate("block run", "a") == 7
    assert budget.estimate("block compile", "a") == 50
    budget.warmed.add("b")
    assert budget.estimate("block compile", "b") == 9
    budget.spent("block compile", "c", 30.0)
    assert budget.estimate("block compile", "d") == 30.0  # measured replaces the prior
    assert budget.estimate("block compile", "b") == 9  # a warmed unit keeps its own
    budget.seconds = campaign_module.RESERVE_S + budget.elapsed() + 20
    assert budget.admit("block run", "e") and not budget.admit("block compile", "f")
    assert budget.not_started[-1][1] == "f"
    assert prior_key("model train compile") == "model compile"
    assert prior_key("dwconv2d run") == "run" and prior_key("smoke") == "smoke"


# ----------------------------------------------------------------------- auto from measurements

def _table(entries, device="cpu"):
    from convnext_kernels.measured import Table
    return Table({"device": device, "entries": entries})


def _entry(op, choice, channels, rows, dtype="float32", pass_name="fwd"):
    return {"op": op, "dtype": dtype, "pass": pass_name, "variant": "v1",
            "channels": channels, "rows": rows, "choice": choice, "medians_ms": {}}


@pytest.fixture
def cpu_table(monkeypatch):
    """Installs a table for the CPU (auto reads tables on CUDA only; the mechanism is the same)."""
    from convnext_kernels import measured

    def install(table):
        monkeypatch.setattr(measured, "DEVICE_TYPES", {"cuda", "cpu"})
        monkeypatch.setattr(measured, "_tables", {"cpu": table})
    return install


def test_the_rehearsal_table_drives_auto(rehearsal, cpu_table):
    from convnext_kernels import measured
    from convnext_kernels.ops.dwconv import DWCONV
    _, out, data = rehearsal
    table = measured.Table.load(out / "auto_table.json")
    assert table.entries and {e["choice"] for e in table.entries} <= {"torch", "cpp"}
    assert {e["op"] for e in table.entries} == {"block", "dwconv2d", "layer_norm_2d",
                                                "dwconv_layer_norm", "mlp"}
    for entry in table.entries:
        assert entry["choice"] == min(entry["medians_ms"], key=entry["medians_ms"].get)
    cpu_table(table)
    (entry,) = [e for e in table.entries if e["op"] == "dwconv2d" and e["pass"] == "fwd"]
    C, rows = entry["channels"], entry["rows"]
    x = torch.randn(2, C, 8, rows // 16, dtype=torch.float32)
    assert DWCONV.resolve("auto", x, C) == entry["choice"]


def test_auto_takes_the_measured_choice_eager_included(cpu_table):
    import convnext_kernels as ck
    from convnext_kernels.ops.dwconv import DWCONV
    from convnext_kernels.ops.mlp import MLP
    cpu_table(_table([_entry("dwconv2d", "torch", 16, 128),
                      _entry("dwconv2d", "cpp", 16, 128, pass_name="fwd+bwd"),
                      _entry("mlp", "triton", 16, 128)]))
    x = torch.randn(2, 16, 8, 8)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # eager measured fastest: no fallback warning
        assert DWCONV.resolve("auto", x, 16) == "torch"
    assert DWCONV.resolve("auto", x.requires_grad_(), 16) == "cpp"  # training: fwd+bwd
    far = torch.randn(2, 128, 8, 8)  # 8x the channels: nothing measured near it
    assert DWCONV.resolve("auto", far, 128) == DWCONV.order("cpu")[0]
    rows = torch.randn(128, 16)
    # triton was measured fastest but cannot serve here without the interpreter: the order
    # serves, by rule
    expected = "triton" if "triton" in ck.available_backends() else "cpp"
    assert MLP.resolve("auto", rows, 16) == expected
    w = torch.randn(16, 1, 7, 7)
    y = ck.dwconv2d(x.detach(), w)
    torch.testing.assert_close(y, torch.nn.functional.conv2d(x.detach(), w, padding=3,
                                                            groups=16))


def test_measured_choice_is_constant_under_compile(cpu_table):
    import convnext_kernels as ck
    cpu_table(_table([_entry("dwconv2d", "torch", 16, 128)]))
    x, w = torch.randn(2, 16, 8, 8), torch.randn(16, 1, 7, 7)
    compiled = torch.compile(lambda a, b: ck.dwconv2d(a, b), fullgraph=True, dynamic=False)
    torch.testing.assert_close(compiled(x, w), torch.nn.functional.conv2d(x, w, padding=3,
                                                                          groups=16))


def test_no_table_keeps_the_order_and_says_so():
    from convnext_kernels import measured
    assert measured.table_for(torch.device("cpu")) is None
    assert "order" in measured.source(torch.device("cpu"))


def test_the_carried_extension_replaces_the_loaded_one_without_rewriting_it(tmp_path):
    """The env step installs the carried _C by rename: a process that has the in-tree _C mapped
    (the test suite running the rehearsal) keeps reading the file it loaded."""
    import mmap

    from benchmarks.campaign_steps import _install
    loaded, carried = tmp_path / "_C.so", tmp_path / "carried.so"
    loaded.write_bytes(b"old" * 4096)
    carried.write_bytes(b"new" * 5000)
    with open(loaded, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
        _install(carried, loaded)
        assert mapped[:3] == b"old" and len(mapped) == 3 * 4096
    assert loaded.read_bytes() == carried.read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["_C.so", "carried.so"]
