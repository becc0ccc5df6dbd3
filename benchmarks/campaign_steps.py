"""The steps of the GPU campaign (benchmarks/campaign.py) that run in its process, and what each
benchmark step times in each plan (bench_config, which the prewarm step reads too); prewarm is
in campaign_prewarm.py, smoke in campaign_smoke.py, sanitize and ncu in campaign_tools.py. Each
step takes the Campaign, writes what it measures through campaign.record as it goes, and returns
(status, reason, summary)."""
import datetime
import glob
import importlib
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time

from benchmarks import provenance

ROOT = provenance.ROOT
OPTIONAL = ("matplotlib", "tqdm", "pytest", "pytest_benchmark", "timm", "torchvision", "numpy")


def find_tool(name):
    """A CUDA tool on PATH or in the toolkit, or None."""
    return shutil.which(name) or next(
        (p for p in (f"/usr/local/cuda/bin/{name}",) if os.path.exists(p)), None)


def gpu_or_rehearsal(campaign):
    import torch
    if not campaign.rehearse and not torch.cuda.is_available():
        raise RuntimeError("no CUDA device: run a GPU step on the GPU machine, or --rehearse")
    return torch.device("cpu" if campaign.rehearse else "cuda")


def _imports(name):
    """Whether `name` imports here (a missing optional package is reported, never fatal)."""
    try:
        importlib.import_module(name)
    except ImportError:
        return False
    return True


# ---------------------------------------------------------------------------------------- env

# Run in a fresh process by env: the carried _C imports, has CUDA kernels where a GPU is here,
# and one op of it agrees with the float64 reference (the CUDA dwconv on a GPU, else cpp).
EXTENSION_CHECK = """
import torch, torch.nn.functional as F
import convnext_kernels as ck
from convnext_kernels import _ext
from convnext_kernels.testing import rel_error, tolerance
assert _ext.LOADED, _ext.LOAD_ERROR
gpu = torch.cuda.is_available()
assert _ext.BUILT_WITH_CUDA or not gpu, "built without CUDA kernels"
device, backend = ("cuda", "cuda") if gpu else ("cpu", "cpp")
g = torch.Generator().manual_seed(0)
x = torch.randn(2, 40, 13, 17, generator=g, dtype=torch.float64)
w = torch.randn(40, 1, 7, 7, generator=g, dtype=torch.float64) / 7
ref = F.conv2d(x, w, padding=3, groups=40)
got = ck.dwconv2d(x.to(device, torch.bfloat16), w.to(device, torch.bfloat16), backend=backend)
eager = F.conv2d(x.to(device, torch.bfloat16), w.to(device, torch.bfloat16), padding=3, groups=40)
error, limit = rel_error(got, ref), tolerance(torch.bfloat16, rel_error(eager, ref))
assert error <= limit, f"{backend} dwconv2d error {error:.3g} > {limit:.3g}"
print(f"_C ok: {backend} dwconv2d bf16 error {error:.3g} (limit {limit:.3g})")
"""


