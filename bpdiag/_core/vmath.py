"""Vectorizable exp, tanh and sigmoid, and float64 sums of squares, for ``@njit`` loops.

The pip build of llvmlite has no SVML, so ``math.exp``/``math.tanh`` in a loop stay scalar.
These use only multiplies, adds, one division, an integer shift and int↔float conversions,
which LLVM vectorizes; they are accurate to a few ulp in float64.

- exp(y), 0 ≤ y ≤ 44: y = k ln2 + r with |r| ≤ ln2/2 (Cody–Waite split of ln2),
  e^r by its degree-13 Taylor polynomial (truncation < 1e-17), 2^k = float(1 << k).
- tanh(x): Cephes' rational x + x³P(x²)/Q(x²) for |x| < 0.625; else (E − 1)/(E + 1) with
  E = e^{2|x|} (|x| clamped at 20, where tanh is 1 in float64), sign restored. Both branches
  are a numerator over a denominator, so a vector lane pays one division, not two.
- σ(x) = 1/(1 + e^{−x}): with E = e^{|x|} (|x| clamped at 40), σ = 1/(E + 1) for x < 0 and
  1 − 1/(E + 1) otherwise — no cancellation in either branch.
- float32 (``tanh32``, ``sigmoid32``; ``tanh_of``/``sigmoid_of`` pick by the argument's type):
  the same functions evaluated in float32, which vectorizes twice as wide and divides faster.
  tanh by Eigen's rational x·P(x²)/Q(x²) on |x| ≤ 7.905 (±1 beyond): no exp and one division,
  ≤ 7 ulp. exp by Cephes' expf (degree-6 polynomial after a two-part ln2 reduction), σ from it
  as above, ≤ 3 ulp.
- ``sumsq``/``scale`` over a slice of a flat vector, for norms and clipping.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, types
from numba.extending import overload

from bpdiag._core.jit import FAST, INLINE

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
    e = exp_pos(2.0 * ax)
    small = abs(x) < 0.625
    num = x * z * ((TANH_P[0] * z + TANH_P[1]) * z + TANH_P[2]) if small else e - 1.0
    den = ((z + TANH_Q[0]) * z + TANH_Q[1]) * z + TANH_Q[2] if small else e + 1.0
    q = num / den
    return x + q if small else math.copysign(q, x)


@njit(**INLINE)
def sigmoid(x):
    """1/(1 + e^{−x}) in float64, a few ulp for |x| ≤ 40; NaN in, NaN out."""
    x = float(x)
    d = 1.0 / (exp_pos(min(abs(x), 40.0)) + 1.0)
    return d if x < 0 else 1.0 - d if x >= 0 else x


# ---------------------------------------------------------------- float32

F32 = np.float32
# Eigen's float tanh: x·P(x²)/Q(x²), coefficients of x¹³ … x¹ over x⁶ … x⁰
TANH32_P = tuple(F32(c) for c in (-2.76076847742355e-16, 2.00018790482477e-13,
                                  -8.60467152213735e-11, 5.12229709037114e-08,
                                  1.48572235717979e-05, 6.37261928875436e-04,
                                  4.89352455891786e-03))  # fmt: skip
TANH32_Q = tuple(F32(c) for c in (1.19825839466702e-06, 1.18534705686654e-04,
                                  2.26843463243900e-03, 4.89352518554385e-03))  # fmt: skip
EXP32_P = tuple(F32(c) for c in (1.9875691500e-4, 1.3981999507e-3, 8.3334519073e-3,
                                 4.1665795894e-2, 1.6666665459e-1, 5.0000001201e-1))  # fmt: skip
LOG2E32, LN2_HI32, LN2_LO32 = F32(1.44269504088896341), F32(0.693359375), F32(-2.12194440e-4)
ONE32, HALF32, SIGMOID32_CLAMP = F32(1.0), F32(0.5), F32(40.0)
TANH32_CLAMP = F32(7.90531110763549805)  # tanh is ±1 in float32 beyond


@njit(**INLINE)
def tanh32(x):
    """tanh(x) in float32 (x float32), ≤ 7 ulp (absolute error < 5e-7); NaN in, NaN out."""
    c = min(max(x, -TANH32_CLAMP), TANH32_CLAMP)
    c = x if x != x else c  # keep a NaN that min/max may have replaced
    z = c * c
    p = TANH32_P[0]
    for k in range(1, 7):
        p = p * z + TANH32_P[k]
    q = TANH32_Q[0]
    for k in range(1, 4):
        q = q * z + TANH32_Q[k]
    return c * p / q


@njit(**INLINE)
def exp32_pos(y):
    """e^y for 0 ≤ y ≤ 40 (float32)."""
    k = int(y * LOG2E32 + HALF32)
    kf = F32(k)
    r = (y - kf * LN2_HI32) - kf * LN2_LO32
    p = EXP32_P[0]
    for i in range(1, 6):
        p = p * r + EXP32_P[i]
    p = p * r * r + r + ONE32
    return p * F32(1 << k)


@njit(**INLINE)
def sigmoid32(x):
    """1/(1 + e^{−x}) in float32 (x float32), a few ulp; NaN in, NaN out."""
    d = ONE32 / (exp32_pos(min(abs(x), SIGMOID32_CLAMP)) + ONE32)
    return d if x < 0 else ONE32 - d if x >= 0 else x


def tanh_of(x):
    """tanh in the argument's precision: ``tanh32`` for float32, ``tanh`` otherwise."""


def sigmoid_of(x):
    """σ in the argument's precision: ``sigmoid32`` for float32, ``sigmoid`` otherwise."""


@overload(tanh_of, inline="always")
def _tanh_of(x):
    return (lambda x: tanh32(x)) if x == types.float32 else (lambda x: tanh(x))


@overload(sigmoid_of, inline="always")
def _sigmoid_of(x):
    return (lambda x: sigmoid32(x)) if x == types.float32 else (lambda x: sigmoid(x))


def scalar(c, arr):
    """The constant c as a scalar of ``arr``'s dtype: in a float32 loop a float64 literal (1.0)
    would widen the arithmetic to float64, at half the vector width and with conversions."""


@overload(scalar, inline="always")
def _scalar(c, arr):
    if isinstance(arr, types.Array) and arr.dtype == types.float32:
        return lambda c, arr: np.float32(c)
    return lambda c, arr: np.float64(c)


# ---------------------------------------------------------------- reductions over slices


@njit(**FAST)
def sumsq(x, lo, hi):
    """Σ x[p]² over [lo, hi), accumulated in float64 (``reassoc`` lets the sum vectorize).

    Loops here run over a slice from 0, never ``range(lo, hi)``: an index that might be
    negative makes Numba wrap it around, and that keeps LLVM from vectorizing the loop."""
    v = x[lo:hi]
    s = 0.0
    for p in range(v.size):
        s += np.float64(v[p]) * np.float64(v[p])
    return s


@njit(**FAST)
def scale(x, lo, hi, c):
    """x[lo:hi] *= c."""
    v = x[lo:hi]
    for p in range(v.size):
        v[p] *= c
