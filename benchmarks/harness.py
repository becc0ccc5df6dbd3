"""Timing, the measured floor, and result files shared by the benchmarks.

Rules: inputs are random (never zeros), warmed up, timed per call (CUDA events on GPU,
perf_counter on CPU), reported as median and p20/p80 of many calls, rotating through enough
input copies that they exceed L2, and every baseline is timed in the same run.
"""
import argparse
import contextlib
import datetime
import json
import math
import os
import platform
import statistics
import time

import torch
import torch._dynamo

from benchmarks.timing import summarize, sync, time_calls  # noqa: F401 (re-exported)

# Each compiled baseline meets one graph per shape, dtype and pass (16-24 per suite), past
# dynamo's default recompile limit of 8, after which it would silently run eager: raise the
# limit, and make hitting it an error, so that a "compile" row is always a compiled one.
torch._dynamo.config.recompile_limit = 64
torch._dynamo.config.fail_on_recompile_limit_hit = True


# (name, C, H=W) at 224 px: ConvNeXt-T stages, then ConvNeXt-B stages.
STAGES = [("T1", 96, 56), ("T2", 192, 28), ("T3", 384, 14), ("T4", 768, 7),
          ("B1", 128, 56), ("B2", 256, 28), ("B3", 512, 14), ("B4", 1024, 7)]
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def parser(description):
    """The options every op benchmark takes."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--out", default=os.path.join("benchmarks", "results"))
    p.add_argument("--quick", action="store_true", help="ConvNeXt-T stages only, few calls")
    p.add_argument("--dtype", nargs="+", choices=sorted(DTYPES), default=None)
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile baselines")
    p.add_argument("--tiny", action="store_true",
                   help="one tiny shape, few calls: checks the harness, measures nothing useful")
    p.add_argument("--providers", choices=("all", "uncompiled"), default="all",
                   help="uncompiled: eager and ours only (no torch.compile baseline)")
    p.add_argument("--batch", type=int, default=None,
                   help="batch size (default: 64 on a GPU, 2 on a CPU)")
    return p


def is_compiled(provider):
    return "compile" in provider


PASSES = ("fwd", "bwd", "fwd+bwd")


class Plan:
    """What a run covers on this machine: GPU: batch 64, bf16 and fp32, T and B stages (T only
    with --quick); CPU: a short run, batch 2, fp32, T stages (--batch sets the batch). Measures
    the floors now.

    The GPU campaign narrows a plan (benchmarks/campaign.py): `passes` to time
    (`compiled_passes` for the torch.compile providers, whose every pass is a graph to compile),
    `providers` to run (None: all), a `budget` that admits each provider of each case before it
    starts (its `admit(kind, label)` and `spent(kind, label, seconds)`), `floors` measured
    already, and `warm`: one call per provider and pass, nothing measured (the campaign's
    prewarm compiles what the timed run will launch). `skip_cases`: describe() of cases not to
    run."""

    def __init__(self, name, args, *, passes=PASSES, compiled_passes=None, providers=None,
                 budget=None, warm=False, floors=None):
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.gpu = self.device.type == "cuda"
        self.dtypes = [DTYPES[d] for d in (args.dtype or (["bf16", "fp32"] if self.gpu
                                                          else ["fp32"]))]
        self.stages = STAGES[:4] if (args.quick or not self.gpu) else STAGES
        self.batch = getattr(args, "batch", None) or (64 if self.gpu else 2)
        self.reps = (30 if args.quick else 100) if self.gpu else 10
        self.quick = args.quick or args.tiny
        self.tiny = args.tiny
        if args.tiny:
            self.stages, self.batch, self.reps = [("tiny", 16, 8)], 2, 3
        self.compile = not args.no_compile and getattr(args, "providers", "all") != "uncompiled"
        self.out = args.out
        self.passes, self.providers, self.budget, self.warm = passes, providers, budget, warm
        self.compiled_passes = compiled_passes or passes
        self.skip_cases = set()
        self.warmup = 5
        if warm:
            self.reps, self.warmup = 1, 0
        self.results = Results(name, self.device)
        if warm:  # nothing is timed: no floors
            floors = {"copy_bandwidth_GBps": math.nan, "fma_TFLOPs": math.nan}
        self.results.floors = floors or measure_floors(self.device)
        f = self.results.floors
        self.floors = (f["copy_bandwidth_GBps"] * 1e9, f["fma_TFLOPs"] * 1e12)
        if not warm:
            print(f"{name} on {self.results.env['device']}: copy {f['copy_bandwidth_GBps']:.0f} "
                  f"GB/s, FMA {f['fma_TFLOPs']:.1f} TFLOP/s")

    def matmul_rate(self, dtype):
        """The measured matmul rate of `dtype` (fp16 counts at bf16's: the same tensor cores)."""
        f = self.results.floors
        rate = f.get(f"{str(dtype)[6:]}_matmul_TFLOPs")
        if rate is None:
            rate = f.get("bfloat16_matmul_TFLOPs", f.get("float32_matmul_TFLOPs", math.nan))
        return rate * 1e12

    def runs(self, provider):
        """Whether this plan runs `provider` at all."""
        return self.providers is None or provider in self.providers

    def passes_for(self, provider):
        return self.compiled_passes if is_compiled(provider) else self.passes

    @contextlib.contextmanager
    def unit(self, kind, label):
        """One provider of one case: admitted by the budget (if any) before it starts, its
        seconds reported after. Yields whether it may run."""
        if self.budget is not None and not self.budget.admit(kind, label):
            self.results.not_started.append(label)
            yield False
            return
        start = time.monotonic()
        yield True
        if self.budget is not None:
            self.budget.spent(kind, label, time.monotonic() - start)

    def finish(self):
        base = self.results.write(self.out,
                                  f"{self.results.name}-{self.results.device_slug()}")
        print(self.results.markdown())
        print(f"wrote {base}.json and {base}.md")


def measure_floors(device):
    """The device's ceilings, measured now: copy bandwidth, the fp32 FMA rate, the matmul rates
    (bf16 and fp32 on a GPU)."""
    floors = {"copy_bandwidth_GBps": copy_bandwidth(device) / 1e9,
              "fma_TFLOPs": fma_rate(device) / 1e12}
    for dtype in (torch.bfloat16, torch.float32) if device.type == "cuda" else (torch.float32,):
        floors[f"{str(dtype)[6:]}_matmul_TFLOPs"] = matmul_rate(device, dtype) / 1e12
    return floors


# Settings a case runs under, set before it and restored after, so that nothing leaks into the
# next case: TF32 off (fp32 rows are IEEE fp32 for every provider: eager's cuDNN would otherwise
# use TF32 convolutions, which ours do not), cuDNN's autotuner on (eager's strongest convs).
CASE_SETTINGS = {"tf32": False, "cudnn_benchmark": True}


@contextlib.contextmanager
def case_settings(tf32=CASE_SETTINGS["tf32"], cudnn_benchmark=CASE_SETTINGS["cudnn_benchmark"]):
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32,
             torch.backends.cudnn.benchmark)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = tf32
    torch.backends.cudnn.benchmark = cudnn_benchmark
    try:
        yield {"tf32": tf32, "cudnn_benchmark": cudnn_benchmark}
    finally:
        (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32,
         torch.backends.cudnn.benchmark) = saved


