"""The steps of the GPU campaign (benchmarks/campaign.py) that run in its process; sanitize and
ncu, which watch from outside, are in campaign_tools.py. Each step takes the Campaign, writes
what it measures through campaign.record as it goes, and returns (status, reason, summary)."""
import importlib
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
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


def env(campaign):
    import torch

    from benchmarks import harness
    info = {"python": platform.python_version(), "torch": torch.__version__,
            "cuda": torch.version.cuda, "commit": harness.git_commit(), "cores": os.cpu_count()}
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
    if campaign.rehearse:  # `make build` built _C before the rehearsal
        reason = "build: not rebuilt in a rehearsal"
    else:
        env_vars = dict(os.environ, MAX_JOBS=str(os.cpu_count()))
        if os.path.exists("/usr/local/cuda/bin/nvcc"):
            env_vars.setdefault("CUDA_HOME", "/usr/local/cuda")
        with open(campaign.path("build.log"), "w") as log:
            build = subprocess.run([sys.executable, "setup.py", "build_ext", "--inplace"],
                                   cwd=ROOT, env=env_vars, stdout=log, stderr=subprocess.STDOUT,
                                   timeout=max(10, campaign.deadline() - time.monotonic()))
        if build.returncode != 0:
            return "failed", "build failed (build.log)", summary
        reason = "built in place"
    import convnext_kernels as ck
    backends = ck.available_backends()
    campaign.record("env", backends=backends)
    summary.append(["backends", " ".join(backends)])
    if not campaign.rehearse and "cuda" not in backends:
        return "failed", "_C has no CUDA kernels", summary
    return "ok", reason, summary


