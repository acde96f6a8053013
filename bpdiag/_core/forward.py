"""The forward pass and the loss: a_0 → a_1 … a_L, then L and ∂L/∂a_L (layout: ``structs``)."""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from bpdiag._core.codes import BCE, CE
from bpdiag._core.elementwise import activate_in_place, bias_activate, needs_z, sigmoid_exact
from bpdiag._core.gemm import gemm
from bpdiag._core.jit import JIT


@njit(**JIT)
def block(buf, off, rows, cols):
    """The (rows, cols) view of the flat ``buf`` starting at ``off``."""
    return buf[off : off + rows * cols].reshape((rows, cols))


@njit(**JIT)
def z_block(code, buf, off, rows, cols):
    """The (rows, cols) block holding z_l for ``code``: in ``buf.zs`` where it is kept, else the
    a block (for linear z = a; for relu, tanh and sigmoid nothing reads z)."""
    return block(buf.zs if needs_z(code) else buf.acts, off, rows, cols)


@njit(**JIT)
def dense(theta, net, k, buf, off_in, off_out, rows):
    """a_l = φ(a_{l−1} W_lᵀ + b_l) for layer l = k + 1, over ``rows`` rows starting at
    buf.acts[off_in] (a_{l−1}) and buf.acts[off_out] (a_l); z_l at buf.zs[off_out] where kept."""
    n_in, n_out = net.sizes[k], net.sizes[k + 1]
    code = net.act if k < net.sizes.size - 2 else net.out_act
    W = block(theta, net.w_off[k], n_out, n_in)
    b = theta[net.b_off[k] : net.b_off[k] + n_out]
    A_prev, A = block(buf.acts, off_in, rows, n_in), block(buf.acts, off_out, rows, n_out)
    if needs_z(code):
        Z = block(buf.zs, off_out, rows, n_out)
        gemm(A_prev, False, W, True, Z)
        bias_activate(code, Z, b, A)
    else:
        gemm(A_prev, False, W, True, A)
        activate_in_place(code, A, b)


@njit(**JIT)
def forward(theta, net, buf, mb):
    """a_0 (already in ``buf.acts``) → a_l for l = 1..L on the first mb rows."""
    for k in range(net.sizes.size - 1):
        dense(theta, net, k, buf, buf.a_off[k], buf.a_off[k + 1], mb)


@njit(**JIT)
def loss_delta(loss, Z, A, Y, D):
    """Batch-mean loss and accuracy (NaN for mse); ∂L/∂a_L into D (``backward`` makes it
    δ_L = ∂L/∂a_L ⊙ φ'(z_L); for bce and ce the output is linear, a_L = z_L).

    Z, A, D: (mb, k). Y: (mb, k) targets, or (mb, 1) integer labels stored as floats for ce.
    Semantics of PyTorch's BCEWithLogitsLoss, CrossEntropyLoss and MSELoss (mean reduction).
    """
    mb, k = Z.shape
    total = 0.0
    correct = 0.0
    if loss == BCE:
        scale = 1.0 / (mb * k)
        for i in range(mb):
            for j in range(k):
                z = Z[i, j]
                y = Y[i, j]
                total += max(z, 0.0) - z * y + math.log1p(math.exp(-abs(z)))
                D[i, j] = (sigmoid_exact(z) - y) * scale
                correct += 1.0 if (z > 0) == (y >= 0.5) else 0.0
        return total * scale, correct * scale
    if loss == CE:
        scale = 1.0 / mb
        for i in range(mb):
            label = int(Y[i, 0])
            zmax = Z[i, 0]
            best = 0
            for j in range(1, k):
                if Z[i, j] > zmax:
                    zmax = Z[i, j]
                    best = j
            s = 0.0
            for j in range(k):
                e = math.exp(Z[i, j] - zmax)
                D[i, j] = e
                s += e
            total += zmax + math.log(s) - Z[i, label]
            for j in range(k):
                D[i, j] = (D[i, j] / s - (1.0 if j == label else 0.0)) * scale
            correct += 1.0 if best == label else 0.0
        return total * scale, correct * scale
    scale = 1.0 / (mb * k)
    for i in range(mb):
        for j in range(k):
            e = A[i, j] - Y[i, j]
            total += e * e
            D[i, j] = 2.0 * e * scale
    return total * scale, np.nan


@njit(**JIT)
def output_loss(net, buf, mb):
    """The loss of the first mb rows of the output block against buf.Y, with ∂L/∂a_L written
    into the delta block: (loss, accuracy)."""
    L = net.sizes.size - 1
    n, off = net.sizes[L], buf.a_off[L]
    return loss_delta(net.loss, z_block(net.out_act, buf, off, mb, n), block(buf.acts, off, mb, n),
                      buf.Y[:mb], block(buf.deltas, off, mb, n))  # fmt: skip
