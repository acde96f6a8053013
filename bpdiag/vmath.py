"""Vectorizable exp, tanh and sigmoid for ``@njit`` loops.

The pip build of llvmlite has no SVML, so ``math.exp``/``math.tanh`` in a loop stay scalar
(≈ 0.03–0.13 Gelem/s here). These use only multiplies, adds, one division, an integer shift and
int↔float conversions, which LLVM vectorizes; they are accurate to a few ulp in float64.

- exp(y), 0 ≤ y ≤ 44: y = k ln2 + r with |r| ≤ ln2/2 (Cody–Waite split of ln2),
  e^r by its degree-13 Taylor polynomial (truncation < 1e-17), 2^k = float(1 << k).
- tanh(x): Cephes' rational x + x³P(x²)/Q(x²) for |x| < 0.625; else 1 − 2/(e^{2|x|} + 1)
  (|x| clamped at 20, where tanh is 1 in float64), sign restored.
- σ(x) = 1/(1 + e^{−x}): with E = e^{|x|} (|x| clamped at 40), σ = 1/(E + 1) for x < 0 and
  1 − 1/(E + 1) otherwise — no cancellation in either branch.
"""

from __future__ import annotations

import math

from numba import njit

from bpdiag.jit import INLINE

LOG2E = 1.4426950408889634
LN2_HI = 6.93145751953125e-1  # ln 2 split so that k·LN2_HI is exact for k < 2^11
LN2_LO = 1.42860682030941723212e-6
INV_FACT = tuple(1.0 / math.factorial(n) for n in range(14))
TANH_P = (-9.64399179425052238628e-1, -9.92877231001918586564e1, -1.61468768441708447952e3)
TANH_Q = (1.12811678491632931402e2, 2.23548839060100448583e3, 4.84406305325125486048e3)


@njit(**INLINE)
def exp_pos(y):
    """e^y for 0 ≤ y ≤ 44 (float64)."""
    k = int(y * LOG2E + 0.5)
    r = (y - k * LN2_HI) - k * LN2_LO
    p = INV_FACT[13]
    p = p * r + INV_FACT[12]
    p = p * r + INV_FACT[11]
    p = p * r + INV_FACT[10]
    p = p * r + INV_FACT[9]
    p = p * r + INV_FACT[8]
    p = p * r + INV_FACT[7]
    p = p * r + INV_FACT[6]
    p = p * r + INV_FACT[5]
    p = p * r + INV_FACT[4]
    p = p * r + INV_FACT[3]
    p = p * r + INV_FACT[2]
    p = p * r + 1.0
    p = p * r + 1.0
    return p * float(1 << k)


@njit(**INLINE)
def tanh(x):
    """tanh(x) in float64, a few ulp; NaN in, NaN out."""
    x = float(x)
    ax = min(abs(x), 20.0)
    z = x * x
    small = x + x * z * ((TANH_P[0] * z + TANH_P[1]) * z + TANH_P[2]) / (
        ((z + TANH_Q[0]) * z + TANH_Q[1]) * z + TANH_Q[2]
    )
    large = math.copysign(1.0 - 2.0 / (exp_pos(2.0 * ax) + 1.0), x)
    return small if abs(x) < 0.625 else large


@njit(**INLINE)
def sigmoid(x):
    """1/(1 + e^{−x}) in float64, a few ulp for |x| ≤ 40; NaN in, NaN out."""
    x = float(x)
    d = 1.0 / (exp_pos(min(abs(x), 40.0)) + 1.0)
    return d if x < 0 else 1.0 - d if x >= 0 else x
