"""Kernel report: every kernel of the project compiled for the H100 (sm_90) without a GPU, with
registers, spills, shared and local memory, an occupancy estimate (blocks per SM), the widest
global load/store and tensor-core use, read from the cubin's SASS.

Triton kernels: at every config their launchers use for the shapes below. CUDA kernels: every
instantiation the glue can launch (benchmarks/kernel_report_cuda.cu), with `nvcc -Xptxas -v`.

    python -m benchmarks.kernel_report     # writes benchmarks/results/kernel_report.{json,md}

Must run without TRITON_INTERPRET (the interpreter replaces compiled kernels).
"""
import argparse
import json
import os
import re
import shutil
import subprocess
import tempfile

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from convnext_kernels.triton import (dwconv, dwconv_layer_norm, grad_workspace, grn, layer_norm,
                                     mlp)

H100 = {"arch": 90, "regs_per_sm": 65536, "max_threads_per_sm": 2048, "smem_per_sm": 228 * 1024,
        "max_blocks_per_sm": 32}
_TRITON_TYPES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16",
                 torch.float64: "fp64", torch.int32: "i32", torch.int64: "i64"}
# ConvNeXt-T stages at batch 64 (N, C, H, W), plus odd shapes the kernels must also serve.
DWCONV_SHAPES = [(64, 96, 56, 56), (64, 192, 28, 28), (64, 384, 14, 14), (64, 768, 7, 7),
                 (2, 40, 13, 17)]
# LayerNorm adds the channel counts of other ConvNeXt sizes: 80 and 1408 (not powers of two),
# 1024 (B stage 4) and the 4096 limit.
LAYER_NORM_SHAPES = DWCONV_SHAPES + [(64, 80, 56, 56), (64, 1408, 7, 7), (64, 1024, 7, 7),
                                     (8, 4096, 7, 7)]

# MLP rows (M, C, H, rows per sample): ConvNeXt-T stages 1 and 4 at batch 64, an odd small C
# (the fused forward) and a wide odd one (1408, two GEMMs).
MLP_SHAPES = [(64 * 56 * 56, 96, 384, 56 * 56), (64 * 7 * 7, 768, 3072, 7 * 7),
              (30, 40, 160, 15), (98, 1408, 5632, 49)]
# GRN on the V2 hidden tensor (N, H, W, 4C): ConvNeXtV2-T stages 1 and 4, an odd one.
GRN_SHAPES = [(64, 56, 56, 384), (64, 7, 7, 3072), (2, 5, 7, 160)]
# The gradient workspace's finalize: (splits, columns) of the ConvNeXt-T block at stages 1 and 4
# (batch 64) and an odd small one.
FINALIZE_SHAPES = [(196, 75264), (4, 4733184), (1, 1234)]


def report_launches():
    """(op, dtype, shape, k, launch) for every launch configuration the project makes."""
    rows = []
    for dtype in (torch.bfloat16, torch.float16, torch.float32):
        for shape in DWCONV_SHAPES:
            for k in (3, 7, 31) if shape[1] == 40 else (7,):
                for launch in dwconv.launches(dtype, *shape, k):
                    rows.append(("dwconv2d", dtype, shape, k, launch))
                for launch in dwconv_layer_norm.launches(dtype, *shape, k):
                    rows.append(("dwconv_layer_norm", dtype, shape, k, launch))
        for shape in LAYER_NORM_SHAPES:
            for launch in layer_norm.launches(dtype, *shape):
                rows.append(("layer_norm_2d", dtype, shape, None, launch))
        for shape in MLP_SHAPES:
            for launch in mlp.launches(dtype, *shape):
                rows.append(("mlp", dtype, shape, None, launch))
        for shape in GRN_SHAPES:
            for launch in grn.launches(dtype, *shape):
                rows.append(("grn", dtype, shape, None, launch))
        for shape in FINALIZE_SHAPES:
            for launch in grad_workspace.launches(*shape, dtype):
                rows.append(("finalize", dtype, shape, None, launch))
    # Under autocast the block's kernels read fp32 parameters (and input) and compute in bf16.
    for shape in DWCONV_SHAPES[:4]:
        for launch in dwconv_layer_norm.launches(torch.bfloat16, *shape, 7,
                                                 weight_dtype=torch.float32):
            rows.append(("dwconv_layer_norm autocast", torch.bfloat16, shape, 7, launch))
    for shape in MLP_SHAPES[:2]:
        for launch in mlp.launches(torch.bfloat16, *shape, weight_dtype=torch.float32):
            rows.append(("mlp autocast", torch.bfloat16, shape, None, launch))
    return rows


