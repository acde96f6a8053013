"""The recorders: per-layer statistics of a step, and the record they make (``slots``).

The gradient sums (‖∂L/∂W_l‖², ‖∂L/∂b_l‖², Σδ_l²) come from the backward pass every step, and
‖Δθ‖², ‖θ‖², ‖g‖² from the optimizer's pass. The activation statistics take one pass over the
activations the forward pass left, on record steps only.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from bpdiag._core.codes import CLIP_NORM, ELU, GELU, LEAKY_RELU, RELU, SELU, SIGMOID, TANH
from bpdiag._core.forward import block, z_block
from bpdiag._core.jit import FAST, JIT
from bpdiag._core.slots import (
    L_ACT_MEAN,
    L_ACT_STD,
    L_DELTA_RMS,
    L_FRAC_DEAD,
    L_FRAC_SAT,
    L_GRAD_B,
    L_GRAD_W,
    L_GRAD_W_CLIPPED,
    L_NONFINITE,
    L_UPDATE_RATIO,
    L_WEIGHT_NORM,
    S_ACC,
    S_CLIP_COEF,
    S_GNORM,
    S_GNORM_CLIPPED,
    S_LOSS,
    S_STEP,
    T_ACT_SQ,
    T_ACT_SUM,
    T_DEAD,
    T_DELTA_SQ,
    T_GB_SQ,
    T_GW_SQ,
    T_SAT,
)


@njit(**FAST)
def activation_sums(code, Z, A, st, zmax):
    """Statistics of a block of rows of one layer, in one pass: Σa and Σa² (in float64) into
    st[T_ACT_SUM], st[T_ACT_SQ]; for tanh (|a| > 0.99) and sigmoid (a < 0.01 or a > 0.99) the
    saturated count into st[T_SAT], for the other activations the column maxima of z into
    zmax[:n] (a unit is dead where z ≤ 0 on every row; for relu Z is the a block, a ≤ 0 ⇔ z ≤ 0).
    Blocks of rows combine by adding the sums and taking the larger zmax (``dead_units``)."""
    mb, n = Z.shape
    flat = A.ravel()  # one loop over the contiguous block: one reduction, not one per row
    s = 0.0
    s2 = 0.0
    sat = 0.0
    if code == TANH:
        for i in range(flat.size):
            a = flat[i]
            s += np.float64(a)
            s2 += np.float64(a) * np.float64(a)
            sat += 1.0 if abs(a) > 0.99 else 0.0
    elif code == SIGMOID:
        for i in range(flat.size):
            a = flat[i]
            s += np.float64(a)
            s2 += np.float64(a) * np.float64(a)
            sat += 1.0 if (a < 0.01) | (a > 0.99) else 0.0
    else:
        zmax[:n] = -np.inf
        for i in range(mb):
            for j in range(n):
                a = A[i, j]
                s += np.float64(a)
                s2 += np.float64(a) * np.float64(a)
                zmax[j] = max(zmax[j], Z[i, j])
    st[T_ACT_SUM] = s
    st[T_ACT_SQ] = s2
    st[T_SAT] = sat


@njit(**JIT)
def dead_units(code, zmax):
    """Units with zmax ≤ 0 (``activation_sums``); 0 for tanh and sigmoid, which keep no zmax."""
    dead = 0.0
    if code != TANH and code != SIGMOID:
        for j in range(zmax.size):
            dead += 1.0 if zmax[j] <= 0 else 0.0
    return dead


@njit(**JIT)
def activation_stats(net, buf, mb, zmax):
    """Every layer's activation statistics over the first mb rows into buf.stats
    (zmax: (L, max width) scratch)."""
    L = net.sizes.size - 1
    for k in range(L):
        n, off = net.sizes[k + 1], buf.a_off[k + 1]
        code = net.act if k < L - 1 else net.out_act
        activation_sums(code, z_block(code, buf, off, mb, n), block(buf.acts, off, mb, n),
                        buf.stats[k], zmax[k])  # fmt: skip
        buf.stats[k, T_DEAD] = dead_units(code, zmax[k, :n])


@njit(**JIT)
def record_gradients(rec, row, step, loss, acc, total_sq, net, buf, mb):
    """The part of a record known before the update: step, loss, accuracy, ‖g‖, and per layer the
    gradient norms, the error signal's RMS, the activation statistics and non-finite counts."""
    L = net.sizes.size - 1
    act = net.act
    rec.steps[row, S_STEP] = step
    rec.steps[row, S_LOSS] = loss
    rec.steps[row, S_ACC] = acc
    rec.steps[row, S_GNORM] = math.sqrt(total_sq)
    relu_family = act == RELU or act == LEAKY_RELU or act == ELU or act == SELU or act == GELU
    for k in range(L):
        n_in, n_out = net.sizes[k], net.sizes[k + 1]
        st, out = buf.stats[k], rec.layers[row, k]
        out[L_GRAD_W] = math.sqrt(st[T_GW_SQ])
        out[L_GRAD_B] = math.sqrt(st[T_GB_SQ])
        # per-sample error ‖∂ℓ_i/∂z_l‖ = mb ‖δ_l[i]‖, its RMS over the batch = √(mb Σ δ²)
        out[L_DELTA_RMS] = math.sqrt(mb * st[T_DELTA_SQ])
        cnt = mb * n_out
        mean = st[T_ACT_SUM] / cnt
        out[L_ACT_MEAN] = mean
        out[L_ACT_STD] = math.sqrt(max(st[T_ACT_SQ] / cnt - mean * mean, 0.0))
        hidden = k < L - 1
        out[L_FRAC_SAT] = st[T_SAT] / cnt if hidden and (act == SIGMOID or act == TANH) else np.nan
        out[L_FRAC_DEAD] = st[T_DEAD] / n_out if hidden and relu_family else np.nan
        bad = 0
        if not math.isfinite(st[T_GW_SQ] + st[T_GB_SQ]):  # a finite sum of squares has no NaN/Inf
            w0, b0 = net.w_off[k], net.b_off[k]
            for p in range(w0, w0 + n_out * n_in):
                bad += 0 if math.isfinite(buf.grads[p]) else 1
            for p in range(b0, b0 + n_out):
                bad += 0 if math.isfinite(buf.grads[p]) else 1
        out[L_NONFINITE] = bad


