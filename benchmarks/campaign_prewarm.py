"""The campaign's prewarm step: before anything is timed, compile every Triton kernel the plan's
later steps will launch, and every torch.compile graph they will time, in parallel processes.

A unit of the prewarm is one case of a later step with one provider (a benchmark case), or one
smoke case: the worker runs exactly that step's own code for it (harness.run_suite on a plan
built by campaign_steps.make_plan with warm=True: one call per pass, nothing timed), so the
kernels it compiles are the ones the timed run asks for, with the same cache keys in Triton's
and Inductor's on-disk caches (TRITON_CACHE_DIR, TORCHINDUCTOR_CACHE_DIR: the campaign sets
both for itself and its workers). Eager providers are not warmed (nothing of theirs compiles).

Workers: one process per two cores, each with Inductor's compile pool at its share of the cores,
longest units first. The step stops at its share of the budget; units
left then compile in the timed steps, where the budget sees their cost. Each unit's labels are
marked warmed, so the budget estimates them from warmed units.
"""
import importlib
import multiprocessing
import os
import sys
import time
import traceback

# The most of the budget prewarm may take.
SHARE = 0.4


def units(campaign):
    """[(kind, label, spec)] of the plan's later steps: spec is what a worker runs (picklable)."""
    from benchmarks import campaign_smoke, campaign_steps, harness
    found = []
    later = campaign.steps[campaign.steps.index("prewarm") + 1:]
    if "smoke" in later:
        N = campaign_smoke.smoke_setup(campaign.rehearse)[0]
        for dtype, stage, op in campaign_smoke.smoke_cases(campaign.rehearse):
            found.append(("smoke", campaign_smoke.smoke_label(dtype, stage, op, N),
                          ("smoke", dtype, stage, op)))
    for step in ("block", "model", "ops"):
        if step not in later:
            continue
        for index, (suite_name, options) in enumerate(
                campaign_steps.bench_config(step, campaign.plan, campaign.rehearse)):
            suite = importlib.import_module(f"benchmarks.{suite_name}")
            plan, _ = campaign_steps.make_plan(campaign, suite, options, warm=True)
            providers = [p for p in options.get("providers") or () if not p.startswith("eager")]
            for case_index, case in enumerate(suite.cases(plan)):
                for provider in providers:
                    kind = ("compile" if harness.is_compiled(provider) else "run")
                    kind = f"{'model ' if step == 'model' else ''}{kind}"
                    found.append((kind, f"{suite.describe(plan, case)} | {provider}",
                                  ("bench", step, index, case_index, provider)))
    return found


# Relative cost of a unit, for the order (longest first): compiles of models, then of blocks,
# then the rest.
ORDER = {"model compile": 0, "compile": 1, "model run": 2, "run": 3, "smoke": 4}