def _signature(launch):
    """Triton signature, constexprs and divisibility attributes of a launch, as the JIT would
    specialise them: pointers and ints divisible by 16 get tt.divisibility = 16, ints equal to 1
    (unit strides) become constants."""
    fn = launch.kernel
    signature, attrs, constexprs = {}, {}, dict(launch.constexprs)
    args = iter(launch.args)
    for index, name in enumerate(fn.arg_names):
        if name in launch.constexprs:
            signature[name] = "constexpr"
            continue
        value = next(args)
        if isinstance(value, torch.Tensor):
            signature[name] = "*" + _TRITON_TYPES[value.dtype]
            aligned = True  # torch allocations are 256-byte aligned
        elif isinstance(value, float):
            signature[name] = "fp32"
            aligned = False
        elif value == 1:
            signature[name] = "constexpr"
            constexprs[name] = 1
            continue
        else:
            signature[name] = "i32" if -2**31 <= value < 2**31 else "i64"
            aligned = value % 16 == 0
        if aligned:
            attrs[(index,)] = [["tt.divisibility", 16]]
    return signature, attrs, constexprs


def compile_for_sm90(launch):
    if not isinstance(launch.kernel, triton.runtime.jit.JITFunction):
        raise RuntimeError("kernel report: unset TRITON_INTERPRET (the interpreter is active)")
    signature, attrs, constexprs = _signature(launch)
    source = ASTSource(launch.kernel, signature, constexprs=constexprs, attrs=attrs)
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

    return sass_stats(sass, fields)


def _access_bytes(modifiers):
    """Bytes of one LDG/STG from its modifiers: .128 / .64 vectors, .U16 / .S8 sub-words."""
    for mod in modifiers:
        if mod in ("128", "64"):
            return int(mod) // 8
        match = re.fullmatch(r"[US](8|16)", mod)
        if match:
            return int(match.group(1)) // 8
    return 4


def sass_stats(sass, fields):
    def widest(op):
        accesses = re.findall(rf"\b{op}((?:\.[A-Z0-9]+)*)", sass)
        return max((_access_bytes(m.split(".")[1:]) for m in accesses), default=0)

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


def nvcc_path():
    home = os.environ.get("CUDA_HOME", "/usr/local/cuda")
    path = os.path.join(home, "bin", "nvcc")
    return path if os.path.exists(path) else shutil.which("nvcc")


def _demangle(names):
    tool = shutil.which("cu++filt") or shutil.which("c++filt")
    if tool is None:
        return {n: n for n in names}
    out = subprocess.run([tool], input="\n".join(names), capture_output=True, text=True,
                         check=True).stdout.splitlines()
    return dict(zip(names, out))


_CUDA_TYPES = {"float": "float32", "__half": "float16", "__nv_bfloat16": "bfloat16"}


def _cuda_op(kernel):
    name = kernel.split("::")[-1]
    for prefix, op in (("dwconv_layer_norm", "dwconv_layer_norm"), ("dwconv", "dwconv2d"),
                       ("layer_norm", "layer_norm_2d")):
        if name.startswith(prefix):
            return op
    return "(shared)"


def _split_template(pretty):
    """'void ns::kernel<a, b>(args)' -> ('ns::kernel', ['a', 'b'])."""
    signature = pretty.split("(")[0].removeprefix("void ").strip()
    match = re.fullmatch(r"([^<]+)(?:<(.*)>)?", signature)
    args = [a.strip() for a in match.group(2).split(",")] if match.group(2) else []
    return match.group(1), args