def tests(campaign):
    """The test suite, one pytest process per file, `workers` at a time, each with its own log
    and timeout; failures by name (-rfE). TF32 is off in the tests (tests/conftest.py). A
    rehearsal runs two small files on the CPU."""
    if campaign.rehearse:
        shards = [["tests/test_build.py"], ["tests/test_bench_harness.py", "-k", "floor"]]
        workers = 2
    else:
        files = sorted(f for f in os.listdir(os.path.join(ROOT, "tests"))
                       if f.startswith("test_") and f.endswith(".py"))
        # the slowest files first, so that they are not the ones left when time runs out
        slow = ("test_mlp.py", "test_models.py", "test_block.py", "test_kernel_report.py")
        files.sort(key=lambda f: (f not in slow, f))
        shards = [[f"tests/{f}"] for f in files]
        workers = max(2, min(8, (os.cpu_count() or 2) // 2))
    env_vars = dict(os.environ)
    if not campaign.rehearse:
        env_vars.pop("TRITON_INTERPRET", None)
    deadline = campaign.deadline(margin=5)
    logs = tempfile.mkdtemp(prefix="ck-tests-")
    pending, running, done = list(enumerate(shards)), {}, {}
    while pending or running:
        while pending and len(running) < workers:
            i, shard = pending.pop(0)
            log = open(os.path.join(logs, f"{i}.log"), "w")
            cmd = [sys.executable, "-m", "pytest", "-q", "-rfE", "-p", "no:cacheprovider", *shard]
            running[i] = (subprocess.Popen(cmd, cwd=ROOT, env=env_vars, stdout=log,
                                           stderr=subprocess.STDOUT), log, time.monotonic())
        time.sleep(0.5)
        for i, (proc, log, t0) in list(running.items()):
            timed_out = time.monotonic() > deadline
            if proc.poll() is None and not timed_out:
                continue
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            log.close()
            done[i] = (proc.returncode, time.monotonic() - t0, timed_out and proc.returncode)
            del running[i]
            campaign.record("tests", shards={" ".join(shards[j]): done[j][0] for j in done})
    summary, failures = [], []
    with open(campaign.path("tests.log"), "w") as out:
        for i, shard in enumerate(shards):
            name = " ".join(shard)
            if i not in done:
                summary.append([name, "not started (deadline)"])
                failures.append(f"{name}: not run")
                continue
            with open(os.path.join(logs, f"{i}.log")) as f:
                text = f.read()
            out.write(f"===== {name} (exit {done[i][0]}, {done[i][1]:.0f} s)\n{text}\n")
            last = [ln for ln in text.splitlines() if re.search(r"\d+ (passed|failed)", ln)]
            result = last[-1].strip("= ") if last else "no result line"
            if done[i][2]:
                result = f"KILLED at the deadline after {done[i][1]:.0f} s"
            summary.append([name, result, f"{done[i][1]:.0f} s"])
            failures += [ln for ln in text.splitlines() if ln.startswith(("FAILED", "ERROR"))]
            if done[i][0] not in (0,) and not any(name in f for f in failures):
                failures.append(f"{name}: exit {done[i][0]}")
    shutil.rmtree(logs, ignore_errors=True)
    campaign.record("tests", failures=failures)
    summary += [["FAILED", f[:160]] for f in failures[:40]]
    return ("failed", f"{len(failures)} failures (tests.log)", summary) if failures \
        else ("ok", "", summary)


def _bench(campaign, step, suites, providers, dtypes):
    """Runs benchmark suites into results.json as rows are measured; stops starting cases at
    the step's deadline (those are listed as skipped)."""
    from benchmarks import harness
    gpu_or_rehearsal(campaign)
    parser = harness.parser(step)  # the options of `make bench`, so both read them alike
    harness.add_autotune_option(parser)
    args = parser.parse_args(["--quick", "--out", campaign.out, "--providers", providers,
                              "--dtype", *dtypes] + (["--tiny"] if campaign.rehearse else []))
    args.deadline = campaign.deadline(margin=20)  # (not a command-line option)
    plan = harness.Plan(step, args)
    plan.results.on_change = lambda r: campaign.record(step, **r.as_json())
    for suite in suites:
        harness.run_suite(suite, plan, args)
    results = plan.results
    summary = [[r["case"], r["dtype"], r["pass"], r["provider"], f"{r['median_ms']:.3f} ms",
                f"{harness.speedup_over_eager(r):.2f}x eager"]
               + ([f"{r['speedup_vs_compile_default']:.2f}x compile"]
                  if "speedup_vs_compile_default" in r else [])
               + ([f"{r['images_per_s']:.0f} img/s"] if "images_per_s" in r else [])
               + ([f"{r['compiled_graphs']} graphs"] if "compiled_graphs" in r else [])
               for r in results.rows
               if r["pass"] in ("fwd+bwd", "train", "inference")
               and (r["provider"].startswith("ours") or harness.is_compiled(r["provider"]))]
    summary += [["NOT MEASURED", e["case"], e["provider"], e["pass"], e["error"][:120]]
                for e in results.errors]
    status = "partial" if results.skipped else "ok"
    return status, (f"{len(results.skipped)} cases past the deadline" if results.skipped
                    else ""), summary


def _dtypes(campaign):
    return ["fp32"] if campaign.rehearse else ["bf16", "fp32"]


def ops(campaign):
    from benchmarks import bench_dwconv, bench_layernorm, bench_mlp
    return _bench(campaign, "ops", [bench_dwconv, bench_layernorm, bench_mlp], "uncompiled",
                  _dtypes(campaign))


def block(campaign):
    from benchmarks import bench_block
    return _bench(campaign, "block", [bench_block], "uncompiled", _dtypes(campaign))


def model(campaign):
    from benchmarks import bench_model
    return _bench(campaign, "model", [bench_model], "uncompiled", _dtypes(campaign))


def compile_baselines(campaign):
    """The torch.compile baselines, bf16 (compiles dominate: fp32 would not fit the step), block
    and model first; eager and ours are timed again beside them, so that every ratio is of one
    run. A rehearsal compiles the dwconv suite only (a CPU compile of a model takes minutes)."""
    from benchmarks import bench_block, bench_dwconv, bench_layernorm, bench_mlp, bench_model
    suites = [bench_dwconv] if campaign.rehearse else [bench_block, bench_model, bench_dwconv,
                                                        bench_layernorm, bench_mlp]
    return _bench(campaign, "compile", suites, "all", ["fp32"] if campaign.rehearse else ["bf16"])


def profile(campaign):
    """One block fwd+bwd at stages 1 and 4 under torch.profiler, ours and eager: device kernels
    launched, GPU busy time against wall time (launch-bound when the GPU idles), top kernels;
    ours replayed from a CUDA graph where it can be captured."""
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


# smoke is in campaign_smoke.py, sanitize and ncu in campaign_tools.py
STEP_FUNCTIONS = {"env": env, "tests": tests, "ops": ops, "block": block,
                  "model": model, "compile": compile_baselines, "profile": profile}
