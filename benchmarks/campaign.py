"""The GPU campaign: one call on a lent GPU machine (an H200; 15 minutes of device time a
session, start-up and idle included: one cold call of at most ~9.5 minutes) that brings back
the headline numbers, each result written the moment it exists.

    python -m benchmarks.campaign quick [--out DIR] [--budget 540]   # make gpu: the one call
    python -m benchmarks.campaign next  [--out DIR] [--budget 540]   # the following session's
    python -m benchmarks.campaign STEP... [--out DIR] [--budget S]   # steps by name
    python -m benchmarks.campaign quick --rehearse                   # on this CPU (make rehearse)
    python -m benchmarks.campaign adopt DIR                          # file a run's results

Plans, each ordered by value:
  quick   env       versions, GPU, tools; the _C that `make gpu-prep` built and carried, where
                    it imports and a CUDA op matches the reference there (else built in place,
                    with every core, and why)
          prewarm   every Triton kernel the plan will launch and every torch.compile graph it
                    will time, compiled in parallel processes through the very calls the steps
                    make (Triton's and Inductor's caches are keyed right by construction)
          smoke     every op and FusedConvNeXtBlock on each GPU backend, ConvNeXt-T stage shapes,
                    batch 64, bf16 and fp32, forward and every gradient against float64 at the
                    tests' rule
          block     block forward+backward per T stage, bf16, channels_last: eager, ours (auto
                    and each backend), torch.compile of eager; kernels and GPU-busy time beside
          model     ConvNeXt-T, AMP bf16, channels_last, training step at batch 128 and
                    inference at batch 256: eager, compile, ours, ours + compile; img/s
          ops       dwconv fwd+bwd against cuDNN (the weight gradient on its own row), LayerNorm
                    and dwconv+LayerNorm, the MLP; bf16, each backend
          profile   the block at stages 1 and 4 under torch.profiler; CUDA-graph replay
  next    env, prewarm, tests (the test files a GPU adds to, each with its timeout and log),
          block (fp32, V2, B stages, max-autotune), model (fp32, V2, S and B), ops (fp32),
          sanitize (compute-sanitizer), ncu (Nsight Compute); cases that committed results of
          the same code and device hold already are skipped.

The budget: every unit of work (one provider of one benchmark case, one smoke case, one test
file...) is admitted only if its estimated seconds fit the time left; the estimate is what this
run measured for the same kind of unit (compiles included), else a prior (PRIORS). What does
not fit is listed as not started. A unit that runs past its estimate is the only overrun: the
next is not admitted (tests/test_campaign.py holds both rules on a rehearsal).

Files in DIR (at most 8, flat): results.json (every step's status, rows and what was not
started, rewritten after each row), summary.md (a table per step), campaign.log, prewarm.log,
auto_table.json (auto's measured choices: convnext_kernels/measured.py), and as needed
build.log, tests.log, tools.log (sanitize, ncu). --rehearse runs the plan on the CPU (Triton
interpreter, tiny shapes; sanitize and ncu report themselves skipped).
"""
import argparse
import json
import math
import os
import shutil
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PLANS = {"quick": ("env", "prewarm", "smoke", "block", "model", "ops", "profile"),
         "next": ("env", "prewarm", "tests", "block", "model", "ops", "sanitize", "ncu")}
STEPS = ("env", "prewarm", "smoke", "tests", "block", "model", "ops", "profile", "sanitize",
         "ncu")
MAX_FILES = 8
# The files each step may write in DIR (besides results.json, summary.md and campaign.log).
STEP_FILES = {"env": ("build.log",), "prewarm": ("prewarm.log",), "tests": ("tests.log",),
              "block": ("auto_table.json",), "ops": ("auto_table.json",),
              "sanitize": ("tools.log",), "ncu": ("tools.log",)}
