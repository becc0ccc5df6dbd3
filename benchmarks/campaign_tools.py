"""The campaign steps that watch kernels from outside the process, with the CUDA tools:
compute-sanitizer (memcheck, racecheck) and Nsight Compute, over fixed workloads.

    python -m benchmarks.campaign_tools workload small|hot
runs the work they watch: small = every op on each GPU backend at small odd shapes, hot = the
block at stages 1 and 4, batch 64, bf16.
"""
import re
import subprocess
import sys
import time

from benchmarks.campaign_smoke import SMOKE_OPS, fwd_bwd, smoke_inputs
from benchmarks.campaign_steps import ROOT, find_tool


def _external(campaign, step, tool, runs):
    """Runs `runs` ([label, argv]) under a CUDA tool from outside this process, each a unit of
    the budget (killed when the budget is spent), logging to tools.log; returns the logs' text
    per label (None: not started)."""
    if campaign.rehearse:
        return None, "skipped: rehearsal (no GPU)"
    path = find_tool(tool)
    if path is None:
        return None, f"skipped: {tool} is not on this machine"
    texts = {}
    with open(campaign.path("tools.log"), "a") as log:
        for label, argv in runs:
            if not campaign.budget.admit("tool", f"{step} {label}"):
                texts[label] = None
                continue
            left = campaign.budget.left()
            start = time.monotonic()
            log.write(f"===== {label}: {' '.join(argv)}\n")
            log.flush()
            try:
                proc = subprocess.run([path] + argv, cwd=ROOT, capture_output=True, text=True,
                                      timeout=max(1.0, left))
                texts[label] = proc.stdout + proc.stderr
            except subprocess.TimeoutExpired as error:
                texts[label] = f"TIMEOUT after {left:.0f} s\n{error.stdout or ''}"
            campaign.budget.spent("tool", f"{step} {label}", time.monotonic() - start)
            log.write(texts[label] + "\n")
            campaign.record(step, done=list(texts))
    return texts, ""


WORKLOAD = [sys.executable, "-m", "benchmarks.campaign_tools", "workload"]


def sanitize(campaign):
    """compute-sanitizer memcheck and racecheck over every op on each GPU backend at small odd
    shapes; a finding fails the step with the kernel it names."""
    texts, reason = _external(campaign, "sanitize", "compute-sanitizer", [
        (tool, ["--tool", tool, "--error-exitcode", "3", "--print-limit", "20", *WORKLOAD,
                "small"]) for tool in ("memcheck", "racecheck")])
    if texts is None:
        return "skipped", reason, []
    summary, findings = [], []
    for tool, text in texts.items():
        if text is None:
            summary.append([tool, "not started (budget)"])
            continue
        kernels = sorted(set(re.findall(r"in (?:void )?([\w:]+)", " ".join(
            ln for ln in text.splitlines() if ln.startswith("=========")))))
        errors = re.findall(r"ERROR SUMMARY: (\d+) error", text)
        bad = "TIMEOUT" in text or (errors and errors[-1] != "0") or "Traceback" in text
        if "TIMEOUT" in text:
            kernels = ["(timed out: see tools.log)"] + kernels
        summary.append([tool, f"errors {errors[-1] if errors else '?'}", " ".join(kernels)[:200]])
        if bad:
            findings.append(f"{tool}: {' '.join(kernels) or 'see tools.log'}")
    return ("failed", "; ".join(findings), summary) if findings else ("ok", "", summary)


NCU_METRICS = ("gpu__time_duration.sum,dram__throughput.avg.pct_of_peak_sustained_elapsed,"
               "sm__throughput.avg.pct_of_peak_sustained_elapsed")


def ncu(campaign):
    """Nsight Compute on the hottest kernels of the profile step (the block at stages 1 and 4):
    duration, DRAM and SM throughput as % of peak."""
    hot = campaign.data["steps"].get("profile", {}).get("hot_kernels", [])[:6]
    names = [re.split(r"[<(]", k.replace("void ", ""))[0].split("::")[-1] for k in hot]
    select = ["-k", "regex:" + "|".join(re.escape(n) for n in names)] if names else []
    texts, reason = _external(campaign, "ncu", "ncu", [(
        "block", ["--clock-control", "none", "--target-processes", "all", "--csv",
                  "--metrics", NCU_METRICS, "--launch-count", "24", *select, *WORKLOAD, "hot"])])
    if texts is None:
        return "skipped", reason, []
    text = texts["block"] or ""
    metrics = {}
    for line in text.splitlines():
        cells = [c.strip('"') for c in line.split('","')]
        if len(cells) > 10 and cells[-3] in NCU_METRICS.split(","):
            kernel = cells[4][:80]
            metrics.setdefault(kernel, {})[cells[-3].split("__")[1].split(".")[0]] = cells[-1]
    campaign.record("ncu", metrics=metrics)
    summary = [[k] + [f"{m} {v}" for m, v in vals.items()] for k, vals in metrics.items()]
    if not metrics:
        return "failed", "no metrics in ncu's output (tools.log)", summary
    return "ok", "", summary


STEP_FUNCTIONS = {"sanitize": sanitize, "ncu": ncu}


def workload(kind):
    """The fixed work the sanitizer (small) and Nsight Compute (hot) watch."""
    import torch

    import convnext_kernels as ck
    from benchmarks import harness
    device = torch.device("cuda")
    gen = torch.Generator().manual_seed(0)
    if kind == "small":
        for dtype in (torch.bfloat16, torch.float32):
            for op in SMOKE_OPS:
                inputs, _, ours = smoke_inputs(op, 2, 40, 13, dtype, device, gen)
                for backend in ("cuda", "triton"):
                    try:
                        fwd_bwd(lambda *a: ours(backend, *a), inputs, gen)
                    except ValueError as error:
                        if "cannot serve" not in str(error):
                            raise
                    torch.cuda.synchronize()
        return
    for name, C, HW in (harness.STAGES[0], harness.STAGES[3]):
        fused = ck.FusedConvNeXtBlock(C).to(device, torch.bfloat16)
        x = torch.randn(64, C, HW, HW, device=device, dtype=torch.bfloat16).contiguous(
            memory_format=torch.channels_last).requires_grad_()
        for _ in range(2):
            fused(x).backward(torch.randn_like(x))
        torch.cuda.synchronize()


if __name__ == "__main__":
    if sys.argv[1:2] != ["workload"] or sys.argv[2:3] not in (["small"], ["hot"]):
        sys.exit("usage: python -m benchmarks.campaign_tools workload small|hot")
    workload(sys.argv[2])
