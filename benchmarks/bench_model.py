"""Model benchmark: ConvNeXt-T/S/B training images/s (one SGD step: forward, backward,
update; AMP bf16, channels_last, batch 128, 224 px) and inference images/s (batch 256), with
peak memory, for: eager NCHW, eager channels_last, torch.compile (default; max-autotune with
--autotune), ours (ck.models, fused blocks) and ours + compile.

    python -m benchmarks.bench_model [--quick] [--autotune] [--out DIR]

On a CPU: timm's convnext_tiny at 224 px, fp32, as users serve and train it there: inference at
batch 1, 4 and 32 and a training step at batch 4, against eager channels_last and torch.compile;
ours is the timm model converted by ck.convert_model (backend auto), in inference also with
ck.prepack_weights. Labelled CPU. --tiny:
ck.models' ConvNeXt-atto, batch 2, 32 px: checks the harness end to end.
"""
import copy
import sys

import torch

import convnext_kernels as ck
from benchmarks import harness

NAME = "model"


add_options = harness.add_autotune_option


def timm_models(size):
    """{"plain": timm's convnext_<size>, "ours": another converted by ck.convert_model (backend
    auto)}, with the same weights."""
    import timm
    models = {"plain": timm.create_model(f"convnext_{size}"),
              "ours": ck.convert_model(timm.create_model(f"convnext_{size}"))}
    models["ours"].load_state_dict(models["plain"].state_dict())
    return models


def _models(plan, size):
    """{"plain": model, "ours": converted (backend auto)}, the same weights: timm's on a CPU
    (what CPU users run; auto picks cpp for every op there, so a "cpp" row would time the same
    model twice), else ck.models'."""
    if not plan.gpu and not plan.tiny:
        models = timm_models(size)
    else:
        builder = getattr(ck.models, f"convnext_{size}")
        models = {"plain": builder(fused=False), "ours": builder()}
        models["ours"].load_state_dict(models["plain"].state_dict())
    return {name: model.to(plan.device) for name, model in models.items()}


# On a CPU, ours with ck.prepack_weights, in inference only: it changes nothing in training.
PREPACKED = "ours prepacked"


def providers(plan, args):
    """size -> name -> (memory format, model); built per case."""
    def table(size):
        models = _models(plan, size)
        plain, fused = models["plain"], models["ours"]
        cl, nchw = torch.channels_last, torch.contiguous_format
        rows = {"eager NCHW": (nchw, plain)} if plan.gpu else {}
        rows.update({"eager channels_last": (cl, plain), "ours": (cl, fused)})
        if not plan.gpu:
            rows[PREPACKED] = (cl, ck.prepack_weights(copy.deepcopy(fused)))
        if plan.compile:
            rows["compile default"] = (cl, torch.compile(plain))
            if plan.gpu and getattr(args, "autotune", False):
                rows["compile max-autotune"] = (
                    cl, torch.compile(plain, mode="max-autotune-no-cudagraphs"))
            rows["ours + compile"] = (cl, torch.compile(fused))
        return rows
    return table


def settings(plan):
    """(sizes, train batches, inference batches, resolution, autocast dtype or None)."""
    if plan.gpu:
        return (["tiny"] if plan.quick else ["tiny", "small", "base"]), [128], [256], 224, \
            torch.bfloat16
    if plan.tiny:
        return ["atto"], [2], [2], 32, None
    return ["tiny"], [4], [1, 4, 32], 224, None


def cases(plan):
    sizes, train, inference = settings(plan)[:3]
    return [(size, mode, batch) for size in sizes
            for mode, batches in (("train", train), ("inference", inference))
            for batch in batches]


def describe(plan, case):
    return f"ConvNeXt-{case[0]} {case[1]} batch {case[2]}"


# Timed rounds per provider on a CPU. There the providers run interleaved, one call each per
# round, so that the drift of a shared 2-core VM (same-run medians of one provider moved by 10-20 %
# between runs minutes apart) hits them alike; on a GPU one provider after another, so that each
# peak memory is its own. 15 rounds: with 7, the batch-1 ratios of one commit moved by about 0.1
# between runs (the CPU model suite, `--model`, took 3 min 14 s with 15 on the 2-core machine).
CPU_ROUNDS = 15


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
    size, mode, batch = case
    px, amp = settings(plan)[3:]
    device = plan.device
    case = dict(op="model", case=f"ConvNeXt-{size} {mode} batch {batch} {px}px", stage=size,
                dtype=str(amp or torch.float32).replace("torch.", ""), shape=[batch, 3, px, px])
    target = torch.randint(0, 1000, (batch,), device=device)
    ready = {}  # provider -> (memory format, step, inputs, compiled graphs); eager first
    times, peaks = {}, {}
    for provider, (fmt, model) in tables(size).items():
        if provider == PREPACKED and mode == "train":
            continue
        inputs = [(torch.randn(batch, 3, px, px, device=device).contiguous(memory_format=fmt),)
                  for _ in range(2)]
        step = _step(model.to(memory_format=fmt), mode, amp, device, target)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        graphs = harness.compiled_graphs()
        try:
            warm = harness.time_calls(step, inputs, device, warmup=3,
                                      reps=0 if not plan.gpu else max(3, plan.reps // 5))
        except Exception as error:  # a compile that fails on this machine: reported, not hidden
            plan.results.not_measured(case, provider, mode, error)
            continue
        ready[provider] = (fmt, step, inputs, harness.compiled_graphs() - graphs)
        times[provider] = warm
        if device.type == "cuda":
            peaks[provider] = torch.cuda.max_memory_allocated(device) / 2**20
    for i in range(0 if plan.gpu else CPU_ROUNDS):
        for provider, (_, step, inputs, _) in ready.items():
            times[provider] += harness.time_calls(step, [inputs[i % 2]], device, warmup=0, reps=1)
    rows, medians = [], {}
    for provider, (fmt, _, _, graphs) in ready.items():
        stats = harness.summarize(times[provider])
        medians[provider] = stats["median_ms"]
        row = dict(case, provider=provider, memory_format=str(fmt).replace("torch.", ""),
                   **{"pass": mode}, **stats, images_per_s=batch / (stats["median_ms"] * 1e-3),
                   peak_memory_MiB=peaks.get(provider))
        if harness.is_compiled(provider):
            row["compiled_graphs"] = graphs
        rows.append(plan.results.add(**row))
    for row in rows:
        harness.add_speedups(row, {base: medians.get(base) for base in (
            "eager channels_last", "compile default", "compile max-autotune")})
    plan.results.changed()


def main(argv=None):
    harness.main_for(sys.modules[__name__], argv)


if __name__ == "__main__":
    main()