# Seconds kept at the end of the budget for the summary and the last writes.
RESERVE_S = 10
# Estimated seconds of a unit before this run has measured one of its kind: (kind suffix,
# prewarmed) -> seconds, on a cold H200 machine (16 cores) and in a CPU rehearsal. Guesses
# until a run measures them: the first unit of each kind replaces them with its own time.
PRIORS = {
    "gpu": {("compile", False): 90, ("compile", True): 25, ("model compile", False): 240,
            ("model compile", True): 60, ("run", False): 8, ("run", True): 8,
            ("model run", False): 20, ("model run", True): 20, ("smoke", False): 15,
            ("smoke", True): 6, ("tests", False): 120, ("tool", False): 120,
            ("profile", False): 30, ("prewarm", False): 30},
    "rehearsal": {("compile", False): 40, ("compile", True): 15, ("model compile", False): 60,
                  ("model compile", True): 20, ("run", False): 15, ("run", True): 10,
                  ("model run", False): 15, ("model run", True): 10, ("smoke", False): 20,
                  ("smoke", True): 15, ("tests", False): 60, ("tool", False): 5,
                  ("profile", False): 20, ("prewarm", False): 20},
}


def prior_key(kind):
    """The PRIORS key of a unit kind: "model train compile" -> "model compile", "block run" ->
    "run", "smoke" -> "smoke"."""
    words = kind.split()
    last = words[-1]
    return f"model {last}" if words[0] == "model" and last in ("compile", "run") else last


class Budget:
    """The call's clock. admit(kind, label) before a unit, spent(kind, label, seconds) after;
    units not admitted are kept in `not_started` with their estimate."""

    def __init__(self, seconds, priors):
        self.seconds, self.priors = seconds, priors
        self.start = time.monotonic()
        self.measured = {}  # (kind, prewarmed) -> [seconds]
        self.units = []  # [kind, label, seconds] of every unit run
        self.not_started = []  # [kind, label, estimate, seconds left]
        self.warmed = set()  # labels the prewarm step ran

    def left(self):
        return self.seconds - RESERVE_S - (time.monotonic() - self.start)

    def elapsed(self):
        return time.monotonic() - self.start

    def estimate(self, kind, label):
        warmed = label in self.warmed
        seen = self.measured.get((kind, warmed))
        if seen:
            return max(seen)
        key = prior_key(kind)
        return self.priors.get((key, warmed), self.priors.get((key, False), 30))

    def admit(self, kind, label):
        estimate, left = self.estimate(kind, label), self.left()
        if estimate <= left:
            return True
        # Rounded outward (estimate up, time left down) so the record keeps estimate > left.
        self.not_started.append([kind, label, math.ceil(estimate * 10) / 10,
                                 math.floor(max(0.0, left) * 10) / 10])
        print(f"  not started: {label} (estimated {estimate:.0f} s, {max(0, left):.0f} s left)",
              flush=True)
        return False

    def spent(self, kind, label, seconds):
        self.measured.setdefault((kind, label in self.warmed), []).append(seconds)
        self.units.append([kind, label, round(seconds, 2)])


class Campaign:
    """The output directory, the budget, the plan, and results.json / summary.md kept
    current."""

    def __init__(self, out, budget, rehearse, plan):
        self.out, self.rehearse, self.plan = out, rehearse, plan
        self.budget = Budget(budget, PRIORS["rehearsal" if rehearse else "gpu"])
        self.data = {"rehearsal": rehearse, "plan": plan, "budget_s": budget, "steps": {}}
        self.floors = None  # measured once, by the first benchmark step
        os.makedirs(out, exist_ok=True)

    def path(self, name):
        return os.path.join(self.out, name)

    def record(self, step, **fields):
        self.data["steps"].setdefault(step, {}).update(fields)
        self.write()

    def write(self):
        self.data["elapsed_s"] = round(self.budget.elapsed(), 1)
        self.data["not_started"] = self.budget.not_started
        self.data["units"] = self.budget.units
        tmp = self.path("results.json.tmp")
        with open(tmp, "w") as f:
            json.dump(self.data, f, indent=1, default=str)
        os.replace(tmp, self.path("results.json"))  # a kill never leaves half a file
        with open(self.path("summary.md"), "w") as f:
            f.write(summary_markdown(self.data))


def summary_markdown(data):
    lines = [f"# GPU campaign, plan {data.get('plan')}"
             + (" (rehearsal on CPU)" if data["rehearsal"] else ""), ""]
    env = data["steps"].get("env", {}).get("info")
    if env:
        lines += [", ".join(f"{k} {v}" for k, v in env.items() if not isinstance(v, dict)), ""]
    lines += [f"{data.get('elapsed_s', 0):.0f} s of a {data['budget_s']:.0f} s budget", ""]
    for step, result in data["steps"].items():
        lines.append(f"## {step}: {result.get('status')} ({result.get('seconds', 0):.0f} s)"
                     + (f" {result['reason']}" if result.get("reason") else ""))
        for row in result.get("summary", []):
            lines.append("| " + " | ".join(str(v) for v in row) + " |")
        lines.append("")
    if data.get("not_started"):
        lines += ["## not started (budget)", ""]
        lines += [f"| {label} | estimated {est} s | {left} s left |"
                  for _, label, est, left in data["not_started"]]
    return "\n".join(lines) + "\n"


