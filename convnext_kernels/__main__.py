"""python -m convnext_kernels check MODEL [--source timm|torchvision] [--backend B]
                                          [--batch N] [--size PX] [--device D]

Builds MODEL (random weights), converts a copy, runs both on the same random input in train mode
(same drop-path draws; output and every parameter gradient) and in eval mode, and prints the
largest errors and the converted/original time ratio of an eval forward, timed in this run.
Exits 1 when an error exceeds the tolerance (fp32: 1e-4 relative to the largest value)."""
import argparse
import copy
import statistics
import sys
import time

import torch

from . import convert_model
from .testing import rel_error

TOLERANCE = 1e-4  # a whole model's fp32 output after ~50 layers: looser than one op's 1e-5


def build(name, source):
    if source == "timm":
        import timm
        return timm.create_model(name, pretrained=False)
    import torchvision
    return torchvision.models.get_model(name, weights=None)


def _median_ms(fn, x, reps=5):
    fn(x)
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn(x)
        if x.device.type == "cuda":
            torch.cuda.synchronize()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def check(name, source="timm", backend="auto", batch=2, size=224, device="cpu"):
    """{measure: value} of MODEL against its converted copy (see the module docstring)."""
    original = build(name, source).to(device)
    converted = convert_model(copy.deepcopy(original), backend=backend)
    x = torch.randn(batch, 3, size, size, device=device)
    results = {}
    for model in (original, converted):
        model.train()
    outputs = []
    for model in (original, converted):
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
        results["eval output"] = rel_error(converted(x), original(x))
        ms = {label: _median_ms(model, x) for label, model in (("original", original),
                                                               ("converted", converted))}
    results["eval forward ms, original"] = ms["original"]
    results["eval forward ms, converted"] = ms["converted"]
    results["speed-up (original / converted)"] = ms["original"] / ms["converted"]
    return results


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m convnext_kernels",
                                     description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("check", help="convert MODEL and compare it with the original")
    p.add_argument("model")
    p.add_argument("--source", choices=("timm", "torchvision"), default="timm")
    p.add_argument("--backend", default="auto")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    results = check(args.model, args.source, args.backend, args.batch, args.size, args.device)
    print(f"{args.model} ({args.source}), backend {args.backend}, batch {args.batch}, "
          f"{args.size} px, {args.device}")
    for key, value in results.items():
        print(f"  {key:34s} {value:.3g}")
    errors = [v for k, v in results.items() if "output" in k or "gradient" in k]
    ok = max(errors) <= TOLERANCE
    print("OK" if ok else f"FAILED: an error exceeds {TOLERANCE:g}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
