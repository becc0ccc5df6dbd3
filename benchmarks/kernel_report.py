"""Kernel report: every kernel of the project compiled for Hopper (sm_90) without a GPU, with
registers, spills, shared and local memory, an occupancy estimate (blocks per SM), the widest
global load/store and tensor-core use, read from the cubin's SASS.

Triton kernels: every distinct launch their launchers make, found by running the launchers
themselves (forward and backward of every op and of the whole block, at the shapes below) on meta
tensors with the launches recorded and not run: what is compiled is what the project launches.
CUDA kernels: every instantiation the glue can launch (benchmarks/kernel_report_cuda.cu), with
`nvcc -Xptxas -v`.

    python -m benchmarks.kernel_report     # writes benchmarks/results/kernel_report.{json,md}

Must run without TRITON_INTERPRET (the interpreter replaces compiled kernels).
"""
import argparse
import json
import multiprocessing
import os
import re
import shutil
import subprocess
import tempfile
from concurrent.futures import ProcessPoolExecutor
from functools import partial

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from convnext_kernels.triton import (dwconv, dwconv_layer_norm, grn, layer_norm, mlp,
                                     whole_block)
from convnext_kernels.triton.common import recorded_launches

SM90 = {"arch": 90, "regs_per_sm": 65536, "max_threads_per_sm": 2048, "smem_per_sm": 228 * 1024,
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
# The whole block (V1 and V2): the ConvNeXt-T stages and the odd shape.
BLOCK_SHAPES = DWCONV_SHAPES


def _meta(*shape, dtype, channels_last=False):
    t = torch.empty(*shape, dtype=dtype, device="meta")
    return t.contiguous(memory_format=torch.channels_last) if channels_last else t


def _dwconv_calls(dtype, shape, k):
    C = shape[1]
    x, w, b = _meta(*shape, dtype=dtype, channels_last=True), _meta(C, 1, k, k, dtype=dtype), \
        _meta(C, dtype=dtype)
    dwconv.dwconv2d_forward(x, w, b)
    dwconv.dwconv2d_input_grad(x, w)
    dwconv.dwconv2d_backward_weight(x, x, w)


def _dwconv_layer_norm_calls(dtype, shape, k):
    C = shape[1]
    x, b = _meta(*shape, dtype=dtype, channels_last=True), _meta(C, dtype=dtype)
    for keep_conv in (True, False):  # training; inference (the conv output not written)
        dwconv_layer_norm.dwconv_layer_norm_forward(x, _meta(C, 1, k, k, dtype=dtype), b, b, b,
                                                    1e-6, keep_conv=keep_conv)


def _layer_norm_calls(dtype, shape):
    C = shape[1]
    x, w = _meta(*shape, dtype=dtype, channels_last=True), _meta(C, dtype=dtype)
    _, mean, rstd = layer_norm.layer_norm_2d_forward(x, w, w, 1e-6)
    layer_norm.layer_norm_2d_backward(x, x, w, mean, rstd)


def _mlp_calls(dtype, shape):
    """Forward and backward of each form the ops use: V1 with layer scale, drop path and
    residual, and V2 with GRN, each with the hidden recomputed and kept."""
    M, C, H, rows_per_sample = shape
    x = _meta(M, C, dtype=dtype)
    fc1_w, fc1_b, fc2_w, c = (_meta(H, C, dtype=dtype), _meta(H, dtype=dtype),
                              _meta(C, H, dtype=dtype), _meta(C, dtype=dtype))
    drop = _meta(max(1, M // rows_per_sample), dtype=dtype)
    for keep_hidden in (False, True):
        _, hidden, y2, G, nx = mlp.mlp_forward(x, fc1_w, fc1_b, fc2_w, c, c, x, drop, None, None,
                                               rows_per_sample, 0.0, keep_hidden, True)
        mlp.mlp_backward(x, x, fc1_w, fc1_b, fc2_w, c, drop, None, None, hidden, y2, G, nx,
                         rows_per_sample, 0.0)
    grn_w = _meta(H, dtype=dtype)
    for keep_hidden in (False, True):
        _, hidden, y2, G, nx = mlp.mlp_forward(x, fc1_w, fc1_b, fc2_w, c, None, x, None, grn_w,
                                               grn_w, rows_per_sample, 1e-6, keep_hidden, False)
        mlp.mlp_backward(x, x, fc1_w, fc1_b, fc2_w, None, None, grn_w, grn_w, hidden, y2, G, nx,
                         rows_per_sample, 1e-6)


def _grn_calls(dtype, shape):
    x, w = _meta(*shape, dtype=dtype), _meta(shape[-1], dtype=dtype)
    _, G, nx = grn.grn_forward(x, w, w, 1e-6)
    grn.grn_backward(x, x, w, G, nx, 1e-6)


def _block_calls(dtype, shape, param_dtype):
    """The whole block, forward and backward, training with drop path: V1 with a learnable
    layer scale, V2 with GRN. param_dtype fp32 with dtype bf16: under autocast (kernels read
    fp32 and convert)."""
    C = shape[1]
    p = dict(dtype=param_dtype)
    x = _meta(*shape, channels_last=True, **p)
    dw_w, c, fc1_w, fc1_b, fc2_w = (_meta(C, 1, 7, 7, **p), _meta(C, **p), _meta(4 * C, C, **p),
                                    _meta(4 * C, **p), _meta(C, 4 * C, **p))
    drop = _meta(shape[0], dtype=torch.float32)
    out, y_rows, conv, mean, rstd, hidden, y2, G, nx = whole_block.block_forward(
        x, dw_w, c, c, c, fc1_w, fc1_b, fc2_w, c, c, None, None, drop, 1e-6, 0.0, dtype, True)
    whole_block.block_backward(out, x, dw_w, c, fc1_w, fc1_b, fc2_w, c, None, None, drop, y_rows,
                               conv, mean, rstd, hidden, y2, G, nx, 0.0,
                               whole_block.grad_shapes(dw_w, fc1_w, fc2_w, True))
    grn_w = _meta(4 * C, **p)
    out, y_rows, conv, mean, rstd, hidden, y2, G, nx = whole_block.block_forward(
        x, dw_w, c, c, c, fc1_w, fc1_b, fc2_w, c, None, grn_w, grn_w, drop, 1e-6, 1e-6, dtype,
        False)
    whole_block.block_backward(out, x, dw_w, c, fc1_w, fc1_b, fc2_w, None, grn_w, grn_w, drop,
                               y_rows, conv, mean, rstd, hidden, y2, G, nx, 1e-6,
                               whole_block.grad_shapes(dw_w, fc1_w, fc2_w, False, grn_w, grn_w))


def _calls():
    """(op, dtype, shape, k, call): the launcher calls whose launches the report compiles."""
    for dtype in (torch.bfloat16, torch.float16, torch.float32):
        for shape in DWCONV_SHAPES:
            for k in (3, 7, 31) if shape[1] == 40 else (7,):
                yield "dwconv2d", dtype, shape, k, partial(_dwconv_calls, dtype, shape, k)
                yield "dwconv_layer_norm", dtype, shape, k, \
                    partial(_dwconv_layer_norm_calls, dtype, shape, k)
        for shape in LAYER_NORM_SHAPES:
            yield "layer_norm_2d", dtype, shape, None, partial(_layer_norm_calls, dtype, shape)
        for shape in MLP_SHAPES:
            yield "mlp", dtype, shape, None, partial(_mlp_calls, dtype, shape)
        for shape in GRN_SHAPES:
            yield "grn", dtype, shape, None, partial(_grn_calls, dtype, shape)
        for shape in BLOCK_SHAPES:
            yield "block", dtype, shape, 7, partial(_block_calls, dtype, shape, dtype)
    for shape in BLOCK_SHAPES:
        yield "block autocast", torch.bfloat16, shape, 7, \
            partial(_block_calls, torch.bfloat16, shape, torch.float32)


def report_launches():
    """(op, dtype, shape, k, launch, uses) for every distinct launch configuration (kernel,
    signature, constexprs, options) the launchers make in the calls of _calls(), run on meta
    tensors with their launches recorded, not run; `uses`: how many launches of the calls had
    that configuration (the row names the first call that made it)."""
    rows = {}
    for op, dtype, shape, k, call in _calls():
        with recorded_launches() as launches:
            call()
        for launch in launches:
            signature, attrs, constexprs = _signature(launch)
            key = (launch.name, tuple(signature.items()), repr(sorted(attrs.items())),
                   repr(sorted(constexprs.items())), tuple(sorted(launch.options.items())))
            if key in rows:
                rows[key][-1] += 1
            else:
                rows[key] = [op, dtype, shape, k, launch, 1]
    return [tuple(row) for row in rows.values()]


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
    return triton.compile(source, target=GPUTarget("cuda", SM90["arch"], 32),
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
    by_regs = SM90["regs_per_sm"] // max(1, registers * threads)
    by_threads = SM90["max_threads_per_sm"] // threads
    by_smem = SM90["smem_per_sm"] // shared_bytes if shared_bytes else SM90["max_blocks_per_sm"]
    return min(by_regs, by_threads, by_smem, SM90["max_blocks_per_sm"])


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


def _triton_rows(part, parts):
    """(index, row) of every parts-th launch of report_launches from part on: one worker's
    share of the compiles, interleaved so that every worker gets all kinds of kernel."""
    rows = []
    for index, (op, dtype, shape, k, launch, uses) in enumerate(report_launches()):
        if index % parts != part:
            continue
        compiled = compile_for_sm90(launch)
        stats = cubin_stats(compiled.asm["cubin"])
        threads = 32 * launch.options["num_warps"]
        stats["shared_bytes"] = max(stats["shared_bytes"], compiled.metadata.shared)
        rows.append((index, {
            "op": op, "kernel": launch.name, "dtype": str(dtype).replace("torch.", ""),
            "shape": list(shape), "k": k, "uses": uses, "source": "triton", "template_args": "",
            "config": {key: val for key, val in launch.constexprs.items()
                       if key.isupper() and key not in ("INTERPRETED",)} | launch.options,
            "ptx_wgmma": "wgmma" in compiled.asm["ptx"],
            **stats,
            "blocks_per_sm": blocks_per_sm(stats["registers"], stats["shared_bytes"], threads),
        }))
    return rows


def build_report(workers=None):
    """Every row: the Triton launches compiled by `workers` processes (all cores by default;
    ~450 compiles of ~0.7 s each took ~6 minutes on one core of the 2-core CI machine), the
    CUDA kernels compiled meanwhile in this one; in report_launches' order."""
    workers = workers or os.cpu_count() or 1
    # spawn, not fork: the workers start clean, whatever threads this process has started
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        shares = [pool.submit(_triton_rows, part, workers) for part in range(workers)]
        cuda = cuda_rows()
        indexed = sorted((row for share in shares for row in share.result()),
                         key=lambda item: item[0])
    return [row for _, row in indexed] + cuda


def write_markdown(rows, path):
    head = ["source", "op", "kernel", "flags", "dtype", "shape", "k", "registers",
            "spill_stores", "shared_bytes", "blocks_per_sm", "widest_load_bytes",
            "widest_store_bytes", "tensor_core"]
    lines = ["# Kernel report: every kernel compiled for sm_90 (no GPU needed)", "",
             f"triton {triton.__version__}, torch {torch.__version__}", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        # flags: a Triton launch's boolean constexprs that are set, which tell apart the
        # variants one kernel is compiled in (the dwconv+LayerNorm with and without STORE_CONV)
        flags = " ".join(key for key, val in row.get("config", {}).items() if val is True)
        cells = [flags if h == "flags" else str(row[h]) for h in head]
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