@njit(**JIT)
def record_update(rec, row, net, setup, coef, total_sq, sums, seg):
    """The rest of the record, from the optimizer's sums of each piece (``sums``, (pieces, 3):
    ‖Δθ‖², ‖θ‖², ‖g‖²): per layer ‖∂L/∂W_l‖ after clipping, ‖W_l‖ and ‖ΔW_l‖/‖W_l‖; the total
    clipped norm and the clipping factor. seg: (2L, 3) scratch, one row per W_l and b_l."""
    pcs = setup.pieces
    seg[:] = 0.0
    for q in range(pcs.shape[1]):
        seg[pcs[2, q]] += sums[q]
    clipped_sq = 0.0
    for k in range(net.sizes.size - 1):
        dsq, wsq, gwsq = seg[2 * k, 0], seg[2 * k, 1], seg[2 * k, 2]
        clipped_sq += gwsq + seg[2 * k + 1, 2]
        rec.layers[row, k, L_GRAD_W_CLIPPED] = math.sqrt(gwsq)
        rec.layers[row, k, L_WEIGHT_NORM] = math.sqrt(wsq)
        rec.layers[row, k, L_UPDATE_RATIO] = math.sqrt(dsq / wsq) if wsq > 0 else np.inf
    rec.steps[row, S_GNORM_CLIPPED] = math.sqrt(clipped_sq)
    if setup.clip == CLIP_NORM:
        rec.steps[row, S_CLIP_COEF] = coef
    else:
        rec.steps[row, S_CLIP_COEF] = math.sqrt(clipped_sq / total_sq) if total_sq > 0 else 1.0
