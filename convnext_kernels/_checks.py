"""Argument checks of the public ops: clear ValueError/TypeError before any kernel launch."""
import torch

MAX_KERNEL_SIZE = 31


def _check_tensor(op, name, t):
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{op}: {name} must be a torch.Tensor, got {type(t).__name__}")
    if not t.dtype.is_floating_point:
        raise TypeError(f"{op}: {name} must be a floating-point tensor, got {t.dtype}")


def check_same(op, x, **others):
    """Every tensor in `others` (None allowed) has x's dtype and device."""
    for name, t in others.items():
        if t is None:
            continue
        _check_tensor(op, name, t)
        if t.dtype != x.dtype:
            raise TypeError(f"{op}: {name} has dtype {t.dtype} but x has {x.dtype}; "
                            "pass all tensors in one dtype")
        if t.device != x.device:
            raise ValueError(f"{op}: {name} is on {t.device} but x is on {x.device}")


def check_nchw(op, x):
    _check_tensor(op, "x", x)
    if x.dim() != 4:
        raise ValueError(f"{op}: x must be 4-D (N, C, H, W), got shape {tuple(x.shape)}")


def check_dwconv_args(op, x, weight, bias):
    """x N,C,H,W; weight [C,1,k,k] with odd k in 1..31; bias None or [C]. Returns k."""
    check_nchw(op, x)
    check_same(op, x, weight=weight, bias=bias)
    C = x.shape[1]
    if weight.dim() != 4 or weight.shape[0] != C or weight.shape[1] != 1 \
            or weight.shape[2] != weight.shape[3]:
        raise ValueError(f"{op}: weight must have shape [C, 1, k, k] with C = {C} "
                         f"(depthwise), got {tuple(weight.shape)}")
    k = weight.shape[-1]
    if k % 2 == 0 or not 1 <= k <= MAX_KERNEL_SIZE:
        raise ValueError(f"{op}: kernel size must be odd and at most {MAX_KERNEL_SIZE} "
                         f"('same' padding k//2), got {k}")
    if bias is not None and tuple(bias.shape) != (C,):
        raise ValueError(f"{op}: bias must have shape [{C}], got {tuple(bias.shape)}")
    return k


def check_layer_norm_args(op, x, weight, bias, eps):
    """x N,C,H,W; weight and bias [C]; eps a positive number."""
    check_nchw(op, x)
    check_same(op, x, weight=weight, bias=bias)
    for name, t in (("weight", weight), ("bias", bias)):
        if t is None:
            raise TypeError(f"{op}: {name} must be a tensor of shape [C], got None")
        if tuple(t.shape) != (x.shape[1],):
            raise ValueError(f"{op}: {name} must have shape [{x.shape[1]}] (C of x), "
                             f"got {tuple(t.shape)}")
    if isinstance(eps, bool) or not isinstance(eps, (int, float)):
        raise TypeError(f"{op}: eps must be a float, got {type(eps).__name__}")
    if not eps > 0:
        raise ValueError(f"{op}: eps must be > 0, got {eps}")