def run_suite(suite, plan, args, progress=None, only_case=None):
    """Runs every case of a benchmark module (cases / providers / run_case) into plan.results,
    each under case_settings (only case number `only_case` where given)."""
    table = suite.providers(plan, args)
    for index, case in enumerate(suite.cases(plan)):
        if only_case is not None and index != only_case:
            continue
        label = suite.describe(plan, case)
        if label in plan.skip_cases:
            continue
        if progress is not None:
            progress.set_description(label)
        else:
            print(label, flush=True)
        with case_settings():
            suite.run_case(plan, table, case)
        plan.results.cases_done.append(label)
        plan.results.changed()
        if progress is not None:
            progress.update()


def add_autotune_option(parser):
    parser.add_argument("--autotune", action="store_true",
                        help="add torch.compile max-autotune baselines (long compiles)")


def compile_providers(plan, args, fmt, fn):
    """The torch.compile baselines of eager `fn`: default, and with --autotune on a GPU
    max-autotune (no CUDA graphs); none with --no-compile. name -> (memory format, fn)."""
    if not plan.compile:
        return {}
    table = {"compile default": (fmt, torch.compile(fn, dynamic=False))}
    if plan.gpu and getattr(args, "autotune", False):
        table["compile max-autotune"] = (
            fmt, torch.compile(fn, mode="max-autotune-no-cudagraphs", dynamic=False))
    return table


