"""How the CPU GELU's erf approximation (csrc/cpu/gelu_kernels.h: kErfNumerator,
kErfDenominator) was fitted; tests/test_mlp.py fits it again and compares.

erf(z) = z P(z^2) / Q(z^2) on [0, Z_MAX] (odd, so on [-Z_MAX, Z_MAX]), P of degree 5, Q of
degree 5 with Q(0) = 1: linearised least squares on Chebyshev nodes, iterated (Sanathanan-Koerner:
divided by the previous Q) and reweighted by the error (Lawson) to near minimax.
"""
import math

import numpy as np

Z_MAX = 4.0  # erf(4) = 1 - 1.5e-8 rounds to 1 in float32: the kernel clamps z there
DEGREE = 5
NODES = 6000


def fit():
    """(numerator, denominator coefficients, lowest power first, float64; max fit error)."""
    k = np.arange(NODES)
    z = 0.5 * Z_MAX + 0.5 * Z_MAX * np.cos(np.pi * (k + 0.5) / NODES)
    erf = np.array([math.erf(v) for v in z])
    t = z * z
    columns = np.concatenate([z[:, None] * t[:, None] ** np.arange(DEGREE + 1),
                              -erf[:, None] * t[:, None] ** np.arange(1, DEGREE + 1)], axis=1)
    weight, previous_q = np.ones(NODES), np.ones(NODES)
    for iteration in range(80):
        scale = weight / previous_q
        solution = np.linalg.lstsq(columns * scale[:, None], erf * scale, rcond=None)[0]
        numerator = solution[:DEGREE + 1]
        denominator = np.concatenate([[1.0], solution[DEGREE + 1:]])
        previous_q = np.polyval(denominator[::-1], t)
        error = z * np.polyval(numerator[::-1], t) / previous_q - erf
        if iteration >= 10:
            weight = weight * np.sqrt(np.abs(error))
            weight /= weight.mean()
    return numerator, denominator, float(np.abs(error).max())


def as_float_literals(coefficients):
    return ", ".join(np.format_float_positional(np.float32(c)) + "f" for c in coefficients)


if __name__ == "__main__":
    numerator, denominator, error = fit()
    print(f"max fit error {error:.3g}")
    print("numerator:", as_float_literals(numerator))
    print("denominator:", as_float_literals(denominator))
