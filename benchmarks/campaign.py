"""The GPU campaign: staged steps for a short loan of a GPU machine, each writing its results as
it goes, so that a step killed at the call's time limit still leaves what it measured.

    python -m benchmarks.campaign STEP... [--out DIR] [--budget SECONDS] [--rehearse]
    python -m benchmarks.campaign all --budget 540

Steps, in the order `all` runs them (each sized to finish in ≤ 8 minutes on an H100):
    env       versions, GPU, optional packages and tools; builds _C in place (MAX_JOBS = cores)
    smoke     every op and the block on each GPU backend, T stage shapes, bf16 and fp32, fwd and
              bwd against eager at the test tolerances, one timing each
    tests     the test suite on CUDA, one process per file, in parallel, each with its timeout
    ops, block, model
              the benchmarks, bf16 first, eager and ours only
    compile   the same suites with the torch.compile baselines (and eager and ours again, so
              that every ratio is between times of one run)
    profile   one block fwd+bwd at stages 1 and 4 under torch.profiler; CUDA-graph capture
    sanitize  compute-sanitizer memcheck and racecheck over every kernel at small odd shapes
    ncu       Nsight Compute: DRAM and SM throughput of the hottest kernels

Files in DIR (at most 8, flat): results.json (every step's status and rows, rewritten after
each row), summary.md (a table per step), campaign.log, build.log, tests.log, sanitize.log,
ncu.log. --rehearse runs every step on the CPU (Triton interpreter, tiny shapes; sanitize and
ncu report themselves skipped) to prove the plumbing where no GPU is at hand.
"""
import argparse
import json
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = ("env", "smoke", "tests", "ops", "block", "model", "compile", "profile", "sanitize",
         "ncu")
# The least time (s) a step needs to be worth starting on a GPU; a step that would start with
# less of the budget left is skipped, and `all` stops cleanly.
MIN_SECONDS = {"env": 20, "smoke": 30, "tests": 120, "ops": 40, "block": 40, "model": 60,
               "compile": 120, "profile": 30, "sanitize": 60, "ncu": 60}
STEP_LIMIT = 480  # no step runs past 8 minutes
MAX_FILES = 8


class Campaign:
    """The output directory, the clock, and results.json / summary.md kept current."""

    def __init__(self, out, budget, rehearse):
        self.out, self.rehearse = out, rehearse
        self.start = time.monotonic()
        self.budget = budget
        self.data = {"rehearsal": rehearse, "budget_s": budget, "steps": {}}
        os.makedirs(out, exist_ok=True)

    def left(self):
        return self.budget - (time.monotonic() - self.start)

    def deadline(self, margin=0.0):
        """time.monotonic() by which the current step must end: its limit, or the budget."""
        return time.monotonic() + min(STEP_LIMIT, self.left()) - margin

    def path(self, name):
        return os.path.join(self.out, name)

    def record(self, step, **fields):
        self.data["steps"].setdefault(step, {}).update(fields)
        self.write()

    def write(self):
        tmp = self.path("results.json.tmp")
        with open(tmp, "w") as f:
            json.dump(self.data, f, indent=1, default=str)
        os.replace(tmp, self.path("results.json"))  # a kill never leaves half a file
        with open(self.path("summary.md"), "w") as f:
            f.write(summary_markdown(self.data))


def summary_markdown(data):
    lines = ["# GPU campaign" + (" (rehearsal on CPU)" if data["rehearsal"] else ""), ""]
    env = data["steps"].get("env", {}).get("info")
    if env:
        lines += [", ".join(f"{k} {v}" for k, v in env.items() if not isinstance(v, dict)), ""]
    for step, result in data["steps"].items():
        lines.append(f"## {step}: {result.get('status')} ({result.get('seconds', 0):.0f} s)"
                     + (f" {result['reason']}" if result.get("reason") else ""))
        for row in result.get("summary", []):
            lines.append("| " + " | ".join(str(v) for v in row) + " |")
        lines.append("")
    return "\n".join(lines)


def _prepare_environment(out, rehearse):
    """Before torch/triton are imported: Triton and Inductor caches in ignored folders of the
    checkout (a warm call of the device reuses them), the interpreter for a rehearsal."""
    os.environ.setdefault("TRITON_CACHE_DIR", os.path.join(ROOT, ".cache", "triton"))
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", os.path.join(ROOT, ".cache", "inductor"))
    os.environ["PYTHONUNBUFFERED"] = "1"
    if rehearse:
        os.environ["TRITON_INTERPRET"] = "1"
        os.environ["CUDA_VISIBLE_DEVICES"] = ""


def run_step(campaign, name):
    from benchmarks import campaign_smoke, campaign_steps, campaign_tools
    step = {**campaign_steps.STEP_FUNCTIONS, "smoke": campaign_smoke.smoke,
            **campaign_tools.STEP_FUNCTIONS}[name]
    left = campaign.left()
    need = 0 if campaign.rehearse else MIN_SECONDS[name]
    if left < need:
        campaign.record(name, status="skipped", seconds=0.0,
                        reason=f"budget: {left:.0f} s left, the step needs {need} s")
        return False
    print(f"== {name} ({left:.0f} s of budget left)", flush=True)
    t0 = time.monotonic()
    campaign.record(name, status="running")
    try:
        status, reason, summary = step(campaign)
    except Exception as error:  # the step failed; the next one may still run
        import traceback
        traceback.print_exc()
        status, reason, summary = "failed", f"{type(error).__name__}: {error}", []
    campaign.record(name, status=status, reason=reason, summary=summary,
                    seconds=time.monotonic() - t0)
    for row in summary:
        print("| " + " | ".join(str(v) for v in row) + " |")
    print(f"== {name}: {status}" + (f" ({reason})" if reason else ""), flush=True)
    return True


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("steps", nargs="+", choices=STEPS + ("all",))
    parser.add_argument("--out", default=os.environ.get("OUT") or os.path.join(
        ROOT, "benchmarks", "results", "scratch", "campaign"))
    parser.add_argument("--budget", type=float, default=540.0,
                        help="seconds for all the steps of this call together")
    parser.add_argument("--rehearse", action="store_true",
                        help="every step on the CPU at tiny shapes (no GPU needed)")
    args = parser.parse_args(argv)
    _prepare_environment(args.out, args.rehearse)
    steps = list(STEPS) if "all" in args.steps else list(dict.fromkeys(args.steps))
    campaign = Campaign(args.out, args.budget, args.rehearse)
    log = open(campaign.path("campaign.log"), "a")
    sys.stdout = Tee(sys.stdout, log)
    sys.stderr = Tee(sys.stderr, log)
    for name in steps:
        if not run_step(campaign, name):
            print(f"== stopping before {name}: budget", flush=True)
            for rest in steps[steps.index(name) + 1:]:
                campaign.record(rest, status="skipped", seconds=0.0, reason="budget")
            break
    print(summary_markdown(campaign.data))
    failed = [s for s, r in campaign.data["steps"].items() if r.get("status") == "failed"]
    return 1 if failed else 0


class Tee:
    """Writes to the terminal and campaign.log at once."""

    def __init__(self, *streams):
        self.streams = streams

    def write(self, text):
        for stream in self.streams:
            stream.write(text)
            stream.flush()
        return len(text)

    def flush(self):
        for stream in self.streams:
            stream.flush()

    def fileno(self):
        return self.streams[0].fileno()


if __name__ == "__main__":
    sys.exit(main())
