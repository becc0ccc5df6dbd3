"""Where Triton compiles the kernels, our Triton ops are triton_ops: torch.compile traces into
them and its graph holds each kernel launch (a triton_kernel_wrapper node), not an opaque op call.

Checked on this CPU machine without running a kernel: a subprocess without TRITON_INTERPRET (so
the ops register as triton_ops, op_registration.py) compiles the whole block op (V1 and
V2) and the LayerNorm op with an AOTAutograd backend that keeps the joint forward+backward graph and
runs nothing; the graph must name the kernels of the forward and of the backward."""
import json
import os
import subprocess
import sys

import pytest

import convnext_kernels as ck

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SCRIPT = r'''
import json, logging
import torch
from torch._functorch.aot_autograd import aot_module_simplified
from torch._functorch.partitioners import default_partition
from torch._higher_order_ops.triton_kernel_wrap import kernel_side_table

import convnext_kernels as ck
from convnext_kernels.ops.layer_norm import LAYER_NORM
from convnext_kernels.triton import whole_block as triton_block
from convnext_kernels.triton.grad_workspace import slots_string

# Without a GPU driver, torch cannot read the kernels' TTIR to see which arguments they write and
# says so at length; it then assumes every argument is written (correct, more copies).
logging.disable(logging.WARNING)
joint = []


def partition(graph, inputs, **kwargs):
    joint.append(graph)
    return default_partition(graph, inputs, **kwargs)


def backend(gm, example_inputs):
    keep = lambda g, _: g
    return aot_module_simplified(gm, example_inputs, fw_compiler=keep, bw_compiler=keep,
                                 partition_fn=partition)


def traced(fn, *args):
    joint.clear()
    torch._dynamo.reset()
    try:  # the compiled graph then runs its kernels: no GPU here, so it fails after the trace
        torch.compile(fn, backend=backend, fullgraph=True)(*args).sum().backward()
    except Exception:
        pass
    assert joint, "no joint graph was traced"
    nodes = [n for g in joint for n in g.graph.nodes if n.op == "call_function"]
    kernels = [kernel_side_table.get_kernel(n.kwargs["kernel_idx"]).fn.__name__
               for n in nodes if "triton_kernel_wrapper" in str(n.target)]
    ours = [str(n.target) for n in nodes if "convnext_kernels" in str(n.target)]
    return {"kernels": sorted(set(kernels)), "opaque_ops": ours}


g = torch.Generator().manual_seed(0)
C = 16
def p(*shape):
    return torch.randn(*shape, generator=g).bfloat16().requires_grad_()
x = torch.randn(2, C, 5, 5, generator=g).bfloat16().contiguous(memory_format=torch.channels_last)
x.requires_grad_()
params = [p(C, 1, 7, 7), p(C), p(C), p(C), p(4 * C, C), p(4 * C), p(C, 4 * C), p(C), p(C)]
grn = [p(4 * C), p(4 * C)]
block = torch.ops.convnext_kernels.block_triton
v1_layout = slots_string(triton_block.grad_shapes(params[0], params[4], params[6], True))
v2_layout = slots_string(triton_block.grad_shapes(params[0], params[4], params[6], False, *grn))
result = {"block": traced(lambda x, *w: block(x, *w, None, None, None, 1e-6, 0.0,
                                              torch.bfloat16, True, v1_layout)[0], x, *params),
          "block_v2": traced(lambda x, *w: block(x, *w[:8], None, *w[8:], None, 1e-6, 1e-6,
                                                 torch.bfloat16, False, v2_layout)[0],
                             x, *params[:8], *grn),
          "layer_norm": traced(lambda x, w, b: LAYER_NORM.impls["triton"](x, w, b, 1e-6)[0],
                               x, params[2], params[3])}
print(json.dumps(result))
'''


@pytest.mark.skipif("triton" not in ck.backends.BACKENDS or not ck.backends.triton_importable(),
                    reason="triton does not import")
def test_torch_compile_sees_every_kernel_of_the_block_and_of_an_op():
    env = {key: val for key, val in os.environ.items() if key != "TRITON_INTERPRET"}
    run = subprocess.run([sys.executable, "-c", SCRIPT], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    block, block_v2, layer_norm = result["block"], result["block_v2"], result["layer_norm"]
    assert block["opaque_ops"] == block_v2["opaque_ops"] == layer_norm["opaque_ops"] == []
    # C = 16 in bf16: the fused MLP forward and backward (grad-hidden kernel, with LayerNorm's
    # backward in its epilogue, and weight-gradient kernel); dwconv's backward and finalize.
    assert set(block["kernels"]) == {
        "_dwconv_layer_norm_kernel", "_fused_mlp_kernel", "_grad_hidden_kernel",
        "_weight_grad_kernel", "_dwconv_backward_kernel", "_finalize_kernel"}
    # V2: a GEMM making GRN's sums of squares alone, GRN's statistics, the fused forward; in the
    # backward GRN's sums from h recomputed, its backward kernel (the coefficients alone) and
    # the fused MLP backward's.
    assert set(block_v2["kernels"]) == {
        "_dwconv_layer_norm_kernel", "_matmul_kernel", "_grn_stats_kernel", "_fused_mlp_kernel",
        "_grn_sums_kernel", "_grn_backward_kernel", "_grad_hidden_kernel",
        "_weight_grad_kernel", "_dwconv_backward_kernel", "_finalize_kernel"}
    assert set(layer_norm["kernels"]) == {"_layer_norm_forward_kernel",
                                          "_layer_norm_backward_kernel", "_finalize_kernel"}