def main_for(suite, argv=None):
    """The command line of one benchmark module."""
    p = parser(suite.__doc__.splitlines()[0])
    if hasattr(suite, "add_options"):
        suite.add_options(p)
    args = p.parse_args(argv)
    plan = Plan(suite.NAME, args)
    run_suite(suite, plan, args)
    plan.finish()


def device_name(device):
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def environment(device):
    env = {"device": device_name(device), "torch": torch.__version__,
           "cuda": torch.version.cuda, "date": datetime.date.today().isoformat()}
    try:
        import triton
        env["triton"] = triton.__version__
    except ImportError:
        env["triton"] = None
    if device.type != "cuda":  # CPU results differ by model and instruction set: say which
        env["cpu_model"] = cpu_model()
        env["cpu_isa"] = cpp_isa()
    return env


def cpu_model():
    """The CPU's model name from /proc/cpuinfo (Linux), else what platform says."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpp_isa():
    """The instruction set the cpp kernels run with here (csrc/cpu/isa.h), or None where _C is
    not loaded (convnext_kernels._ext says)."""
    from convnext_kernels import _ext
    return _ext._C.cpu_isa() if _ext.LOADED else None


def rotation(bytes_per_set, device, cap=16):
    """How many input sets to rotate through so that together they exceed twice the L2 cache."""
    if device.type == "cuda":
        l2 = torch.cuda.get_device_properties(device).L2_cache_size
    else:
        l2 = 32 << 20  # beyond a typical CPU's L2 + L3 share
    return max(2, min(cap, math.ceil(2 * l2 / max(1, bytes_per_set)) + 1))


def copy_bandwidth(device):
    """Bytes per second of a device-to-device copy (read + write), measured now."""
    n = (256 << 20) if device.type == "cuda" else (64 << 20)
    src = torch.randn(n // 4, device=device)
    dst = torch.empty_like(src)
    ms = statistics.median(time_calls(lambda: dst.copy_(src), [()], device, warmup=3, reps=20))
    return 2 * src.numel() * 4 / (ms * 1e-3)


def matmul_rate(device, dtype):
    """FLOP/s of a large square matmul in `dtype`, measured now (the compute floor of the GEMM
    ops)."""
    n = 8192 if device.type == "cuda" else 1024
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    ms = statistics.median(time_calls(lambda: a @ b, [()], device, warmup=2, reps=10))
    return 2 * n**3 / (ms * 1e-3)


def fma_rate(device):
    """FLOP/s of fp32 fused multiply-adds (2 FLOPs each), measured now: a Triton register-FMA
    kernel on GPU; on CPU the fp32 matmul rate, the best FMA throughput torch reaches there."""
    if device.type == "cuda":
        from benchmarks.fma_kernel import fma_flops_per_second
        return fma_flops_per_second(device)
    return matmul_rate(device, torch.float32)


def activation_pass_cost(N, C, H, W, taps, elem):
    """(bytes, FLOPs) per pass at the floor of an op on one N,C,H,W activation with `taps`
    depthwise taps (0: none): fwd reads x and writes y; bwd reads grad and x and writes grad_x
    (parameters are negligible); 2 FLOPs a tap FMA, bwd computes grad_x and grad_weight."""
    numel = N * C * H * W
    return {"fwd": (2 * numel * elem, 2 * numel * taps),
            "bwd": (3 * numel * elem, 4 * numel * taps),
            "fwd+bwd": (5 * numel * elem, 6 * numel * taps)}


def floor_ms(bytes_moved, flops, bandwidth, flop_rate):
    return max(bytes_moved / bandwidth, flops / flop_rate) * 1e3


def run_providers(plan, case, table, input_sets, cost, floors,
                  baselines=("eager NCHW", "eager channels_last", "compile default",
                             "compile max-autotune"), extras=None, extra_passes=None):
    """Times every provider of `table` (name -> (memory format, fn(*inputs))) that the plan runs
    on `input_sets` (each: the differentiable inputs, then the output gradient), pass by pass of
    plan.passes: fwd (inference), bwd (gradients from a kept graph), fwd+bwd, and any of
    `extra_passes` (name -> fn(y, *inputs, grad) on a kept graph, e.g. one gradient alone);
    adds a row per provider and pass with its % of floor (cost: pass -> (bytes, flops)), the
    first call's seconds (a compiled provider's compile), on a GPU the kernels and busy time of
    one fwd+bwd, and its speed-up over each baseline; extras: provider -> fields for its rows.
    Each provider is one unit of the plan's budget."""
    timings, rows = {}, []
    results = plan.results
    passes = {"fwd": _fwd, "bwd": _bwd, "fwd+bwd": _fwd_bwd, **(extra_passes or {})}
    for provider, (fmt, fn) in table.items():
        if not plan.runs(provider):
            continue
        kind = f"{case['op']} {'compile' if is_compiled(provider) else 'run'}"
        with plan.unit(kind, f"{case['case']} {case['dtype']} | {provider}") as admitted:
            if not admitted:
                continue
            provider_rows = _time_provider(plan, case, provider, fmt, fn, input_sets, cost,
                                           floors, passes, timings,
                                           (extras or {}).get(provider, {}))
        rows += provider_rows
    for row in rows:
        add_speedups(row, {base: timings.get((base, row["pass"])) for base in baselines})
    results.changed()