def prewarm(campaign):
    work = units(campaign)
    if not work:
        return "ok", "nothing to warm", []
    if not campaign.budget.admit("prewarm", "prewarm"):
        return "partial", "not started (budget)", []
    work.sort(key=lambda u: ORDER.get(u[0], 5))
    cores = os.cpu_count() or 2
    workers = min(len(work), 2 if campaign.rehearse else max(2, cores // 2))
    threads = max(1, cores // workers)
    deadline = time.monotonic() + min(campaign.budget.left(),
                                      SHARE * campaign.budget.seconds - campaign.budget.elapsed())
    log_path = campaign.path("prewarm.log")
    context = multiprocessing.get_context("spawn")
    pool = context.Pool(workers, initializer=_worker_start,
                        initargs=(log_path, threads, campaign.rehearse, campaign.out,
                                  campaign.plan))
    started = time.monotonic()
    pending = {i: pool.apply_async(_run_unit, (spec,)) for i, (_, _, spec) in enumerate(work)}
    finished, failed, seconds_by_label = {}, {}, {}
    while pending and time.monotonic() < deadline:
        time.sleep(0.2)
        for i, result in list(pending.items()):
            if not result.ready():
                continue
            del pending[i]
            labels, seconds, error = result.get()
            if error:
                failed[work[i][1]] = error
            else:
                finished[work[i][1]] = seconds
                campaign.budget.warmed.update(labels)
                seconds_by_label.update((label, seconds) for label in labels)
        campaign.record("prewarm", warmed=len(finished), failed=failed, left=len(pending))
    pool.terminate()
    pool.join()
    spent = time.monotonic() - started
    campaign.budget.spent("prewarm", "prewarm", spent)
    cache = _cache_entries()
    # unit_seconds and warmed_labels by the labels the timed steps' budget sees
    campaign.record("prewarm", warmed=len(finished), failed=failed, not_warmed=[
        work[i][1] for i in pending], unit_seconds=seconds_by_label,
        warmed_labels=sorted(campaign.budget.warmed), workers=workers,
        triton_cache_entries=cache)
    summary = [["units warmed", f"{len(finished)} of {len(work)}", f"{workers} workers",
                f"{spent:.0f} s"], ["Triton cache entries", cache]]
    summary += [["FAILED", label, error[-300:]] for label, error in failed.items()]
    summary += [["not warmed (time)", work[i][1]] for i in pending]
    if failed:
        return "failed", f"{len(failed)} units failed (prewarm.log)", summary
    if pending:
        return "partial", f"{len(pending)} units not warmed in the step's share", summary
    return "ok", "", summary


def _cache_entries():
    directory = os.environ.get("TRITON_CACHE_DIR", "")
    return len(os.listdir(directory)) if os.path.isdir(directory) else 0


class _WorkerCampaign:
    """What campaign_steps.make_plan reads of a Campaign, in a worker."""

    def __init__(self, rehearse, out, plan):
        self.rehearse, self.out, self.plan = rehearse, out, plan
        self.floors = None


_state = {}


def _worker_start(log_path, threads, rehearse, out, plan):
    """A worker: output to prewarm.log, Inductor's compile pool sized to the worker's share of
    the cores (set before torch is imported)."""
    log = open(log_path, "a", buffering=1)
    os.dup2(log.fileno(), 1)
    os.dup2(log.fileno(), 2)
    sys.stdout = sys.stderr = log
    os.environ["TORCHINDUCTOR_COMPILE_THREADS"] = str(threads)
    _state["campaign"] = _WorkerCampaign(rehearse, out, plan)


def _run_unit(spec):
    """(labels warmed, seconds, error text or None) of one unit."""
    start = time.monotonic()
    try:
        if spec[0] == "smoke":
            from benchmarks import campaign_smoke
            labels = campaign_smoke.warm(*spec[1:], _state["campaign"].rehearse)
        else:
            labels = _warm_bench(*spec[1:])
        return labels, time.monotonic() - start, None
    except Exception:
        text = traceback.format_exc()
        print(text, flush=True)
        return [], time.monotonic() - start, text


class _Recorder:
    """A budget that admits everything and keeps the labels it saw."""

    def __init__(self):
        self.labels = []

    def admit(self, kind, label):
        self.labels.append(label)
        return True

    def spent(self, kind, label, seconds):
        pass


def _warm_bench(step, index, case_index, provider):
    from benchmarks import campaign_steps, harness
    campaign = _state["campaign"]
    suite_name, options = campaign_steps.bench_config(step, campaign.plan,
                                                      campaign.rehearse)[index]
    suite = importlib.import_module(f"benchmarks.{suite_name}")
    recorder = _Recorder()
    plan, args = campaign_steps.make_plan(campaign, suite, dict(options, providers=(provider,)),
                                          warm=True, budget=recorder)
    print(f"warming {suite.describe(plan, suite.cases(plan)[case_index])} | {provider}",
          flush=True)
    harness.run_suite(suite, plan, args, only_case=case_index)
    return recorder.labels
