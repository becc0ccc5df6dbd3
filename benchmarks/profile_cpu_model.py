"""Where a converted ConvNeXt's CPU inference time goes, and what that bounds.

    python -m benchmarks.profile_cpu_model [--batch 1 4 32] [--calls 3] [--out DIR]

Profiles timm's convnext_tiny at 224 px under `torch.profiler`, eager channels_last and
converted by `ck.convert_model` (backend auto, the same weights), without and with
`ck.prepack_weights`, inference in fp32, and splits each one's self CPU time into the pointwise
GEMMs (`aten::addmm`, `aten::mm`: MKL's, the same calls in eager, torch.compile and ours; with
prepacked weights oneDNN's `mkldnn::_linear_pointwise`, GELU in fc1's epilogue), the strided stem
and downsampling convolutions (`aten::mkldnn_convolution`, oneDNN's in all three; prepacked,
`mkldnn::_convolution_pointwise`) and the rest: the dwconv, the LayerNorms, GELU, layer scale,
residuals and copies, which is all a kernel library can make faster. The
bound it writes: eager's time over its GEMM and strided-conv time, the speed-up over eager of a
model whose every other op took no time. Writes DIR/profile-<device>-<date>.md and .json; a
profile, not a timing (the profiler adds its own cost to every op call).
"""
import argparse
import copy
import datetime
import json
import os

import torch

import convnext_kernels as ck
from benchmarks import bench_model

GEMMS = ("aten::addmm", "aten::mm", "mkldnn::_linear_pointwise")
CONVS = ("aten::mkldnn_convolution", "mkldnn::_convolution_pointwise")


def _is_depthwise(event):
    """A convolution whose weight is [C, 1, k, k]: eager's dwconv (part of the rest), not the stem
    or a downsampling conv."""
    shapes = event.input_shapes
    return len(shapes) > 1 and len(shapes[1]) == 4 and shapes[1][1] == 1


def _models(size):
    models = bench_model.timm_models(f"convnext_{size}")
    models = {name: models[key].eval().to(memory_format=torch.channels_last)
              for name, key in (("eager channels_last", "plain"), ("ours", "ours"))}
    models[bench_model.PREPACKED] = ck.prepack_weights(copy.deepcopy(models["ours"]))
    return models


def profile(model, x, calls):
    """(total, gemm, strided conv) self CPU ms per call over `calls` profiled calls, and the GEMM
    and strided-conv op calls per model call (what the split counted, whatever their times)."""
    with torch.no_grad():
        for _ in range(2):
            model(x)
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU],
                                    record_shapes=True) as prof:
            for _ in range(calls):
                model(x)
    events = prof.key_averages(group_by_input_shape=True)
    total = sum(e.self_cpu_time_total for e in events) / 1e3 / calls
    gemm = sum(e.self_cpu_time_total for e in events if e.key in GEMMS) / 1e3 / calls
    strided = [e for e in events if e.key in CONVS and not _is_depthwise(e)]
    convs = sum(e.self_cpu_time_total for e in strided) / 1e3 / calls
    gemm_calls = sum(e.count for e in events if e.key in GEMMS) / calls
    conv_calls = sum(e.count for e in strided) / calls
    return total, gemm, convs, gemm_calls, conv_calls


def run(batches, calls, size="tiny", px=224):
    models = _models(size)
    rows = []
    for batch in batches:
        x = torch.randn(batch, 3, px, px).contiguous(memory_format=torch.channels_last)
        measured = {name: profile(m, x, calls) for name, m in models.items()}
        eager_total = measured["eager channels_last"][0]
        for name, (total, gemm, convs, gemm_calls, conv_calls) in measured.items():
            rows.append(dict(model=f"convnext_{size}", batch=batch, provider=name,
                             total_ms=total, gemm_ms=gemm, strided_conv_ms=convs,
                             rest_ms=total - gemm - convs, gemm_calls=gemm_calls,
                             strided_conv_calls=conv_calls,
                             bound_vs_eager=eager_total / (gemm + convs)))
    return rows


def to_markdown(rows, env):
    lines = [f"# Where CPU inference time goes ({env['device']})", "",
             f"{env['date']}; torch {env['torch']}; {env['threads']} threads; self CPU ms per "
             "call under torch.profiler (a profile, not a timing). bound: eager's total over "
             "this provider's GEMM + strided-conv time, the most any kernel library could gain "
             "with those calls unchanged.", "",
             "| model | batch | provider | total ms | GEMMs ms | strided convs ms | rest ms | "
             "GEMM + conv share | bound vs eager |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        share = (r["gemm_ms"] + r["strided_conv_ms"]) / r["total_ms"]
        lines.append(f"| {r['model']} | {r['batch']} | {r['provider']} | {r['total_ms']:.1f} | "
                     f"{r['gemm_ms']:.1f} | {r['strided_conv_ms']:.1f} | {r['rest_ms']:.1f} | "
                     f"{share:.0%} | {r['bound_vs_eager']:.2f} |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, nargs="+", default=[1, 4, 32])
    p.add_argument("--calls", type=int, default=3)
    p.add_argument("--out", default=os.path.join("benchmarks", "results"))
    args = p.parse_args(argv)
    env = dict(device=f"CPU ({os.uname().machine}, {torch.get_num_threads()} threads)",
               date=datetime.date.today().isoformat(), torch=torch.__version__,
               threads=torch.get_num_threads())
    rows = run(args.batch, args.calls)
    os.makedirs(args.out, exist_ok=True)
    stem = os.path.join(args.out, f"profile-cpu-{env['date']}")
    with open(stem + ".json", "w") as f:
        json.dump(dict(env=env, rows=rows), f, indent=1)
    with open(stem + ".md", "w") as f:
        f.write(to_markdown(rows, env))
    print(to_markdown(rows, env))


if __name__ == "__main__":
    main()
