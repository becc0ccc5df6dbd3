"""The numbers tables of README.md and docs/PERFORMANCE.md, made from the committed results they
cite, so that a figure lives in its results file and nowhere else by hand.

    python -m benchmarks.tables           # prints every table
    python -m benchmarks.tables --write   # rewrites the tables in README.md and PERFORMANCE.md

In a document a table sits between `<!-- table NAME -->` and `<!-- /table -->`; the source it is
made from is named under it. tests/test_docs.py fails when a document's table differs from what
its results give, or names a results path that does not exist.
"""
import argparse
import json
import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join("benchmarks", "results")
DOCUMENTS = ("README.md", os.path.join("docs", "PERFORMANCE.md"))

# The runs the documents cite, one of each kind (benchmarks/results/README.md).
SOURCES = {
    "cpu-model": os.path.join(RESULTS, "cpu-x86-64-2-threads-2026-12-04", "results.json"),
    "cpu-profile": os.path.join(RESULTS, "cpu-x86-64-2-threads-2026-12-04",
                                "profile-cpu-2026-12-04.json"),
    "cpu-dwconv": os.path.join(RESULTS, "cpu-ops-2026-12-04", "dwconv-cpu-x86-64-2-threads.json"),
    "cpu-layer-norm": os.path.join(RESULTS, "cpu-ops-2026-12-04",
                                   "layernorm-cpu-x86-64-2-threads.json"),
    "cpu-mlp": os.path.join(RESULTS, "cpu-ops-2026-12-04", "mlp-cpu-x86-64-2-threads.json"),
    "ledger": os.path.join(RESULTS, "ledger-cpu-2026-12-06", "ledger.json"),
}


def _load(name):
    with open(os.path.join(ROOT, SOURCES[name])) as f:
        return json.load(f)


def _rows(data, **match):
    return [r for r in data["rows"] if all(r.get(k) == v for k, v in match.items())]


def _one(data, **match):
    (row,) = _rows(data, **match)
    return row


def _table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return lines


def _x(value):
    return f"{value:.2f}×"


def _ms(value):
    return f"{value:.0f}" if value >= 100 else f"{value:.3g}"


def cpu_model():
    """timm's convnext_tiny on the CPU: eager channels_last, torch.compile and ours, per
    setting."""
    data = _load("cpu-model")
    rows = []
    for case in dict.fromkeys(r["case"] for r in data["rows"]):
        by = {r["provider"]: r for r in _rows(data, case=case)}
        eager, compiled, ours = (by["eager channels_last"], by["compile default"], by["ours"])
        packed = by.get("ours prepacked")
        best = min((r for r in (ours, packed) if r), key=lambda r: r["median_ms"])
        rows.append([case.replace("convnext_tiny fp32 ", "").replace(" 224px", "")
                     .replace("ConvNeXt-tiny ", ""),
                     _ms(eager["median_ms"]), _ms(compiled["median_ms"]), _ms(ours["median_ms"]),
                     _ms(packed["median_ms"]) if packed else "–",
                     _x(eager["median_ms"] / best["median_ms"]),
                     _x(compiled["median_ms"] / best["median_ms"])])
    env = data["env"]
    return _table(["timm convnext_tiny, fp32, 224 px", "eager ms", "compile ms", "ours ms",
                   "ours prepacked ms", "ours × eager", "ours × compile"], rows), \
        f"{_machine(env)}, 2 threads, torch {env['torch']}"


def _machine(env):
    """The CPU a run was made on, as its results name it."""
    return f"{env.get('cpu_model') or env['device']}, {env['date']}"


def _stages(data, op, dtype):
    return list(dict.fromkeys(r["stage"] for r in _rows(data, op=op, dtype=dtype)))


def cpu_dwconv():
    """The cpp dwconv against oneDNN (eager channels_last) per ConvNeXt-T stage, batch 8."""
    data = _load("cpu-dwconv")
    rows = []
    for stage in _stages(data, "dwconv2d", "float32"):
        def ms(provider, pass_name):
            return _one(data, stage=stage, provider=provider, **{"pass": pass_name})["median_ms"]
        rows.append([_one(data, stage=stage, provider="ours cpp", **{"pass": "fwd"})["case"],
                     _ms(ms("ours cpp", "fwd")), _ms(ms("eager channels_last", "fwd")),
                     _x(ms("eager channels_last", "fwd") / ms("ours cpp", "fwd")),
                     _x(ms("eager channels_last", "fwd+bwd") / ms("ours cpp", "fwd+bwd"))])
    env = data["env"]
    return _table(["dwconv 7×7, fp32, batch 8", "ours fwd ms", "oneDNN fwd ms", "fwd ×",
                   "fwd+bwd ×"], rows), _machine(env)


def cpu_layer_norm():
    """The cpp LayerNorm and dwconv+LayerNorm against eager channels_last, fwd+bwd, batch 8."""
    data = _load("cpu-layer-norm")
    rows = []
    for stage in _stages(data, "layer_norm_2d", "float32"):
        cells = [stage]
        for op in ("layer_norm_2d", "dwconv_layer_norm"):
            for dtype in ("float32", "bfloat16"):
                ours = _one(data, op=op, stage=stage, dtype=dtype, provider="ours cpp",
                            **{"pass": "fwd+bwd"})
                cells.append(_x(ours["speedup_vs_eager_channels_last"]))
        rows.append(cells)
    env = data["env"]
    return _table(["stage, batch 8, fwd+bwd", "LayerNorm fp32", "LayerNorm bf16",
                   "dwconv+LN fp32", "dwconv+LN bf16"], rows), _machine(env)


