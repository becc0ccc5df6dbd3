"""Kernel report: every Triton kernel of the project compiled for the H100 (sm_90) without a GPU,
at the configs its launchers use, with registers, spills, shared and local memory, an occupancy
estimate, the widest global load/store and tensor-core use, read from the cubin's SASS.

    python -m benchmarks.kernel_report            # writes benchmarks/results/kernel_report.{json,md}

Must run without TRITON_INTERPRET (the interpreter replaces compiled kernels).
"""
import argparse
import json
import os
import re
import subprocess
import tempfile

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from convnext_kernels.triton import dwconv

H100 = {"arch": 90, "regs_per_sm": 65536, "max_threads_per_sm": 2048, "smem_per_sm": 228 * 1024,
        "max_blocks_per_sm": 32}
_TRITON_TYPES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16",
                 torch.float64: "fp64", torch.int32: "i32", torch.int64: "i64"}
# ConvNeXt-T stages at batch 64 (N, C, H, W), plus odd shapes the kernels must also serve.
DWCONV_SHAPES = [(64, 96, 56, 56), (64, 192, 28, 28), (64, 384, 14, 14), (64, 768, 7, 7),
                 (2, 40, 13, 17)]


def report_launches():
    """(op, dtype, shape, k, launch) for every launch configuration the project makes."""
    rows = []
    for dtype in (torch.bfloat16, torch.float16, torch.float32):
        for shape in DWCONV_SHAPES:
            for k in (3, 7, 31) if shape[1] == 40 else (7,):
                for launch in dwconv.launches(dtype, *shape, k):
                    rows.append(("dwconv2d", dtype, shape, k, launch))
    return rows


def _signature(launch):
    """Triton signature, constexprs and divisibility attributes of a launch, as the JIT would
    specialise them (pointers and ints divisible by 16 get tt.divisibility = 16)."""
    fn = launch.kernel
    signature, attrs = {}, {}
    args = iter(launch.args)
    for index, name in enumerate(fn.arg_names):
        if name in launch.constexprs:
            signature[name] = "constexpr"
            continue
        value = next(args)
        if isinstance(value, torch.Tensor):
            signature[name] = "*" + _TRITON_TYPES[value.dtype]
            aligned = True  # torch allocations are 256-byte aligned
        else:
            signature[name] = "i32" if -2**31 <= value < 2**31 else "i64"
            aligned = value % 16 == 0
        if aligned:
            attrs[(index,)] = [["tt.divisibility", 16]]
    return signature, attrs


def compile_for_sm90(launch):
    if not isinstance(launch.kernel, triton.runtime.jit.JITFunction):
        raise RuntimeError("kernel report: unset TRITON_INTERPRET (the interpreter is active)")
    signature, attrs = _signature(launch)
    source = ASTSource(launch.kernel, signature, constexprs=launch.constexprs, attrs=attrs)
    return triton.compile(source, target=GPUTarget("cuda", H100["arch"], 32),
                          options=launch.options)


def _cuobjdump():
    return os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")


def cubin_stats(cubin):
    """Registers, stack, shared and local bytes, spill stores, widest load/store and
    tensor-core instructions, from cuobjdump on the cubin."""
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        usage = subprocess.run([_cuobjdump(), "--dump-resource-usage", f.name],
                               capture_output=True, text=True, check=True).stdout
        sass = subprocess.run([_cuobjdump(), "--dump-sass", f.name],
                              capture_output=True, text=True, check=True).stdout
    fields = {key: int(val) for key, val in re.findall(r"\b(REG|STACK|SHARED|LOCAL):(\d+)", usage)}

    def widest(op):
        widths = [int(w) if w else 32 for w in re.findall(rf"\b{op}\.E(?:\.[A-Z]+)*?(?:\.(\d+))?\b", sass)]
        return max(widths, default=0) // 8

    return {
        "registers": fields.get("REG", 0),
        "stack_bytes": fields.get("STACK", 0),
        "shared_bytes": fields.get("SHARED", 0),
        "local_bytes": fields.get("LOCAL", 0),
        "spill_stores": len(re.findall(r"\bSTL\b", sass)),
        "widest_load_bytes": widest("LDG"),
        "widest_store_bytes": widest("STG"),
        "tensor_core": bool(re.search(r"\b(HGMMA|HMMA|WGMMA)\b", sass)),
    }


def blocks_per_sm(registers, shared_bytes, threads):
    by_regs = H100["regs_per_sm"] // max(1, registers * threads)
    by_threads = H100["max_threads_per_sm"] // threads
    by_smem = H100["smem_per_sm"] // shared_bytes if shared_bytes else H100["max_blocks_per_sm"]
    return min(by_regs, by_threads, by_smem, H100["max_blocks_per_sm"])


def build_report():
    rows = []
    for op, dtype, shape, k, launch in report_launches():
        compiled = compile_for_sm90(launch)
        stats = cubin_stats(compiled.asm["cubin"])
        threads = 32 * launch.options["num_warps"]
        stats["shared_bytes"] = max(stats["shared_bytes"], compiled.metadata.shared)
        rows.append({
            "op": op, "kernel": launch.name, "dtype": str(dtype).replace("torch.", ""),
            "shape": list(shape), "k": k,
            "config": {key: val for key, val in launch.constexprs.items()
                       if key.isupper() and key not in ("INTERPRETED",)} | launch.options,
            "ptx_wgmma": "wgmma" in compiled.asm["ptx"],
            **stats,
            "blocks_per_sm": blocks_per_sm(stats["registers"], stats["shared_bytes"], threads),
        })
    return rows


def write_markdown(rows, path):
    head = ["op", "kernel", "dtype", "shape", "k", "registers", "spill_stores", "shared_bytes",
            "blocks_per_sm", "widest_load_bytes", "widest_store_bytes", "tensor_core"]
    lines = ["# Kernel report: Triton kernels compiled for sm_90 (no GPU needed)", "",
             f"triton {triton.__version__}, torch {torch.__version__}", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        lines.append("| " + " | ".join(str(row[h]) for h in head) + " |")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.path.join("benchmarks", "results"))
    args = parser.parse_args()
    rows = build_report()
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "kernel_report.json"), "w") as f:
        json.dump({"triton": triton.__version__, "torch": torch.__version__, "kernels": rows}, f,
                  indent=1)
    write_markdown(rows, os.path.join(args.out, "kernel_report.md"))
    print(open(os.path.join(args.out, "kernel_report.md")).read())


if __name__ == "__main__":
    main()
