"""python -m convnext_kernels check MODEL [--source timm|torchvision] [--backend B] [--batch N]
                                          [--size PX] [--memory-format F] [--rounds R]
                                          [--device D]

Builds MODEL (random weights), converts a copy, runs both on the same random input in train mode
(same drop-path draws; output and every parameter gradient) and in eval mode, and prints the
largest errors and the speed-up of the converted model's eval forward over the original's,
timed as users run it: channels_last input by default, the two models interleaved call by call
(a shared machine drifts), the median of many rounds. Exits 1 when an error exceeds the
tolerance (fp32: 1e-4 relative to the largest value), 2 on an unknown model."""
import argparse
import copy
import statistics
import sys
import time

import torch

from . import convert_model
from .testing import rel_error

TOLERANCE = 1e-4  # a whole model's fp32 output after ~50 layers: looser than one op's 1e-5
MEMORY_FORMATS = {"channels_last": torch.channels_last, "contiguous": torch.contiguous_format}


def model_names(source):
    """The ConvNeXt models `source` can build."""
    if source == "timm":
        import timm
        return sorted(timm.list_models("convnext*"))
    import torchvision
    return sorted(n for n in torchvision.models.list_models() if "convnext" in n)


def build(name, source):
    if name not in model_names(source):
        raise LookupError(f"check: {source} has no ConvNeXt model {name!r}; choose from: "
                          + ", ".join(model_names(source)))
    if source == "timm":
        import timm
        return timm.create_model(name, pretrained=False)
    import torchvision
    return torchvision.models.get_model(name, weights=None)


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def interleaved_ms(models, x, rounds, warmup=2):
    """{label: median ms} of one call of each model on x, the models taking turns call by call
    (the order alternating per round), after `warmup` calls each."""
    for _ in range(warmup):
        for model in models.values():
            model(x)
    times = {label: [] for label in models}
    order = list(models)
    for i in range(rounds):
        for label in (order if i % 2 == 0 else order[::-1]):
            _sync(x.device)
            start = time.perf_counter()
            models[label](x)
            _sync(x.device)
            times[label].append((time.perf_counter() - start) * 1e3)
    return {label: statistics.median(t) for label, t in times.items()}


def check(name, source="timm", backend="auto", batch=4, size=224, device="cpu",
          memory_format="channels_last", rounds=15):
    """{measure: value} of MODEL against its converted copy (see the module docstring)."""
    device = torch.device(device)
    fmt = MEMORY_FORMATS[memory_format]
    original = build(name, source).to(device)
    converted = convert_model(copy.deepcopy(original), backend=backend)
    x = torch.randn(batch, 3, size, size, device=device).contiguous(memory_format=fmt)
    results = {}
    outputs = []
    for model in (original, converted):
        model.train()
        torch.manual_seed(0)
        out = model(x)
        out.square().mean().backward()
        outputs.append((out.detach(), {n: p.grad for n, p in model.named_parameters()}))
    results["train output"] = rel_error(outputs[1][0], outputs[0][0])
    results["train worst gradient"] = max(
        rel_error(outputs[1][1][n], g) for n, g in outputs[0][1].items() if g is not None)
    with torch.no_grad():
        original.eval()
        converted.eval()
        for model in (original, converted):
            model.to(memory_format=fmt)
        results["eval output"] = rel_error(converted(x), original(x))
        ms = interleaved_ms({"original": original, "converted": converted}, x, rounds)
    results["eval forward ms, original"] = ms["original"]
    results["eval forward ms, converted"] = ms["converted"]
    results["speed-up (original / converted)"] = ms["original"] / ms["converted"]
    return results


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m convnext_kernels",
                                     description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("check", help="convert MODEL and compare it with the original",
                       description="Convert MODEL, compare outputs and gradients with the "
                                   "original, and time both in eval mode.")
    p.add_argument("model", help="a ConvNeXt model name of the source, e.g. convnext_tiny")
    p.add_argument("--source", choices=("timm", "torchvision"), default="timm",
                   help="the library that builds MODEL (default: timm)")
    p.add_argument("--backend", default="auto",
                   help="the kernels the converted model runs: auto (default), cpp, triton, "
                        "cuda or torch")
    p.add_argument("--batch", type=int, default=4, help="images per call (default: 4)")
    p.add_argument("--size", type=int, default=224, help="image height and width (default: 224)")
    p.add_argument("--memory-format", choices=sorted(MEMORY_FORMATS), default="channels_last",
                   help="the input's memory format (default: channels_last, the fast path)")
    p.add_argument("--rounds", type=int, default=15,
                   help="timed calls of each model, interleaved (default: 15)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                   help="cpu or cuda (default: cuda when there is one)")
    args = parser.parse_args(argv)
    try:
        results = check(args.model, args.source, args.backend, args.batch, args.size,
                        args.device, args.memory_format, args.rounds)
    except LookupError as error:
        print(error, file=sys.stderr)
        return 2
    print(f"{args.model} ({args.source}), backend {args.backend}, on {args.device}")
    for key, value in results.items():
        print(f"  {key:34s} {value:.3g}")
    print(f"  timed: eval forward, batch {args.batch}, {args.size} px, {args.memory_format}, "
          f"median of {args.rounds} interleaved rounds, {torch.get_num_threads()} threads")
    errors = [v for k, v in results.items() if "output" in k or "gradient" in k]
    ok = max(errors) <= TOLERANCE
    print("OK" if ok else f"FAILED: an error exceeds {TOLERANCE:g}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