def _fwd(fn, *args):
    with torch.no_grad():
        fn(*args[:-1])


def _bwd(fn, y, *args):
    torch.autograd.grad(y, args[:-1], args[-1], retain_graph=True)


def _fwd_bwd(fn, *args):
    torch.autograd.grad(fn(*args[:-1]), args[:-1], args[-1])


def _time_provider(plan, case, provider, fmt, fn, input_sets, cost, floors, passes, timings,
                   extra_fields):
    device, results = plan.device, plan.results
    inputs = [tuple(t.contiguous(memory_format=fmt) if t is not None and t.dim() == 4 else t
                    for t in s) for s in input_sets]
    leaves = [tuple(t.detach().requires_grad_() for t in s[:-1]) + (s[-1],) for s in inputs]
    plan_passes = plan.passes_for(provider)
    on_kept = [p for p in plan_passes if p not in ("fwd", "fwd+bwd")]
    graphs, cache = compiled_graphs(), compile_cache_counts()
    kept = [(fn(*s[:-1]),) + s for s in leaves] if on_kept else []
    provider_rows = []
    for pass_name in plan_passes:
        if pass_name not in passes:
            continue
        args = {"fwd": inputs, "fwd+bwd": leaves}.get(pass_name, kept)
        f = passes[pass_name]

        def call(*a, f=f):
            f(fn, *a)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        try:
            first_s = first_call_seconds(call, args[0], device)
            if plan.warm:
                continue
            stats = summarize(time_calls(call, args, device, warmup=plan.warmup,
                                         reps=plan.reps))
        except Exception as error:  # e.g. a compiled graph that refuses retain_graph
            results.not_measured(case, provider, pass_name, error)
            continue
        bytes_moved, flops = cost.get(pass_name, (0, 0))
        floor = floor_ms(bytes_moved, flops, *floors)
        timings[(provider, pass_name)] = stats["median_ms"]
        peak = (torch.cuda.max_memory_allocated(device) / 2**20
                if device.type == "cuda" else None)
        row = dict(case, provider=provider, memory_format=str(fmt).replace("torch.", ""),
                   **{"pass": pass_name}, **stats, first_call_s=first_s,
                   peak_memory_MiB=peak, bytes=bytes_moved, flops=flops, floor_ms=floor,
                   pct_of_floor=100 * floor / stats["median_ms"], **settings_now(),
                   **extra_fields)
        if pass_name == "fwd+bwd" and device.type == "cuda":
            row.update(device_activity(lambda: call(*leaves[0]), device))
        provider_rows.append(results.add(**row))  # written now: a killed run keeps it
    if is_compiled(provider):  # this provider's compiles and recompiles, all passes
        fields = compile_fields(graphs, cache)
        for row in provider_rows:
            row.update(fields)
    del kept
    return provider_rows


