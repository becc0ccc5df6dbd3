import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

import convnext_kernels as ck
from convnext_kernels import reference
from convnext_kernels.ops import dwconv as dwconv_module
from numerics import assert_accurate, fresh_generator, kernel_targets, randn

TARGETS = kernel_targets()
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
# (N, C, H, W, k): ConvNeXt-like C=40; 1×1 and 7×7 images; H, W < k; odd sizes; C not a
# multiple of any vector width; k from 3 to 31; rows wide enough for pixel blocks away from both
# edges, with k known to the cpp kernels at compile time (7, 3) and not (5).
SHAPES = [
    (2, 40, 13, 17, 7),
    (1, 8, 1, 1, 7),
    (1, 16, 7, 7, 7),
    (1, 24, 5, 6, 3),
    (3, 3, 6, 5, 5),
    (1, 8, 4, 9, 31),
    (1, 16, 9, 10, 9),
    (2, 96, 14, 14, 7),  # a ConvNeXt width; rows in several weight-gradient chunks
    (1, 32, 5, 40, 7),
    (1, 16, 4, 37, 3),
    (1, 16, 3, 30, 5),
]


def _inputs(shape, dtype, device, channels_last, gen):
    N, C, H, W, k = shape
    x = randn(gen, N, C, H, W, dtype=dtype, device=device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    weight = randn(gen, C, 1, k, k, dtype=dtype, device=device, scale=1 / k)
    bias = randn(gen, C, dtype=dtype, device=device)
    grad = randn(gen, N, C, H, W, dtype=dtype, device=device)
    return x, weight, bias, grad


def _forward_backward(fn, x, weight, bias, grad):
    leaves = [t.detach().requires_grad_() for t in (x, weight, bias)]
    y = fn(*leaves)
    y.backward(grad)
    return [y] + [t.grad for t in leaves]


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("backend,device", TARGETS)
def test_matches_float64_reference(backend, device, dtype, shape, channels_last, poisoned):
    gen, seed = fresh_generator()
    x, weight, bias, grad = _inputs(shape, dtype, device, channels_last, gen)
    ours = _forward_backward(lambda *a: ck.dwconv2d(*a, backend=backend), x, weight, bias, grad)
    ref = _forward_backward(reference.dwconv2d,
                            *(t.double().cpu() for t in (x, weight, bias, grad)))
    eager = _forward_backward(reference.dwconv2d, x, weight, bias, grad)
    for name, o, r, e in zip(["y", "grad_x", "grad_weight", "grad_bias"], ours, ref, eager):
        assert o.dtype == dtype and o.shape == r.shape, name
        assert_accurate(name, o, r, e, dtype, seed)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    assert ours[0].is_contiguous(memory_format=memory_format), "output lost x's memory format"


@pytest.mark.parametrize("backend,device", TARGETS)
def test_without_bias_and_partial_grads(backend, device, poisoned):
    gen, seed = fresh_generator()
    x, weight, _, grad = _inputs((2, 16, 6, 7, 5), torch.float32, device, True, gen)
    w = weight.detach().requires_grad_()
    y = ck.dwconv2d(x, w, None, backend=backend)  # x needs no grad: only grad_weight runs
    y.backward(grad)
    w_ref = weight.double().cpu().requires_grad_()
    reference.dwconv2d(x.double().cpu(), w_ref).backward(grad.double().cpu())
    assert_accurate("y", y, reference.dwconv2d(x.double().cpu(), weight.double().cpu()), None,
                    torch.float32, seed)
    assert_accurate("grad_weight", w.grad, w_ref.grad, None, torch.float32, seed)


@pytest.mark.parametrize("backend,device", TARGETS)
def test_weight_grad_is_deterministic(backend, device):
    gen, _ = fresh_generator()
    x, weight, bias, grad = _inputs((2, 24, 11, 9, 7), torch.float32, device, True, gen)
    first = _forward_backward(lambda *a: ck.dwconv2d(*a, backend=backend), x, weight, bias, grad)
    threads = torch.get_num_threads()
    torch.set_num_threads(1 if threads > 1 else 2)  # the same bits on any thread count
    try:
        second = _forward_backward(lambda *a: ck.dwconv2d(*a, backend=backend), x, weight, bias,
                                   grad)
    finally:
        torch.set_num_threads(threads)
    for a, b in zip(first, second):
        assert torch.equal(a, b)


@pytest.mark.parametrize("backend,device", TARGETS)
def test_empty_batch(backend, device):
    x = torch.randn(0, 8, 5, 5, device=device)
    weight = torch.randn(8, 1, 3, 3, device=device, requires_grad=True)
    y = ck.dwconv2d(x, weight, backend=backend)
    assert y.shape == x.shape
    y.sum().backward()
    assert torch.equal(weight.grad, torch.zeros_like(weight))


@pytest.mark.parametrize("k", [3, 5])
def test_gradcheck_cpp_float64(k):
    if "cpp" not in ck.available_backends():
        pytest.fail("the cpp backend must be built for the test suite")
    gen, _ = fresh_generator()
    x = randn(gen, 2, 3, 5, 6, dtype=torch.float64).requires_grad_()
    weight = randn(gen, 3, 1, k, k, dtype=torch.float64).requires_grad_()
    bias = randn(gen, 3, dtype=torch.float64).requires_grad_()
    assert torch.autograd.gradcheck(lambda *a: ck.dwconv2d(*a, backend="cpp"), (x, weight, bias))


def _opcheck_ops():
    ops = []
    if "cpp" in ck.available_backends():
        ops.append((torch.ops.convnext_kernels.dwconv2d.default,
                    torch.ops.convnext_kernels.dwconv2d_backward_weight.default, "cpu"))
    if "triton" in ck.available_backends():
        ops.append((torch.ops.convnext_kernels.dwconv2d_triton.default,
                    torch.ops.convnext_kernels.dwconv2d_backward_weight_triton.default,
                    "cuda" if torch.cuda.is_available() else "cpu"))
    if "cuda" in ck.available_backends():
        ops.append((torch.ops.convnext_kernels.dwconv2d.default,
                    torch.ops.convnext_kernels.dwconv2d_backward_weight.default, "cuda"))
    return ops


@pytest.mark.parametrize("forward_op,backward_weight_op,device", _opcheck_ops())
def test_opcheck(forward_op, backward_weight_op, device):
    x = torch.randn(1, 8, 5, 6, device=device).contiguous(memory_format=torch.channels_last)
    weight = torch.randn(8, 1, 3, 3, device=device, requires_grad=True)
    bias = torch.randn(8, device=device, requires_grad=True)
    torch.library.opcheck(forward_op, (x.requires_grad_(), weight, bias))
    torch.library.opcheck(forward_op, (x.detach().contiguous(), weight.detach(), None))
    torch.library.opcheck(backward_weight_op, (torch.randn_like(x), x.detach(), weight.detach()))


@pytest.mark.parametrize("backend,device", TARGETS)
def test_torch_compile_fullgraph(backend, device):
    torch._dynamo.reset()
    gen, seed = fresh_generator()
    x, weight, bias, _ = _inputs((2, 8, 6, 7, 3), torch.float32, device, True, gen)

    def fn(x, weight, bias):
        return (ck.dwconv2d(x, weight, bias, backend=backend).sin() * 2).sum()

    compiled = torch.compile(fn, fullgraph=True)
    leaves_c = [t.detach().requires_grad_() for t in (x, weight, bias)]
    leaves_e = [t.detach().requires_grad_() for t in (x, weight, bias)]
    compiled(*leaves_c).backward()
    fn(*leaves_e).backward()
    for c, e in zip(leaves_c, leaves_e):
        torch.testing.assert_close(c.grad, e.grad, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------------- bad input

def _good():
    return torch.randn(1, 4, 5, 5), torch.randn(4, 1, 3, 3), torch.randn(4)


BAD_INPUTS = [
    ("even k", lambda x, w, b: (x, torch.randn(4, 1, 4, 4), b), ValueError, "odd"),
    ("k too large", lambda x, w, b: (x, torch.randn(4, 1, 33, 33), b), ValueError, "at most 31"),
    ("non-square weight", lambda x, w, b: (x, torch.randn(4, 1, 3, 5), b), ValueError, "weight"),
    ("weight channels", lambda x, w, b: (x, torch.randn(5, 1, 3, 3), b), ValueError, "weight"),
    ("grouped weight", lambda x, w, b: (x, torch.randn(4, 2, 3, 3), b), ValueError, "weight"),
    ("bias shape", lambda x, w, b: (x, w, torch.randn(5)), ValueError, "bias"),
    ("3-D x", lambda x, w, b: (x[0], w, b), ValueError, "4-D"),
    ("int x", lambda x, w, b: (x.int(), w, b), TypeError, "floating"),
    ("int weight", lambda x, w, b: (x, w.int(), b), TypeError, "weight"),
    ("dtype mix", lambda x, w, b: (x, w.double(), b), TypeError, "weight has dtype"),
    ("bias dtype", lambda x, w, b: (x, w, b.half()), TypeError, "bias has dtype"),
    ("device mix", lambda x, w, b: (x, w.to("meta"), b), ValueError, "weight is on meta"),
    ("not a tensor", lambda x, w, b: (x, w.tolist(), b), TypeError,
     "weight must be a torch.Tensor"),
]


@pytest.mark.parametrize("backend", ["auto", "torch", "cpp", "triton"])
@pytest.mark.parametrize("case,make,error,match", BAD_INPUTS, ids=[c[0] for c in BAD_INPUTS])
def test_bad_input_raises_before_launch(monkeypatch, backend, case, make, error, match):
    def no_launch(*args):
        raise AssertionError("a kernel was launched before the arguments were checked")

    for name in list(dwconv_module.DWCONV.impls):
        monkeypatch.setitem(dwconv_module.DWCONV.impls, name, no_launch)
    monkeypatch.setattr(dwconv_module.reference, "dwconv2d", no_launch)
    with pytest.raises(error, match=match):
        ck.dwconv2d(*make(*_good()), backend=backend)


def test_unknown_backend():
    with pytest.raises(ValueError, match="backend must be one of"):
        ck.dwconv2d(*_good(), backend="cudnn")


def test_backend_that_cannot_serve_names_why():
    if torch.cuda.is_available():
        pytest.skip("checks a CPU-only machine's answer")
    with pytest.raises(ValueError, match="backend 'cuda' cannot serve this call: .*CUDA"):
        ck.dwconv2d(*_good(), backend="cuda")
    with pytest.raises(ValueError, match="backend 'triton'.*float64"):
        ck.dwconv2d(*(t.double() for t in _good()), backend="triton")


def test_cpp_op_checks_its_arguments_too():
    x, _, b = _good()
    with pytest.raises(ValueError, match="odd"):
        torch.ops.convnext_kernels.dwconv2d(x, torch.randn(4, 1, 4, 4), b)
    with pytest.raises(TypeError, match="dtype"):
        torch.ops.convnext_kernels.dwconv2d(x, torch.randn(4, 1, 3, 3).half(), b)


@pytest.mark.parametrize("backend,device", [("torch", "cpu")] + TARGETS)
def test_inputs_are_not_modified(backend, device):
    x, w, b = (t.to(device) for t in _good())
    x = x.contiguous(memory_format=torch.channels_last)
    copies = [t.clone() for t in (x, w, b)]
    ck.dwconv2d(x, w, b, backend=backend)
    for t, c in zip((x, w, b), copies):
        assert torch.equal(t, c)


def test_torch_backend_is_f_conv2d():
    x, w, b = _good()
    torch.testing.assert_close(ck.dwconv2d(x, w, b, backend="torch"),
                               F.conv2d(x, w, b, padding=1, groups=4), rtol=0, atol=0)


def test_poison_is_active(poisoned):
    assert torch.empty(8).isnan().all()
    assert torch.empty_like(torch.zeros(2, 3, device="cpu")).isnan().all()


def _cpu_info():
    """(flags, vendor_id) from /proc/cpuinfo, or None without it."""
    try:
        with open("/proc/cpuinfo") as f:
            fields = dict((key.strip(), value.strip()) for key, value in
                          (line.split(":", 1) for line in f if ":" in line))
    except OSError:
        return None
    return fields.get("flags", "").split(), fields.get("vendor_id", "")


ISA_NAMES = ["avx512_bf16", "avx512", "avx2", "portable"]
ISA_FLAGS = {"avx512_bf16": ["avx512f", "avx512_bf16"], "avx512": ["avx512f"],
             "avx2": ["avx2", "fma", "f16c"], "portable": []}


def _default_isa(flags, vendor):
    """The set select_isa (csrc/cpu/isa.h) picks without a request: the widest the CPU has, the
    bf16 dot product on AMD alone (measured faster there only)."""
    return next(isa for isa in ISA_NAMES
                if all(f in flags for f in ISA_FLAGS[isa])
                and (isa != "avx512_bf16" or vendor == "AuthenticAMD"))


@pytest.mark.skipif("cpp" not in ck.available_backends(), reason="needs the cpp backend")
def test_cpu_kernels_pick_the_fastest_instruction_set_of_this_cpu():
    from convnext_kernels import _C
    info = _cpu_info()
    if info is None:
        pytest.skip("no /proc/cpuinfo to compare with")
    assert _C.cpu_isa() == _default_isa(*info)


# The AVX512-BF16 kernels with the bf16 dot product emulated (isa.h): run where the CPU has
# AVX-512F, so that a CPU without AVX512-BF16 still tests them.
EMULATED_BF16 = "avx512_bf16_emulated"


@pytest.mark.skipif("cpp" not in ck.available_backends(), reason="needs the cpp backend")
@pytest.mark.parametrize("isa", ISA_NAMES + [EMULATED_BF16])
def test_every_other_instruction_set_matches_the_reference(isa):
    """CK_CPU_ISA picks another set: the cpp dwconv and LayerNorm tests, and the MLP's GELU and
    tiled-forward tests, again on each path this CPU can run besides its default (tested
    above): the narrower ones, the bf16 dot product where the CPU has it but does not use it by
    default, and the emulated bf16 dot product where the CPU has AVX-512F."""
    from convnext_kernels import _C
    info = _cpu_info()
    if info is None:
        pytest.skip("no /proc/cpuinfo to tell which sets this CPU has")
    if isa == _C.cpu_isa():
        pytest.skip(f"{isa} is this CPU's default: tested above")
    needs = ISA_FLAGS["avx512"] if isa == EMULATED_BF16 else ISA_FLAGS[isa]
    missing = [flag for flag in needs if flag not in info[0]]
    if missing:
        pytest.skip(f"{isa} needs {', '.join(missing)}, which this CPU lacks")
    env = dict(os.environ, CK_CPU_ISA=isa)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    check = subprocess.run(
        [sys.executable, "-c", "from convnext_kernels import _C; print(_C.cpu_isa())"],
        cwd=root, env=env, capture_output=True, text=True, check=True)
    assert check.stdout.split() == [isa]
    here = os.path.dirname(__file__)
    files = [__file__, os.path.join(here, "test_layer_norm.py"), os.path.join(here, "test_mlp.py")]
    selection = ("cpp and (matches_float64 or deterministic or without_bias or empty or constant"
                 " or row_tiles or float_range)")
    if isa in (EMULATED_BF16, "avx512_bf16"):
        # the dot product, real or emulated, changes the bf16 dwconv forward alone (isa.h)
        files, selection = files[:2], f"({selection}) and bfloat16"
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *files, "-k", selection],
        cwd=root, env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stdout[-3000:]
