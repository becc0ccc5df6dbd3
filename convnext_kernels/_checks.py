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
    _check_eps(op, eps)


def _check_vector(op, name, t, size):
    if t is not None and t.numel() != size:
        raise ValueError(f"{op}: {name} must hold {size} values, got shape {tuple(t.shape)}")


def check_grn_args(op, x, weight, bias, eps):
    """x N,H,W,C; weight and bias hold C values ([C] or [1,1,1,C]); eps a positive number."""
    _check_tensor(op, "x", x)
    if x.dim() != 4:
        raise ValueError(f"{op}: x must be 4-D (N, H, W, C), got shape {tuple(x.shape)}")
    check_same(op, x, weight=weight, bias=bias)
    for name, t in (("weight", weight), ("bias", bias)):
        if t is None:
            raise TypeError(f"{op}: {name} must be a tensor of {x.shape[-1]} values, got None")
        _check_vector(op, name, t, x.shape[-1])
    _check_eps(op, eps)


def _check_eps(op, eps):
    if isinstance(eps, bool) or not isinstance(eps, (int, float)):
        raise TypeError(f"{op}: eps must be a float, got {type(eps).__name__}")
    if not eps > 0:
        raise ValueError(f"{op}: eps must be > 0, got {eps}")


def check_mlp_args(op, x, fc1_w, fc1_b, fc2_w, fc2_b, gamma, residual, drop_scale, grn_weight,
                   grn_bias, grn_eps):
    """x rows (..., C); fc1_w [H, C], fc1_b [H], fc2_w [C, H], fc2_b [C]; gamma C values;
    residual x's shape; drop_scale [x.shape[0]]; GRN parameters (both or neither) H values, with
    x N,H,W,C."""
    _check_tensor(op, "x", x)
    if x.dim() < 1:
        raise ValueError(f"{op}: x must have a channel dimension, got a 0-D tensor")
    check_same(op, x, fc1_w=fc1_w, fc1_b=fc1_b, fc2_w=fc2_w, fc2_b=fc2_b, gamma=gamma,
               residual=residual, drop_scale=drop_scale, grn_weight=grn_weight,
               grn_bias=grn_bias)
    C = x.shape[-1]
    for name, t in (("fc1_w", fc1_w), ("fc1_b", fc1_b), ("fc2_w", fc2_w), ("fc2_b", fc2_b)):
        if t is None:
            raise TypeError(f"{op}: {name} must be a tensor, got None")
    if fc1_w.dim() != 2 or fc1_w.shape[1] != C or fc1_w.shape[0] == 0:
        raise ValueError(f"{op}: fc1_w must have shape [H, C] with C = {C} (x's last "
                         f"dimension), got {tuple(fc1_w.shape)}")
    H = fc1_w.shape[0]
    if tuple(fc1_b.shape) != (H,):
        raise ValueError(f"{op}: fc1_b must have shape [{H}], got {tuple(fc1_b.shape)}")
    if tuple(fc2_w.shape) != (C, H):
        raise ValueError(f"{op}: fc2_w must have shape [{C}, {H}] (fc1_w is [{H}, {C}]), got "
                         f"{tuple(fc2_w.shape)}")
    if tuple(fc2_b.shape) != (C,):
        raise ValueError(f"{op}: fc2_b must have shape [{C}], got {tuple(fc2_b.shape)}")
    _check_vector(op, "gamma", gamma, C)
    if residual is not None and residual.shape != x.shape:
        raise ValueError(f"{op}: residual must have x's shape {tuple(x.shape)}, got "
                         f"{tuple(residual.shape)}")
    if drop_scale is not None:
        if x.dim() < 2 or tuple(drop_scale.shape) != (x.shape[0],):
            raise ValueError(f"{op}: drop_scale must have shape [{x.shape[0] if x.dim() else 0}]"
                             f" (one factor per sample, x's first dimension), got "
                             f"{tuple(drop_scale.shape)}")
    if (grn_weight is None) != (grn_bias is None):
        raise TypeError(f"{op}: pass both grn_weight and grn_bias, or neither")
    if grn_weight is not None:
        if x.dim() != 4:
            raise ValueError(f"{op}: with GRN, x must be 4-D (N, H, W, C), got shape "
                             f"{tuple(x.shape)}")
        _check_vector(op, "grn_weight", grn_weight, H)
        _check_vector(op, "grn_bias", grn_bias, H)
        _check_eps(op, grn_eps)
