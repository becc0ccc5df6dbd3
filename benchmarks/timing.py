"""Timing of device work, shared by the benchmarks and the floor measurements: warm-up, one
time per call (CUDA events on a GPU, perf_counter on a CPU), median and p20/p80."""
import statistics
import time

import torch


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_calls(fn, arg_sets, device, warmup=5, reps=50):
    """Per-call times in ms of fn(*args), cycling through arg_sets."""
    for i in range(warmup):
        fn(*arg_sets[i % len(arg_sets)])
    sync(device)
    times = []
    if device.type == "cuda":
        events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
                  for _ in range(reps)]
        for i, (start, end) in enumerate(events):
            args = arg_sets[i % len(arg_sets)]
            start.record()
            fn(*args)
            end.record()
        sync(device)
        times = [start.elapsed_time(end) for start, end in events]
    else:
        for i in range(reps):
            args = arg_sets[i % len(arg_sets)]
            t0 = time.perf_counter()
            fn(*args)
            times.append((time.perf_counter() - t0) * 1e3)
    return times


def summarize(times):
    q = statistics.quantiles(times, n=10) if len(times) >= 2 else [times[0]] * 9
    return {"median_ms": statistics.median(times), "p20_ms": q[1], "p80_ms": q[7],
            "calls": len(times)}
