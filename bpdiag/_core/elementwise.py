"""Activations and their derivatives, and the elementwise passes of the forward and backward.

| code       | φ(z)                              | φ'(z)                         |
|------------|-----------------------------------|-------------------------------|
| SIGMOID    | 1 / (1 + e^(−z))                  | a(1 − a)                      |
| TANH       | tanh z                            | 1 − a²                        |
| RELU       | max(0, z)                         | 1 if z > 0 else 0             |
| LEAKY_RELU | z if z > 0 else 0.01 z            | 1 if z > 0 else 0.01          |
| ELU        | z if z > 0 else α(e^z − 1), α = 1 | 1 if z > 0 else a + α         |
| SELU       | λ·elu_α(z) (PyTorch's λ, α)       | λ if z > 0 else a + λα        |
| GELU       | z Φ(z) (exact, erf form)          | Φ(z) + z φ(z)                 |
| LINEAR     | z                                 | 1                             |

tanh and sigmoid come from ``vmath``, whose loops vectorize. relu, tanh, sigmoid and linear need
no z after the forward pass (φ' follows from a = φ(z), and a relu unit is dead where a ≤ 0), so
for them z is never stored: the GEMM writes into the a block and φ is applied in place.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from bpdiag._core import vmath
from bpdiag._core.codes import (
    ELU,
    ELU_ALPHA,
    GELU,
    LEAKY_RELU,
    LEAKY_SLOPE,
    LINEAR,
    RELU,
    SELU,
    SELU_ALPHA,
    SELU_LAMBDA,
    SIGMOID,
    TANH,
)
from bpdiag._core.jit import FAST, INLINE, JIT

INV_SQRT2 = 1.0 / math.sqrt(2.0)
INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)


@njit(**JIT)
def sigmoid_exact(z):
    """σ(z) with libm's exp, exact in the far tails too (the loss applies it to the logits)."""
    if z >= 0:
        return 1.0 / (1.0 + math.exp(-z))
    e = math.exp(z)
    return e / (1.0 + e)


@njit(**INLINE)
def phi(code, z):
    """φ(z) for one scalar."""
    if code == SIGMOID:
        return vmath.sigmoid(z)
    if code == TANH:
        return vmath.tanh(z)
    if code == RELU:
        return z if z > 0 else 0.0 * z  # 0·z keeps NaN
    if code == LEAKY_RELU:
        return z if z > 0 else LEAKY_SLOPE * z
    if code == ELU:
        return z if z > 0 else ELU_ALPHA * math.expm1(z)
    if code == SELU:
        return SELU_LAMBDA * z if z > 0 else SELU_LAMBDA * SELU_ALPHA * math.expm1(z)
    if code == GELU:
        return 0.5 * z * (1.0 + math.erf(z * INV_SQRT2))
    return z


@njit(**INLINE)
def dphi(code, z, a):
    """φ'(z), from the stored activation a = φ(z) where that is cheaper (the seed's table)."""
    if code == SIGMOID:
        return a * (1.0 - a)
    if code == TANH:
        return 1.0 - a * a
    if code == RELU:
        return 1.0 if z > 0 else 0.0
    if code == LEAKY_RELU:
        return 1.0 if z > 0 else LEAKY_SLOPE
    if code == ELU:
        return 1.0 if z > 0 else a + ELU_ALPHA
    if code == SELU:
        return SELU_LAMBDA if z > 0 else a + SELU_LAMBDA * SELU_ALPHA
    if code == GELU:
        return 0.5 * (1.0 + math.erf(z * INV_SQRT2)) + z * INV_SQRT_2PI * math.exp(-0.5 * z * z)
    return 1.0


@njit(**INLINE)
def needs_z(code):
    """Whether φ' or the statistics of ``code`` read z itself (not for relu, tanh, sigmoid and
    linear, whose z is never stored)."""
    return not (code == RELU or code == TANH or code == SIGMOID or code == LINEAR)


@njit(**FAST)
def activate_in_place(code, A, b):
    """a ← φ(a + b) over the (mb, n) block holding the GEMM's a_{l−1}Wᵀ, for the activations
    that keep no z; each activation has a loop of its own so that each one vectorizes."""
    mb, n = A.shape
    zero = vmath.scalar(0.0, A)
    if code == RELU:
        for i in range(mb):
            for j in range(n):
                z = A[i, j] + b[j]
                A[i, j] = z if z > zero else zero * z  # 0·z keeps NaN
    elif code == TANH:
        for i in range(mb):
            for j in range(n):
                A[i, j] = vmath.tanh_of(A[i, j] + b[j])
    elif code == SIGMOID:
        for i in range(mb):
            for j in range(n):
                A[i, j] = vmath.sigmoid_of(A[i, j] + b[j])
    else:
        for i in range(mb):
            for j in range(n):
                A[i, j] += b[j]


@njit(**FAST)
def bias_activate(code, Z, b, A):
    """z ← z + b (in place) and a = φ(z) over the (mb, n) block, for the activations that keep z."""
    mb, n = Z.shape
    for i in range(mb):
        for j in range(n):
            z = Z[i, j] + b[j]
            Z[i, j] = z
            A[i, j] = phi(code, z)


@njit(**JIT)
def activate(code, A, b):
    """a ← φ(a + b) in place for any activation (the vectorized loops where there are)."""
    if needs_z(code):
        bias_activate(code, A, b, A)
    else:
        activate_in_place(code, A, b)


@njit(**FAST)
def times_dphi(code, Z, A, D, db):
    """D ← D ⊙ φ'(z) over the (mb, n) block; from the same pass, db = Σ_rows D (the bias
    gradient) and the returned Σ D² (in float64, for the error signal's RMS). Constants take D's
    dtype (``vmath.scalar``): a float64 literal would widen a float32 loop to float64."""
    mb, n = D.shape
    one, zero = vmath.scalar(1.0, D), vmath.scalar(0.0, D)
    db[:] = zero
    s = 0.0
    if code == RELU:
        for i in range(mb):
            for j in range(n):
                d = D[i, j] if A[i, j] > zero else zero
                D[i, j] = d
                db[j] += d
                s += np.float64(d) * np.float64(d)
    elif code == TANH:
        for i in range(mb):
            for j in range(n):
                d = D[i, j] * (one - A[i, j] * A[i, j])
                D[i, j] = d
                db[j] += d
                s += np.float64(d) * np.float64(d)
    elif code == SIGMOID:
        for i in range(mb):
            for j in range(n):
                d = D[i, j] * (A[i, j] * (one - A[i, j]))
                D[i, j] = d
                db[j] += d
                s += np.float64(d) * np.float64(d)
    elif code == LINEAR:
        for i in range(mb):
            for j in range(n):
                d = D[i, j]
                db[j] += d
                s += np.float64(d) * np.float64(d)
    else:
        for i in range(mb):
            for j in range(n):
                d = D[i, j] * dphi(code, Z[i, j], A[i, j])
                D[i, j] = d
                db[j] += d
                s += np.float64(d) * np.float64(d)
    return s


@njit(**JIT)
def phi_array(code, z):
    """φ(z) elementwise over a float64 array (the theory's quadrature uses it)."""
    out = np.empty_like(z)
    for i in range(z.size):
        out[i] = phi(code, z[i])
    return out


@njit(**JIT)
def dphi_array(code, z):
    """φ'(z) elementwise over a float64 array."""
    out = np.empty_like(z)
    for i in range(z.size):
        out[i] = dphi(code, z[i], phi(code, z[i]))
    return out
