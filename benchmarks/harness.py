"""Timing, the measured floor, and result files shared by the benchmarks.

Rules: inputs are random (never zeros), warmed up, timed per call (CUDA events on GPU,
perf_counter on CPU), reported as median and p20/p80 of many calls, rotating through enough
input copies that they exceed L2, and every baseline is timed in the same run.
"""
import argparse
import datetime
import json
import math
import os
import platform
import statistics
import subprocess
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


class Plan:
    """What a run covers on this machine: GPU: batch 64, bf16 and fp32, T and B stages (T only
    with --quick); CPU: a short run, batch 2, fp32, T stages (--batch sets the batch). Measures
    the floors now."""

    def __init__(self, name, args):
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
        # time.monotonic() after which no new case starts (the GPU campaign's budget)
        self.deadline = getattr(args, "deadline", None)
        self.results = Results(name, self.device)
        self.floors = (copy_bandwidth(self.device), fma_rate(self.device))
        self.results.floors = {"copy_bandwidth_GBps": self.floors[0] / 1e9,
                               "fma_TFLOPs": self.floors[1] / 1e12}
        self.matmul_rates = {}
        for dtype in (torch.bfloat16, torch.float32) if self.gpu else (torch.float32,):
            self.matmul_rates[dtype] = matmul_rate(self.device, dtype)
            self.results.floors[f"{str(dtype)[6:]}_matmul_TFLOPs"] = \
                self.matmul_rates[dtype] / 1e12
        print(f"{name} on {self.results.env['device']}: copy {self.floors[0] / 1e9:.0f} GB/s, "
              f"FMA {self.floors[1] / 1e12:.1f} TFLOP/s")

    def matmul_rate(self, dtype):
        """The measured matmul rate of `dtype` (fp16 counts at bf16's: the same tensor cores)."""
        if dtype in self.matmul_rates:
            return self.matmul_rates[dtype]
        return self.matmul_rates.get(torch.bfloat16, self.matmul_rates[torch.float32])

    def finish(self):
        base = self.results.write(self.out,
                                  f"{self.results.name}-{self.results.device_slug()}")
        print(self.results.markdown())
        print(f"wrote {base}.json and {base}.md")


def run_suite(suite, plan, args, progress=None):
    """Runs every case of a benchmark module (cases / providers / run_case) into plan.results."""
    table = suite.providers(plan, args)
    for case in suite.cases(plan):
        if plan.deadline is not None and time.monotonic() > plan.deadline:
            plan.results.skipped.append(suite.describe(plan, case))
            continue
        if progress is not None:
            progress.set_description(suite.describe(plan, case))
        else:
            print(suite.describe(plan, case), flush=True)
        suite.run_case(plan, table, case)
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


def git_commit():
    """The commit measured: git's HEAD, else $CK_COMMIT (a copy without .git, e.g. on the GPU
    machine)."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True,
                              text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return os.environ.get("CK_COMMIT", "unknown (no git here: set CK_COMMIT)")


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


def run_providers(results, device, case, table, input_sets, cost, reps, floors,
                  baselines=("eager NCHW", "eager channels_last", "compile default",
                             "compile max-autotune"), extras=None):
    """Times every provider of `table` (name -> (memory format, fn(*inputs))) on `input_sets`
    (each: the differentiable inputs, then the output gradient), in three passes: fwd
    (inference), bwd (gradients from a kept graph), fwd+bwd; adds a row per provider and pass
    with its % of floor (cost: pass -> (bytes, flops)) and its speed-up over each baseline;
    extras: provider -> fields added to its rows."""
    timings, rows = {}, []
    for provider, (fmt, fn) in table.items():
        inputs = [tuple(t.contiguous(memory_format=fmt) if t is not None and t.dim() == 4 else t
                        for t in s) for s in input_sets]
        leaves = [tuple(t.detach().requires_grad_() for t in s[:-1]) + (s[-1],) for s in inputs]

        def fwd(*args):
            with torch.no_grad():
                fn(*args[:-1])

        def fwd_bwd(*args):
            torch.autograd.grad(fn(*args[:-1]), args[:-1], args[-1])

        graphs = compiled_graphs()
        kept = [(fn(*s[:-1]),) + s for s in leaves]
        provider_rows = []

        def bwd(y, *args):
            torch.autograd.grad(y, args[:-1], args[-1], retain_graph=True)

        for pass_name, f, args in (("fwd", fwd, inputs), ("bwd", bwd, kept),
                                   ("fwd+bwd", fwd_bwd, leaves)):
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            try:
                stats = summarize(time_calls(f, args, device, reps=reps))
            except Exception as error:  # e.g. a compiled graph that refuses retain_graph
                results.not_measured(case, provider, pass_name, error)
                continue
            bytes_moved, flops = cost[pass_name]
            floor = floor_ms(bytes_moved, flops, *floors)
            timings[(provider, pass_name)] = stats["median_ms"]
            peak = (torch.cuda.max_memory_allocated(device) / 2**20
                    if device.type == "cuda" else None)
            row = dict(case, provider=provider, memory_format=str(fmt).replace("torch.", ""),
                       **{"pass": pass_name}, **stats, peak_memory_MiB=peak, bytes=bytes_moved,
                       flops=flops, floor_ms=floor, pct_of_floor=100 * floor / stats["median_ms"],
                       **(extras or {}).get(provider, {}))
            provider_rows.append(results.add(**row))  # written now: a killed run keeps it
        if is_compiled(provider):  # this provider's compiles and recompiles, all passes
            for row in provider_rows:
                row["compiled_graphs"] = compiled_graphs() - graphs
        rows += provider_rows
        del kept
    for row in rows:
        add_speedups(row, {base: timings.get((base, row["pass"])) for base in baselines})
    results.changed()


def compiled_graphs():
    """How many graphs dynamo has compiled in this process (a compiled baseline's delta over
    its calls is its compile and recompile count, reported in its rows)."""
    from torch._dynamo.utils import counters
    return counters["stats"]["unique_graphs"]


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
        self.skipped = []  # cases not started before the deadline
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
                "errors": self.errors, "skipped": self.skipped}

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