def cpu_mlp():
    """The cpp MLP against eager (Linear, GELU, Linear, scale, residual), batch 8."""
    data = _load("cpu-mlp")
    rows = []
    for stage in _stages(data, "mlp", "float32"):
        cells = [stage]
        for pass_name in ("fwd", "fwd+bwd"):
            ours = _one(data, stage=stage, provider="ours cpp", **{"pass": pass_name})
            cells.append(_x(ours["speedup_vs_eager"]))
        rows.append(cells)
    env = data["env"]
    return _table(["MLP, fp32, batch 8", "fwd × eager", "fwd+bwd × eager"], rows), \
        _machine(env)


def ledger():
    """Launches and bytes of one block fwd+bwd at batch 64, bf16 (ledger counts)."""
    data = _load("ledger")
    rows = []
    for entry in data:
        if entry["dtype"] != "bf16":
            continue
        rows.append([f"T{entry['stage']} {entry['variant']}", entry["ours"]["launches"],
                     entry["eager"]["launches"], f"{entry['ours']['bytes'] / 1e6:.0f}",
                     f"{entry['eager']['bytes'] / 1e6:.0f}", f"{entry['ideal_bytes'] / 1e6:.0f}"])
    return _table(["block fwd+bwd, bf16, batch 64", "launches ours", "launches eager",
                   "MB ours", "MB eager", "MB ideal"], rows), "counts, not timings"


def cpu_profile():
    """Where the CPU model's inference time goes: the GEMMs and strided convs (the same library
    calls in eager, compile and ours) against the rest."""
    data = _load("cpu-profile")
    rows = [[r["batch"], r["provider"], f"{r['total_ms']:.1f}", f"{r['gemm_ms']:.1f}",
             f"{r['strided_conv_ms']:.1f}", f"{r['rest_ms']:.1f}",
             f"{100 * (r['gemm_ms'] + r['strided_conv_ms']) / r['total_ms']:.0f} %"]
            for r in data["rows"]]
    env = data["env"]
    return _table(["batch", "provider", "total ms", "GEMMs ms", "strided convs ms", "rest ms",
                   "GEMMs + convs"], rows), \
        f"{env['device']}, {env['date']}; torch.profiler self time, a profile, not a timing"


def gpu_model():
    """The ledger's model of one block forward+backward at an H200's ceilings, against the
    floor."""
    data = _load("ledger")
    rows = []
    for entry in data:
        m = entry.get("model")
        if m is None:
            continue
        rows.append([f"T{entry['stage']} {entry['variant']}", entry["dtype"],
                     f"{m['ours_ms']:.3f}", f"{m['eager_ms']:.3f}", f"{m['floor_ms']:.3f}",
                     _x(m["ours_ms"] / m["floor_ms"]), _x(m["eager_ms"] / m["floor_ms"]),
                     f"{entry['ours']['bytes'] / entry['eager']['bytes']:.2f}",
                     f"{entry['ours']['bytes'] / entry['ideal_bytes']:.2f}"])
    c = data[0]["model"]["ceilings"] if data and "model" in data[0] else {}
    setting = (f"a MODEL at {c.get('bandwidth_GBps', 0):g} GB/s, {c.get('tensor_TFLOPs', 0):g} "
               f"TFLOP/s tensor, {c.get('fma_TFLOPs', 0):g} TFLOP/s FMA, "
               f"{c.get('launch_us', 0):g} us a launch; not a measurement")
    return _table(["block, batch 64", "dtype", "model ms ours", "model ms eager", "floor ms",
                   "ours / floor", "eager / floor", "bytes ours / eager", "bytes ours / ideal"],
                  rows), setting


# Tables made from another table's source.
TABLE_SOURCES = {"gpu-model": "ledger"}

TABLES = {"cpu-model": cpu_model, "cpu-profile": cpu_profile, "gpu-model": gpu_model,
          "cpu-dwconv": cpu_dwconv, "cpu-layer-norm": cpu_layer_norm, "cpu-mlp": cpu_mlp,
          "ledger": ledger}


def render(name):
    """The table `name` as it stands in a document, with the line naming its source."""
    lines, setting = TABLES[name]()
    source = SOURCES[TABLE_SOURCES.get(name, name)]
    return "\n".join(lines + ["", f"From `{source}` ({setting})."])


BLOCK = re.compile(r"<!-- table (\S+) -->\n(.*?)<!-- /table -->", re.S)


def tables_in(text):
    """{name: body} of the tables a document holds."""
    return {m.group(1): m.group(2).rstrip("\n") for m in BLOCK.finditer(text)}


def rewrite(text):
    return BLOCK.sub(lambda m: f"<!-- table {m.group(1)} -->\n{render(m.group(1))}\n"
                               "<!-- /table -->", text)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help="rewrite the documents' tables")
    args = parser.parse_args(argv)
    if not args.write:
        for name in TABLES:
            print(f"<!-- table {name} -->\n{render(name)}\n<!-- /table -->\n")
        return
    for document in DOCUMENTS:
        path = os.path.join(ROOT, document)
        with open(path) as f:
            text = rewrite(f.read())  # (made in full before the file is opened to write)
        with open(path, "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
