"""Model benchmark: ConvNeXt-T/S/B training images/s (one SGD step: forward, backward,
update; AMP bf16 or fp32, channels_last, batch 128, 224 px) and inference images/s (batch 256),
with peak memory, for: eager NCHW, eager channels_last, torch.compile (default; max-autotune
with --autotune), ours (ck.models, fused blocks) and ours + compile; each row gives its first
call's seconds (a compiled provider's compile) and its compiled graphs.

    python -m benchmarks.bench_model [--quick] [--autotune] [--out DIR]

On a CPU: timm's convnext_tiny at 224 px, fp32, as users serve and train it there: inference at
batch 1, 4 and 32 and a training step at batch 4, against eager channels_last and torch.compile;
ours is the timm model converted by ck.convert_model (backend auto), in inference also with
ck.prepack_weights. Labelled CPU. --tiny:
ck.models' ConvNeXt-atto with one block a stage, batch 2, 32 px: checks the harness end to end.
"""
import copy
import sys

import torch

import convnext_kernels as ck
from benchmarks import harness

NAME = "model"


add_options = harness.add_autotune_option


def timm_models(name):
    """{"plain": timm's `name`, "ours": another converted by ck.convert_model (backend auto)},
    with the same weights."""
    import timm
    models = {"plain": timm.create_model(name), "ours": ck.convert_model(timm.create_model(name))}
    models["ours"].load_state_dict(models["plain"].state_dict())
    return models


# --tiny: ConvNeXt-atto with one block a stage (its compile is seconds, not minutes, on a CPU).
TINY_MODEL = ("convnext_atto", {"depths": (1, 1, 1, 1)})


def _models(plan, name):
    """{"plain": model, "ours": converted (backend auto)}, the same weights: timm's on a CPU
    (what CPU users run; auto picks cpp for every op there, so a "cpp" row would time the same
    model twice), else ck.models'."""
    if not plan.gpu and not plan.tiny:
        models = timm_models(name)
    else:
        kwargs = TINY_MODEL[1] if plan.tiny else {}
        builder = getattr(ck.models, name)
        models = {"plain": builder(fused=False, **kwargs), "ours": builder(**kwargs)}
        models["ours"].load_state_dict(models["plain"].state_dict())
    return {key: model.to(plan.device) for key, model in models.items()}


# On a CPU, ours with ck.prepack_weights, in inference only: it changes nothing in training.
PREPACKED = "ours prepacked"


def providers(plan, args):
    """model name -> provider -> (memory format, model); built per case. Every compile is
    static (dynamic=False): each case has one shape."""
    def table(name):
        models = _models(plan, name)
        plain, fused = models["plain"], models["ours"]
        cl, nchw = torch.channels_last, torch.contiguous_format
        rows = {"eager NCHW": (nchw, plain)} if plan.gpu else {}
        rows.update({"eager channels_last": (cl, plain), "ours": (cl, fused)})
        if not plan.gpu:
            rows[PREPACKED] = (cl, ck.prepack_weights(copy.deepcopy(fused)))
        if plan.compile:
            rows["compile default"] = (cl, torch.compile(plain, dynamic=False))
            if plan.gpu and getattr(args, "autotune", False):
                rows["compile max-autotune"] = (
                    cl, torch.compile(plain, mode="max-autotune-no-cudagraphs", dynamic=False))
            rows["ours + compile"] = (cl, torch.compile(fused, dynamic=False))
        return rows
    return table


def settings(plan):
    """(model names, train batches, inference batches, resolution)."""
    if plan.gpu:
        names = getattr(plan, "models", None) or (
            ["convnext_tiny"] if plan.quick else ["convnext_tiny", "convnext_small",
                                                   "convnext_base"])
        return names, [128], [256], 224
    if plan.tiny:
        return [TINY_MODEL[0]], [2], [2], 32
    return ["convnext_tiny"], [4], [1, 4, 32], 224


def cases(plan):
    names, train, inference, _ = settings(plan)
    return [(name, dtype, mode, batch) for name in names for dtype in plan.dtypes
            for mode, batches in (("train", train), ("inference", inference))
            for batch in batches]