def cuda_rows():
    """One row per CUDA kernel instantiation, or [] when there is no nvcc."""
    nvcc = nvcc_path()
    if nvcc is None:
        return []
    source = os.path.join(os.path.dirname(os.path.abspath(__file__)), "kernel_report_cuda.cu")
    with tempfile.TemporaryDirectory() as tmp:
        cubin, ptx = os.path.join(tmp, "k.cubin"), os.path.join(tmp, "k.ptx")
        flags = ["-arch=sm_90a", "-O3", "-std=c++17"]
        log = subprocess.run([nvcc, "-cubin", *flags, "-Xptxas", "-v", source, "-o", cubin],
                             capture_output=True, text=True, check=True).stderr
        subprocess.run([nvcc, "-ptx", *flags, source, "-o", ptx], check=True)
        ptx_text = open(ptx).read()
        sass = subprocess.run([_cuobjdump(), "--dump-sass", cubin], capture_output=True,
                              text=True, check=True).stdout
    threads = {name: int(n) for name, n in
               re.findall(r"\.entry (\S+)\((?:[^)]*)\)\s*\.maxntid (\d+)", ptx_text)}
    ptxas = {}
    for name, body in re.findall(r"Compiling entry function '(\S+)' for 'sm_90a'"
                                 r"(.*?)(?=Compiling entry|\Z)",
                                 log, re.S):
        regs = re.search(r"Used (\d+) registers", body)
        spill = re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores", body)
        smem = re.search(r"(\d+) bytes smem", body)
        ptxas[name] = {"REG": int(regs.group(1)), "STACK": int(spill.group(1)),
                       "SPILL": int(spill.group(2)), "SHARED": int(smem.group(1)) if smem else 0}
    sass_by_name = dict(re.findall(r"Function : (\S+)\n(.*?)(?=\n\s*Function : |\Z)", sass, re.S))
    pretty = _demangle(sorted(ptxas))
    rows = []
    for name, info in sorted(ptxas.items()):
        stats = sass_stats(sass_by_name.get(name, ""), {"REG": info["REG"], "STACK": info["STACK"],
                                                        "SHARED": info["SHARED"]})
        stats["spill_stores"] = max(stats["spill_stores"], info["SPILL"])
        block = threads.get(name, 1024)
        kernel, template_args = _split_template(pretty[name])
        rows.append({
            "op": _cuda_op(kernel), "kernel": kernel,
            "dtype": _CUDA_TYPES.get(next(iter(template_args), ""), ""),
            "shape": [], "k": None, "source": "cuda", "template_args": ", ".join(template_args),
            "config": {"threads": block}, "ptx_wgmma": False, **stats,
            "blocks_per_sm": blocks_per_sm(stats["registers"], stats["shared_bytes"], block),
        })
    return rows


def build_report():
    rows = []
    for op, dtype, shape, k, launch in report_launches():
        compiled = compile_for_sm90(launch)
        stats = cubin_stats(compiled.asm["cubin"])
        threads = 32 * launch.options["num_warps"]
        stats["shared_bytes"] = max(stats["shared_bytes"], compiled.metadata.shared)
        rows.append({
            "op": op, "kernel": launch.name, "dtype": str(dtype).replace("torch.", ""),
            "shape": list(shape), "k": k, "source": "triton", "template_args": "",
            "config": {key: val for key, val in launch.constexprs.items()
                       if key.isupper() and key not in ("INTERPRETED",)} | launch.options,
            "ptx_wgmma": "wgmma" in compiled.asm["ptx"],
            **stats,
            "blocks_per_sm": blocks_per_sm(stats["registers"], stats["shared_bytes"], threads),
        })
    return rows + cuda_rows()


def write_markdown(rows, path):
    head = ["source", "op", "kernel", "dtype", "shape", "k", "registers", "spill_stores",
            "shared_bytes",
            "blocks_per_sm", "widest_load_bytes", "widest_store_bytes", "tensor_core"]
    lines = ["# Kernel report: every kernel compiled for sm_90 (no GPU needed)", "",
             f"triton {triton.__version__}, torch {torch.__version__}", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        cells = [str(row[h]) for h in head]
        if row["source"] == "cuda":
            cells[head.index("kernel")] += f"<{row['template_args']}>"
        lines.append("| " + " | ".join(cells) + " |")
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