def _check_extension():
    """(ok, message) of EXTENSION_CHECK in a fresh process (a broken _C cannot take the
    campaign's process down with it)."""
    proc = subprocess.run([sys.executable, "-c", EXTENSION_CHECK], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    text = (proc.stdout + proc.stderr).strip().splitlines()
    return proc.returncode == 0, (text[-1] if text else f"exit {proc.returncode}")


def _carried_extension():
    """(path of the carried _C to use, None) or (None, why not)."""
    import sysconfig

    import torch
    record = provenance.read_build_record()
    if record is None:
        return None, "no build/gpu/build.json: run `make gpu-prep` and carry build/gpu"
    suffix = sysconfig.get_config_var("EXT_SUFFIX")
    path = os.path.join(ROOT, provenance.GPU_BUILD, "_C" + suffix)
    if not os.path.exists(path):
        return None, f"build/gpu has {record['extension']}, this python needs _C{suffix}"
    if record["torch"] != torch.__version__:
        return None, f"built against torch {record['torch']}, here {torch.__version__}"
    sources = provenance.fingerprint(provenance.EXTENSION_SOURCES)
    if record["extension_sources"] != sources:
        return None, "csrc/ or setup.py changed since `make gpu-prep` built it"
    return path, None


def _install(source, target):
    """Copies `source` to `target` by renaming a full copy over it: a process that has the old
    `target` loaded keeps its inode (copying in place rewrites the pages such a process has
    mapped, and it crashes on its next page fault there)."""
    staged = f"{target}.{os.getpid()}.tmp"
    shutil.copy2(source, staged)
    os.replace(staged, target)


def _build_in_place(campaign):
    env_vars = dict(os.environ, MAX_JOBS=str(os.cpu_count()))
    if os.path.exists("/usr/local/cuda/bin/nvcc"):
        env_vars.setdefault("CUDA_HOME", "/usr/local/cuda")
    start = time.monotonic()
    with open(campaign.path("build.log"), "w") as log:
        build = subprocess.run([sys.executable, "setup.py", "build_ext", "--inplace"], cwd=ROOT,
                               env=env_vars, stdout=log, stderr=subprocess.STDOUT,
                               timeout=max(10, campaign.budget.left()))
    return build.returncode == 0, time.monotonic() - start


def env(campaign):
    import torch
    info = {"python": platform.python_version(), "torch": torch.__version__,
            "cuda": torch.version.cuda, "commit": provenance.describe(),
            "code": provenance.fingerprint(provenance.CODE), "cores": os.cpu_count(),
            "date": datetime.date.today().isoformat()}
    for name in ("triton", "torchvision", "timm", "numpy"):
        try:
            info[name] = __import__(name).__version__
        except ImportError:
            info[name] = "missing"
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info.update(gpu=props.name, sm_count=props.multi_processor_count,
                    capability=f"{props.major}.{props.minor}",
                    l2_MiB=props.L2_cache_size / 2**20,
                    memory_GiB=round(props.total_memory / 2**30))
    packages = {name: _imports(name) for name in OPTIONAL}
    tools = {name: find_tool(name) for name in ("nvcc", "ncu", "compute-sanitizer")}
    campaign.record("env", info=info, packages=packages, tools=tools)
    summary = [[k, v] for k, v in info.items()] + \
        [[f"package {k}", "present" if v else "MISSING"] for k, v in packages.items()] + \
        [[f"tool {k}", v or "MISSING"] for k, v in tools.items()]
    carried, why_not = _carried_extension()
    if carried is not None:
        _install(carried, os.path.join(ROOT, "convnext_kernels", os.path.basename(carried)))
        ok, message = _check_extension()
        reason = f"carried _C ({message})" if ok else f"carried _C failed its check ({message})"
        why_not = None if ok else message
    if why_not is not None and campaign.rehearse:  # `make build` built _C before a rehearsal
        reason = f"in-tree _C (not carried: {why_not}; a rehearsal does not build)"
    elif why_not is not None:
        ok, seconds = _build_in_place(campaign)
        if not ok:
            return "failed", f"build failed (build.log); not carried: {why_not}", summary
        reason = f"built in place in {seconds:.0f} s: not carried: {why_not}"
    import convnext_kernels as ck
    from convnext_kernels import measured
    backends = ck.available_backends()
    auto = measured.source(torch.device("cuda" if torch.cuda.is_available() else "cpu"))
    campaign.record("env", backends=backends, extension=reason, auto=auto)
    summary += [["backends", " ".join(backends)], ["_C", reason], ["auto", auto]]
    if not campaign.rehearse and "cuda" not in backends:
        return "failed", "_C has no CUDA kernels", summary
    return "ok", reason, summary


# -------------------------------------------------------------------------------------- tests

# The test files a GPU adds to (CUDA parametrizations), most valuable first; each runs in its own
# process with its own timeout and log. Left out: what needs no GPU and runs in CI (the kernel
# report, the wheel build, the CPU rehearsal of this campaign, CUDA thread emulation, the import
# graph, the CPU memory pool).
GPU_TEST_FILES = ("test_block.py", "test_mlp.py", "test_layer_norm.py", "test_dwconv.py",
                  "test_grn.py", "test_models.py", "test_training_engines.py", "test_ledger.py",
                  "test_triton_registration.py", "test_grad_workspace.py", "test_ecosystem.py",
                  "test_build.py")
TEST_TIMEOUT_S = 300


def tests(campaign):
    """The GPU test files, `workers` at a time, each admitted by the budget and killed at its
    timeout; failures by name (-rfE). TF32 is off in the tests (tests/conftest.py). A rehearsal
    runs two small files on the CPU."""
    if campaign.rehearse:
        shards = [["tests/test_build.py"], ["tests/test_bench_harness.py", "-k", "floor"]]
        workers = 2
    else:
        shards = [[f"tests/{f}"] for f in GPU_TEST_FILES]
        workers = max(2, min(8, (os.cpu_count() or 2) // 2))
    env_vars = dict(os.environ)
    if not campaign.rehearse:
        env_vars.pop("TRITON_INTERPRET", None)
    logs = tempfile.mkdtemp(prefix="ck-tests-")
    pending, running, done, not_started = list(enumerate(shards)), {}, {}, []
    while pending or running:
        while pending and len(running) < workers:
            i, shard = pending.pop(0)
            name = " ".join(shard)
            if not campaign.budget.admit("tests", name):
                not_started.append(i)
                continue
            log = open(os.path.join(logs, f"{i}.log"), "w")
            cmd = [sys.executable, "-m", "pytest", "-q", "-rfE", "-p", "no:cacheprovider", *shard]
            running[i] = (subprocess.Popen(cmd, cwd=ROOT, env=env_vars, stdout=log,
                                           stderr=subprocess.STDOUT), log, time.monotonic())
        time.sleep(0.5)
        for i, (proc, log, t0) in list(running.items()):
            timed_out = time.monotonic() - t0 > TEST_TIMEOUT_S or campaign.budget.left() < 0
            if proc.poll() is None and not timed_out:
                continue
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            log.close()
            done[i] = (proc.returncode, time.monotonic() - t0, timed_out and proc.returncode)
            campaign.budget.spent("tests", " ".join(shards[i]), done[i][1])
            del running[i]
            campaign.record("tests", shards={" ".join(shards[j]): done[j][0] for j in done})
    summary, failures = [], []
    with open(campaign.path("tests.log"), "w") as out:
        for i, shard in enumerate(shards):
            name = " ".join(shard)
            if i not in done:
                summary.append([name, "not started (budget)"])
                continue
            with open(os.path.join(logs, f"{i}.log")) as f:
                text = f.read()
            out.write(f"===== {name} (exit {done[i][0]}, {done[i][1]:.0f} s)\n{text}\n")
            last = [ln for ln in text.splitlines() if re.search(r"\d+ (passed|failed)", ln)]
            result = last[-1].strip("= ") if last else "no result line"
            if done[i][2]:
                result = f"KILLED at its timeout after {done[i][1]:.0f} s"
            summary.append([name, result, f"{done[i][1]:.0f} s"])
            failures += [ln for ln in text.splitlines() if ln.startswith(("FAILED", "ERROR"))]
            if done[i][0] not in (0,) and not any(name in f for f in failures):
                failures.append(f"{name}: exit {done[i][0]}")
    shutil.rmtree(logs, ignore_errors=True)
    campaign.record("tests", failures=failures)
    summary += [["FAILED", f[:160]] for f in failures[:40]]
    if failures:
        return "failed", f"{len(failures)} failures (tests.log)", summary
    return ("partial", f"{len(not_started)} files not started", summary) if not_started \
        else ("ok", "", summary)


# ---------------------------------------------------------------------------------- benchmarks

def bench_config(step, plan, rehearse):
    """[(suite module name, options)] that benchmark step `step` times in `plan`. Options: dtypes,
    passes (compiled_passes: of the torch.compile providers), providers (None: all), and the
    suite's own: variants (block), models (model), block_backends, autotune, stages (a slice of
    harness.STAGES). The prewarm step warms exactly these."""
    if rehearse:  # the same structure on the CPU: cpp where the GPU has cuda and triton
        ours = ("ours cpp",)
        block = dict(dtypes=["fp32"], passes=("fwd", "fwd+bwd"), compiled_passes=("fwd+bwd",),
                     providers=("eager channels_last", "ours", "ours cpp", "compile default"),
                     block_backends=("cpp",))
    else:
        ours = ("ours cuda", "ours triton")
        block = dict(dtypes=["bf16"], passes=("fwd", "fwd+bwd"), compiled_passes=("fwd+bwd",),
                     providers=("eager channels_last", "ours", "ours triton", "ours cuda",
                                "compile default"))
    model = dict(dtypes=["fp32" if rehearse else "bf16"], models=["convnext_tiny"],
                 providers=("eager channels_last", "compile default", "ours", "ours + compile"))
    dtype = ["fp32" if rehearse else "bf16"]
    ops = [("bench_dwconv", dict(dtypes=dtype, passes=("fwd", "fwd+bwd", "bwd weight"),
                                 providers=("eager channels_last",) + ours)),
           ("bench_layernorm", dict(dtypes=dtype, passes=("fwd", "fwd+bwd"),
                                    providers=("eager channels_last",) + ours)),
           ("bench_mlp", dict(dtypes=dtype, passes=("fwd", "fwd+bwd"),
                              providers=("eager",) + ours[-1:]))]
    if plan == "quick":
        return {"block": [("bench_block", block)], "model": [("bench_model", model)],
                "ops": ops}[step]
    # next: what quick leaves out
    every = dict(passes=("fwd", "bwd", "fwd+bwd"), providers=None, autotune=True)
    if step == "block":
        return [("bench_block", dict(every, dtypes=["fp32"], variants=("v1",))),
                ("bench_block", dict(every, dtypes=["bf16"], variants=("v2",))),
                ("bench_block", dict(every, dtypes=["bf16"], stages=(4, 8)))]
    if step == "model":
        return [("bench_model", dict(dtypes=["fp32"], models=["convnext_tiny"], autotune=True)),
                ("bench_model", dict(dtypes=["bf16"], autotune=True,
                                     models=["convnextv2_tiny", "convnext_small",
                                             "convnext_base"]))]
    return [(suite, dict(options, dtypes=["fp32"])) for suite, options in ops]


def make_plan(campaign, suite, options, **overrides):
    """The harness Plan of one bench_config entry (the prewarm step's workers build the same)."""
    from benchmarks import harness
    parser = harness.parser(suite.NAME)
    harness.add_autotune_option(parser)
    argv = ["--quick", "--out", campaign.out, "--dtype", *options["dtypes"]]
    argv += ["--tiny"] if campaign.rehearse else []
    argv += ["--autotune"] if options.get("autotune") else []
    args = parser.parse_args(argv)
    plan = harness.Plan(suite.NAME, args, passes=options.get("passes", harness.PASSES),
                        providers=options.get("providers"), floors=campaign.floors,
                        compiled_passes=options.get("compiled_passes"), **overrides)
    for key in ("variants", "models", "block_backends"):
        if key in options:
            setattr(plan, key, options[key])
    if "stages" in options and not campaign.rehearse:
        plan.stages = harness.STAGES[slice(*options["stages"])]
    return plan, args


def held_cases(campaign, step):
    """describe() of the cases that committed campaign results of this code on this device hold
    for `step` (the next plan skips them): {label: results path}."""
    if campaign.plan != "next" or campaign.rehearse:
        return {}
    info = campaign.data["steps"].get("env", {}).get("info", {})
    held = {}
    for path in glob.glob(os.path.join(ROOT, "benchmarks", "results", "*", "results.json")):
        try:
            with open(path) as f:
                data = json.load(f)
            env_info = data["steps"]["env"]["info"]
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if (env_info.get("gpu"), env_info.get("code")) != (info.get("gpu"), info.get("code")):
            continue
        for label in data["steps"].get(step, {}).get("cases_done", []):
            held[label] = os.path.relpath(path, ROOT)
    return held


def _bench(campaign, step):
    """Runs the step's suites into results.json as rows are measured, every provider of every
    case admitted by the budget; writes the auto table after."""
    from benchmarks import harness
    gpu_or_rehearsal(campaign)
    held = held_cases(campaign, step)
    rows, errors, not_started, done, skipped = [], [], [], [], []
    for suite_name, options in bench_config(step, campaign.plan, campaign.rehearse):
        suite = importlib.import_module(f"benchmarks.{suite_name}")
        plan, args = make_plan(campaign, suite, options, budget=campaign.budget)
        campaign.floors = campaign.floors or plan.results.floors
        plan.skip_cases = set(held)
        skipped += [label for label in held if label in map(
            lambda c: suite.describe(plan, c), suite.cases(plan))]

        def changed(results):
            campaign.record(step, rows=rows + results.rows, errors=errors + results.errors,
                            not_started=not_started + results.not_started,
                            cases_done=done + results.cases_done, floors=results.floors,
                            env=results.env, held={k: held[k] for k in skipped})
        plan.results.on_change = changed
        harness.run_suite(suite, plan, args)
        rows += plan.results.rows
        errors += plan.results.errors
        not_started += plan.results.not_started
        done += plan.results.cases_done
    if step in STEP_TABLE_OPS:
        write_auto_table(campaign)
    summary = [[r["case"], r["dtype"], r["pass"], r["provider"], f"{r['median_ms']:.3f} ms",
                f"{harness.speedup_over_eager(r):.2f}x eager"]
               + ([f"{r['speedup_vs_compile_default']:.2f}x compile"]
                  if "speedup_vs_compile_default" in r else [])
               + ([f"{r['images_per_s']:.0f} img/s"] if "images_per_s" in r else [])
               + ([f"{r['kernels']} kernels, busy {r['busy_ms']:.3f} ms"]
                  if "kernels" in r else [])
               + ([f"model {r['modeled_fwd_bwd_ms']:.3f} ms"]
                  if "modeled_fwd_bwd_ms" in r and r["pass"] == "fwd+bwd" else [])
               + ([f"compiled {r['first_call_s']:.0f} s, {r['compiled_graphs']} graphs"]
                  if "compiled_graphs" in r else [])
               for r in rows
               if r["pass"] in ("fwd+bwd", "train", "inference", "bwd weight")
               and not r["provider"].startswith("eager")]
    summary += [["NOT MEASURED", e["case"], e["provider"], e["pass"], e["error"][:120]]
                for e in errors]
    summary += [["HELD", label, path] for label, path in held.items() if label in skipped]
    if errors:
        return "failed", f"{len(errors)} rows not measured", summary
    if not_started:
        return "partial", f"{len(not_started)} units not started (budget)", summary
    return "ok", "", summary


def block(campaign):
    return _bench(campaign, "block")


def model(campaign):
    return _bench(campaign, "model")


def ops(campaign):
    return _bench(campaign, "ops")


# ------------------------------------------------------------------------------ the auto table

# The steps whose rows decide auto (the model's do not: its choices are the ops').
STEP_TABLE_OPS = ("block", "ops")
EAGER = "torch"


def table_backend(provider):
    """The backend a provider's row times for the auto table: eager -> "torch", "ours <backend>"
    -> backend; None for the rest (auto itself, compiled baselines)."""
    if provider.startswith("eager"):
        return EAGER
    words = provider.split()
    return words[1] if len(words) == 2 and words[0] == "ours" else None


def auto_entries(rows):
    """auto's choices from benchmark rows: per op, dtype, pass (fwd, fwd+bwd), variant and shape,
    the backend with the lowest median among eager and ours per backend."""
    groups = {}
    for r in rows:
        backend = table_backend(r["provider"])
        if backend is None or r["pass"] not in ("fwd", "fwd+bwd"):
            continue
        shape = r["shape"]
        channels, rows_ = (shape[1], shape[0] * shape[2] * shape[3]) if len(shape) == 4 \
            else (shape[1], shape[0])
        key = (r["op"], r["dtype"], r["pass"], r.get("variant", "v1"), channels, rows_)
        medians = groups.setdefault(key, {"case": r["case"], "medians_ms": {}})["medians_ms"]
        medians[backend] = min(medians.get(backend, float("inf")), r["median_ms"])
    entries = []
    for (op, dtype, pass_name, variant, channels, rows_), group in groups.items():
        medians = group["medians_ms"]
        if EAGER not in medians or len(medians) < 2:
            continue  # a choice needs eager and a kernel backend beside it
        entries.append({"op": op, "dtype": dtype, "pass": pass_name, "variant": variant,
                        "channels": channels, "rows": rows_,
                        "choice": min(medians, key=medians.get), "medians_ms": medians,
                        "case": group["case"]})
    return entries


def write_auto_table(campaign):
    rows = [r for step in STEP_TABLE_OPS
            for r in campaign.data["steps"].get(step, {}).get("rows", [])]
    info = campaign.data["steps"].get("env", {}).get("info", {})
    device = rows[0]["device"] if rows else None
    if device is None:
        return
    table = {"device": info.get("gpu", device), "commit": info.get("commit"),
             "code": info.get("code"), "date": info.get("date"),
             "measured_by": "python -m benchmarks.campaign " + campaign.plan,
             "entries": auto_entries(rows)}
    with open(campaign.path("auto_table.json"), "w") as f:
        json.dump(table, f, indent=1)


# ------------------------------------------------------------------------------------ profile

def profile(campaign):
    """One block fwd+bwd at stages 1 and 4 under torch.profiler, ours and eager: device kernels
    launched, GPU busy time against wall time (launch-bound when the GPU idles), top kernels;
    ours replayed from a CUDA graph where it can be captured. Each stage is a unit."""
    import torch

    import convnext_kernels as ck
    from benchmarks import harness
    from benchmarks.bench_block import as_function
    from convnext_kernels.models import ConvNeXtBlock
    device = gpu_or_rehearsal(campaign)
    gpu = device.type == "cuda"
    dtype = torch.bfloat16 if gpu else torch.float32
    N, stages = (64, [harness.STAGES[0], harness.STAGES[3]]) if gpu else (2, [("tiny", 16, 8)])
    activities = [torch.profiler.ProfilerActivity.CPU] + (
        [torch.profiler.ProfilerActivity.CUDA] if gpu else [])
    summary, found, hot = [], {}, {}
    for name, C, HW in stages:
        label = f"profile {name} {N}x{C}x{HW}x{HW}"
        if not campaign.budget.admit("profile", label):
            summary.append([name, "not started (budget)"])
            continue
        start = time.monotonic()
        x = torch.randn(N, C, HW, HW, device=device, dtype=dtype).contiguous(
            memory_format=torch.channels_last)
        grad = torch.randn_like(x)
        plain = ConvNeXtBlock(C).to(device, dtype)
        fused = ck.FusedConvNeXtBlock(C).to(device, dtype)
        for provider, module in (("ours", fused), ("eager", plain)):
            params = [p.detach().requires_grad_() for p in module.parameters()]
            fn = as_function(module)
            xs = x.detach().requires_grad_()

            def step():
                torch.autograd.grad(fn(xs, *params), [xs] + params, grad)
            wall = harness.summarize(harness.time_calls(step, [()], device, warmup=3,
                                                        reps=20))["median_ms"]
            with torch.profiler.profile(activities=activities) as prof:
                step()
                harness.sync(device)
            kernels = [e for e in prof.events()
                       if gpu and e.device_type == torch.autograd.DeviceType.CUDA]
            busy = sum(e.device_time for e in kernels) / 1e3
            by_name = {}
            for e in kernels:
                by_name[e.name] = by_name.get(e.name, 0.0) + e.device_time / 1e3
            top = sorted(by_name.items(), key=lambda kv: -kv[1])[:6]
            if provider == "ours":
                for kname, ms in top:
                    hot[kname] = hot.get(kname, 0.0) + ms
            entry = {"kernels": len(kernels) if gpu else None, "busy_ms": busy, "wall_ms": wall,
                     "top": top, "cpu_ops": sum(1 for e in prof.events()
                                                if e.name.startswith("aten::"))}
            found[f"{name} {provider}"] = entry
            summary.append([name, provider, f"{entry['kernels']} kernels", f"wall {wall:.3f} ms",
                            f"busy {busy:.3f} ms" + (" LAUNCH-BOUND" if gpu and busy < 0.8 * wall
                                                     else "")])
            summary += [["", "", f"{ms:.3f} ms", kname[:90]] for kname, ms in top[:3]]
        found[f"{name} cuda graph"] = graph = _graph_replay(fused, x, grad, device)
        summary.append([name, "ours, CUDA graph", graph])
        campaign.budget.spent("profile", label, time.monotonic() - start)
        campaign.record("profile", stages=found,
                        hot_kernels=[k for k, _ in sorted(hot.items(), key=lambda kv: -kv[1])])
    return "ok", "" if gpu else "rehearsal: CPU events only", summary


def _graph_replay(module, x, grad, device):
    """fwd+bwd replay time of `module` captured in a CUDA graph, or why it cannot be."""
    import torch

    from benchmarks import harness
    if device.type != "cuda":
        return "skipped: no GPU"
    try:
        graphed = torch.cuda.make_graphed_callables(module, (x.detach().requires_grad_(),))
        xs = x.detach().requires_grad_()

        def step():
            torch.autograd.grad(graphed(xs), [xs] + list(module.parameters()), grad)
        ms = harness.summarize(harness.time_calls(step, [()], device, reps=20))["median_ms"]
        return f"captured, replay {ms:.3f} ms"
    except Exception as error:  # what keeps the block out of a graph is the finding
        return f"not capturable: {type(error).__name__}: {str(error).splitlines()[0][:160]}"


# smoke is in campaign_smoke.py, prewarm in campaign_prewarm.py, sanitize and ncu in
# campaign_tools.py
STEP_FUNCTIONS = {"env": env, "tests": tests, "block": block, "model": model, "ops": ops,
                  "profile": profile}