def _autocast(plan, dtype):
    """On a GPU, bf16/fp16 run as AMP (autocast, fp32 parameters), as users train; fp32 and the
    CPU run plain fp32."""
    return dtype if plan.gpu and dtype != torch.float32 else None


def describe(plan, case):
    name, dtype, mode, batch = case
    amp = _autocast(plan, dtype)
    precision = f"AMP {str(amp)[6:]}" if amp else "fp32"
    return f"{name}{' (tiny)' if plan.tiny else ''} {precision} {mode} batch {batch}"


# Timed rounds per provider on a CPU. There the providers run interleaved, one call each per
# round, so that the drift of a shared 2-core VM (same-run medians of one provider moved by 10-20 %
# between runs minutes apart) hits them alike; on a GPU one provider after another, so that each
# peak memory is its own. 15 rounds: with 7, the batch-1 ratios of one commit moved by about 0.1
# between runs.
CPU_ROUNDS = 15
GPU_REPS = 10  # timed steps per provider on a GPU (after 2 warm-up steps)


def _step(model, mode, amp, device, target):
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)

    def step(x):
        with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
            if mode == "train":
                loss = torch.nn.functional.cross_entropy(model(x), target)
            else:
                with torch.no_grad():
                    model(x)
        if mode == "train":
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    model.train(mode == "train")
    return step


def run_case(plan, tables, case):
    name, dtype, mode, batch = case
    px = settings(plan)[3]
    amp = _autocast(plan, dtype)
    device = plan.device
    label = describe(plan, case)
    case = dict(op="model", case=f"{label} {px}px", model=name, stage=name,
                dtype=str(amp or torch.float32).replace("torch.", ""), amp=amp is not None,
                shape=[batch, 3, px, px])
    target = torch.randint(0, 1000, (batch,), device=device)
    ready = {}  # provider -> (memory format, step, inputs, compile fields, first call s)
    times, peaks = {}, {}
    for provider, (fmt, model) in tables(name).items():
        if (provider == PREPACKED and mode == "train") or not plan.runs(provider):
            continue
        kind = f"model {mode} {'compile' if harness.is_compiled(provider) else 'run'}"
        with plan.unit(kind, f"{case['case']} {case['dtype']} | {provider}") as admitted:
            if not admitted:
                continue
            inputs = [(torch.randn(batch, 3, px, px, device=device).contiguous(
                memory_format=fmt),) for _ in range(2)]
            step = _step(model.to(memory_format=fmt), mode, amp, device, target)
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            graphs, cache = harness.compiled_graphs(), harness.compile_cache_counts()
            try:
                first_s = harness.first_call_seconds(step, inputs[0], device)
                if plan.warm:
                    continue
                times[provider] = harness.time_calls(step, inputs, device, warmup=2,
                                                     reps=GPU_REPS if plan.gpu else 0)
            except Exception as error:  # a compile that fails here: reported, not hidden
                plan.results.not_measured(case, provider, mode, error)
                continue
            ready[provider] = (fmt, step, inputs, harness.compile_fields(graphs, cache), first_s)
            if device.type == "cuda":
                peaks[provider] = torch.cuda.max_memory_allocated(device) / 2**20
    for i in range(0 if plan.gpu else CPU_ROUNDS):
        for provider, (_, step, inputs, _, _) in ready.items():
            times[provider] += harness.time_calls(step, [inputs[i % 2]], device, warmup=0, reps=1)
    rows, medians = [], {}
    for provider, (fmt, _, _, compiled, first_s) in ready.items():
        stats = harness.summarize(times[provider])
        medians[provider] = stats["median_ms"]
        row = dict(case, provider=provider, memory_format=str(fmt).replace("torch.", ""),
                   **{"pass": mode}, **stats, images_per_s=batch / (stats["median_ms"] * 1e-3),
                   first_call_s=first_s, peak_memory_MiB=peaks.get(provider),
                   **harness.settings_now())
        if harness.is_compiled(provider):
            row.update(compiled)
        rows.append(plan.results.add(**row))
    for row in rows:
        harness.add_speedups(row, {base: medians.get(base) for base in (
            "eager channels_last", "compile default", "compile max-autotune")})
    plan.results.changed()


def main(argv=None):
    harness.main_for(sys.modules[__name__], argv)


if __name__ == "__main__":
    main()