def prepare_environment(rehearse):
    """Before torch/triton are imported: Triton and Inductor caches in ignored folders of the
    checkout, shared with the prewarm step's processes; the interpreter for a rehearsal."""
    os.environ.setdefault("TRITON_CACHE_DIR", os.path.join(ROOT, ".cache", "triton"))
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", os.path.join(ROOT, ".cache", "inductor"))
    os.environ["PYTHONUNBUFFERED"] = "1"
    if rehearse:
        os.environ["TRITON_INTERPRET"] = "1"
        os.environ["CUDA_VISIBLE_DEVICES"] = ""


def step_functions():
    from benchmarks import campaign_prewarm, campaign_smoke, campaign_steps, campaign_tools
    return {**campaign_steps.STEP_FUNCTIONS, "smoke": campaign_smoke.smoke,
            "prewarm": campaign_prewarm.prewarm, **campaign_tools.STEP_FUNCTIONS}


def run_step(campaign, name):
    step = step_functions()[name]
    print(f"== {name} ({campaign.budget.left():.0f} s of budget left)", flush=True)
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


def adopt(directory):
    """Files a campaign run brought back: its files to benchmarks/results/<device>-<date>/ and
    its auto table to convnext_kernels/measured/<device>.json. Returns the results folder."""
    with open(os.path.join(directory, "results.json")) as f:
        data = json.load(f)
    if data.get("rehearsal"):
        sys.exit("adopt: this is a rehearsal's output, not a GPU run")
    info = data["steps"]["env"]["info"]
    slug = "".join(c if c.isalnum() else "-" for c in info["gpu"].lower()).strip("-")
    slug = slug.replace("nvidia-", "")
    target = os.path.join(ROOT, "benchmarks", "results", f"{slug}-{info['date']}")
    os.makedirs(target, exist_ok=True)
    for name in os.listdir(directory):
        shutil.copy2(os.path.join(directory, name), target)
    table = os.path.join(directory, "auto_table.json")
    if os.path.exists(table):
        measured = os.path.join(ROOT, "convnext_kernels", "measured")
        os.makedirs(measured, exist_ok=True)
        shutil.copy2(table, os.path.join(measured, f"{slug}.json"))
    return target


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("steps", nargs="+",
                        help=f"a plan ({', '.join(PLANS)}), steps ({', '.join(STEPS)}), or "
                             "adopt DIR")
    parser.add_argument("--out", default=os.environ.get("OUT") or os.path.join(
        ROOT, "benchmarks", "results", "scratch", "campaign"))
    parser.add_argument("--budget", type=float, default=540.0,
                        help="seconds for the whole call (default 540: 9 minutes)")
    parser.add_argument("--rehearse", action="store_true",
                        help="the plan on the CPU at tiny shapes (no GPU needed)")
    args = parser.parse_args(argv)
    if args.steps[0] == "adopt":
        if len(args.steps) != 2:
            parser.error("adopt takes one folder: the call's $OUT as it came back")
        print(f"filed under {adopt(args.steps[1])}")
        return 0
    if len(args.steps) == 1 and args.steps[0] in PLANS:
        plan, steps = args.steps[0], list(PLANS[args.steps[0]])
    else:
        unknown = [s for s in args.steps if s not in STEPS]
        if unknown:
            parser.error(f"unknown steps {unknown}: choose a plan ({', '.join(PLANS)}) or steps "
                         f"from {', '.join(STEPS)}")
        plan, steps = "quick", list(dict.fromkeys(args.steps))
    prepare_environment(args.rehearse)
    campaign = Campaign(args.out, args.budget, args.rehearse, plan)
    campaign.steps = steps
    log = open(campaign.path("campaign.log"), "a")
    sys.stdout = Tee(sys.stdout, log)
    sys.stderr = Tee(sys.stderr, log)
    for name in steps:
        run_step(campaign, name)
    campaign.write()
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