def first_call_seconds(fn, args, device):
    """Seconds of one call of fn(*args), the device synchronised: a compiled function's first
    call is its compile."""
    sync(device)
    start = time.perf_counter()
    fn(*args)
    sync(device)
    return time.perf_counter() - start


def settings_now():
    """The settings a row was timed under (case_settings)."""
    return {"tf32": torch.backends.cudnn.allow_tf32,
            "cudnn_benchmark": torch.backends.cudnn.benchmark}


def device_activity(fn, device):
    """{"kernels": device kernels launched, "busy_ms": their summed device time} of one call of
    fn(), under torch.profiler (a GPU only)."""
    from torch.profiler import ProfilerActivity, profile
    sync(device)
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        sync(device)
    kernels = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    return {"kernels": len(kernels), "busy_ms": sum(e.device_time for e in kernels) / 1e3}


def compiled_graphs():
    """How many graphs dynamo has compiled in this process (a compiled baseline's delta over
    its calls is its compile and recompile count, reported in its rows)."""
    from torch._dynamo.utils import counters
    return counters["stats"]["unique_graphs"]


COMPILE_CACHE_COUNTERS = {"inductor_cache_hits": ("inductor", "fxgraph_cache_hit"),
                          "inductor_cache_misses": ("inductor", "fxgraph_cache_miss"),
                          "aot_cache_hits": ("aot_autograd", "autograd_cache_hit"),
                          "aot_cache_misses": ("aot_autograd", "autograd_cache_miss")}


def compile_cache_counts():
    """Inductor's and AOTAutograd's on-disk cache hits and misses so far in this process: a
    compiled provider's deltas say whether its graphs were compiled here (misses) or loaded
    (hits: the campaign's prewarm step compiled them)."""
    from torch._dynamo.utils import counters
    return {name: counters[group][key] for name, (group, key) in COMPILE_CACHE_COUNTERS.items()}


def compile_fields(graphs_before, cache_before):
    """The fields of a compiled provider's rows: graphs compiled and cache deltas since."""
    now = compile_cache_counts()
    return {"compiled_graphs": compiled_graphs() - graphs_before,
            **{name: now[name] - cache_before[name] for name in now}}


def add_speedups(row, baseline_ms):
    """row["speedup_vs_<baseline>"] = baseline's median / row's, for each baseline timed."""
    for base, ref in baseline_ms.items():
        if ref:
            row["speedup_vs_" + base.replace(" ", "_").replace("-", "_")] = ref / row["median_ms"]


def speedup_over_eager(row):
    """Speed-up over the eager baseline users run: channels_last where an op has NCHW and
    channels_last forms, else plain eager."""
    return row.get("speedup_vs_eager_channels_last", row.get("speedup_vs_eager", float("nan")))


class Results:
    """Rows of one benchmark, written as JSON and a Markdown table."""

    def __init__(self, name, device):
        self.name = name
        self.env = environment(device)
        self.env["label"] = "GPU" if device.type == "cuda" else "CPU"
        self.rows = []
        self.floors = {}
        self.errors = []  # (case, provider, pass) that raised instead of giving a time
        self.not_started = []  # units the budget did not admit ("case | provider")
        self.cases_done = []  # describe() of every case run
        self.on_change = None  # called after each change (the campaign writes its files)

    def add(self, **row):
        """Stores a row (with device and versions) and returns it."""
        versions = {key: self.env[key] for key in ("torch", "triton", "cuda")}
        row = {**row, "device": self.env["device"], "label": self.env["label"], **versions}
        self.rows.append(row)
        self.changed()
        return row

    def not_measured(self, case, provider, pass_name, error):
        message = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
        print(f"  {provider} {pass_name}: not measured ({message})")
        self.errors.append({"case": case.get("case"), "provider": provider, "pass": pass_name,
                            "error": message})
        self.changed()

    def changed(self):
        if self.on_change is not None:
            self.on_change(self)

    def as_json(self):
        return {"env": self.env, "floors": self.floors, "rows": self.rows,
                "errors": self.errors, "not_started": self.not_started,
                "cases_done": self.cases_done}

    def device_slug(self):
        slug = "".join(c if c.isalnum() else "-" for c in self.env["device"]).strip("-").lower()
        while "--" in slug:
            slug = slug.replace("--", "-")
        return slug[:40]

    def write(self, directory, stem, figures=()):
        """directory/stem.json and stem.md, linking the PNG `figures` written beside them (the
        one writer of results). Returns directory/stem."""
        os.makedirs(directory, exist_ok=True)
        base = os.path.join(directory, stem)
        with open(base + ".json", "w") as f:
            json.dump(self.as_json(), f, indent=1)
        with open(base + ".md", "w") as f:
            f.write(self.markdown())
            if figures:
                f.write("\n" + "\n".join(f"![{os.path.basename(p)}]({os.path.basename(p)})"
                                          for p in figures) + "\n")
        return base

    def markdown(self):
        env = self.env
        lines = [f"# {self.name} on {env['device']} ({env['label']})", "",
                 f"{env['date']}; torch {env['torch']}, triton {env['triton']}, "
                 f"CUDA {env['cuda']}. "
                 + (f"CPU: {env['cpu_model']}, cpp kernels on {env['cpu_isa']}. "
                    if env.get("cpu_model") else "")
                 + "Floors measured in this run: "
                 + ", ".join(f"{k} {v:.3g}" for k, v in self.floors.items())]
        for op in dict.fromkeys(r.get("op", self.name) for r in self.rows):
            op_rows = [r for r in self.rows if r.get("op", self.name) == op]
            if "images_per_s" in op_rows[0]:
                lines += self._images_table(op, op_rows)
                continue
            lines += ["", f"## {op} ({env['label']})", "",
                      "| case | dtype | pass | provider | median ms | p20–p80 ms | % of floor | "
                      "speed-up vs eager | vs compile |", "|---|---|---|---|---|---|---|---|---|"]
            for r in op_rows:
                lines.append(
                    f"| {r['case']} | {r['dtype']} | {r['pass']} | {r['provider']} | "
                    f"{r['median_ms']:.4g} | {r['p20_ms']:.4g}–{r['p80_ms']:.4g} | "
                    f"{r['pct_of_floor']:.1f} | "
                    f"{speedup_over_eager(r):.2f} | "
                    f"{r.get('speedup_vs_compile_default', float('nan')):.2f} |")
        return "\n".join(lines) + "\n"

    def _images_table(self, op, rows):
        lines = ["", f"## {op} ({self.env['label']}): images/s", "",
                 "| case | dtype | provider | median ms | images/s | peak MiB | speed-up vs eager "
                 "channels_last | vs compile |", "|---|---|---|---|---|---|---|---|"]
        for r in rows:
            peak = f"{r['peak_memory_MiB']:.0f}" if r.get("peak_memory_MiB") else "n/a"
            lines.append(
                f"| {r['case']} | {r['dtype']} | {r['provider']} | {r['median_ms']:.4g} | "
                f"{r['images_per_s']:.1f} | {peak} | {speedup_over_eager(r):.2f} | "
                f"{r.get('speedup_vs_compile_default', float('nan')):.2f} |")
        return lines
