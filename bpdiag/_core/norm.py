"""Normalization of a hidden layer's pre-activation, and the residual branch's passes.

A normalized layer computes z = a_{l−1} Wᵀ + b, ẑ = (z − μ)/√(σ² + ε), u = γ ⊙ ẑ + β, h = φ(u)
(Ioffe & Szegedy's placement), with ε = 1e-5 and the statistics of ``torch.nn.BatchNorm1d``
and ``torch.nn.LayerNorm(n)``:

- BatchNorm, training: μ_j and the *biased* σ²_j of unit j over the batch's rows; the running
  mean and variance then move by ``BN_MOMENTUM`` toward μ_j and the *unbiased* variance
  σ²_j m/(m − 1) (``update_running``). Evaluation: μ and σ² are the running statistics.
- LayerNorm: μ_i and the biased σ²_i of row i over its n units, in training and evaluation.

Backward, with g = γ ⊙ ∂L/∂u: ∂L/∂γ = Σ_rows ∂L/∂u ⊙ ẑ, ∂L/∂β = Σ_rows ∂L/∂u, and
∂L/∂z = (g − mean(g) − ẑ ⊙ mean(g ⊙ ẑ)) / √(σ² + ε), the means over the batch (BatchNorm, per
unit) or over the row's units (LayerNorm). Statistics are taken in float64.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from bpdiag._core import vmath
from bpdiag._core.codes import (
    BATCHNORM,
    BN_MOMENTUM,
    LINEAR,
    NORM_LAYER_EPS,
    RELU,
    SIGMOID,
    TANH,
    TRAIN,
)
from bpdiag._core.elementwise import dphi
from bpdiag._core.jit import FAST, INLINE, JIT
from bpdiag._core.structs import NM_ISTD, NM_MEAN, NM_SUM_G, NM_SUM_GZ, NM_VAR


@njit(**FAST)
def batch_statistics(Z, b, st):
    """Z += b in place; per column of Z: mean, biased variance and 1/√(var + ε) into ``st``
    (two passes over the rows)."""
    mb, n = Z.shape
    mean, var, istd = st[NM_MEAN, :n], st[NM_VAR, :n], st[NM_ISTD, :n]
    mean[:] = 0.0
    var[:] = 0.0
    for i in range(mb):
        for j in range(n):
            z = Z[i, j] + b[j]
            Z[i, j] = z
            mean[j] += np.float64(z)
    for j in range(n):
        mean[j] /= mb
    for i in range(mb):
        for j in range(n):
            d = np.float64(Z[i, j]) - mean[j]
            var[j] += d * d
    for j in range(n):
        var[j] /= mb
        istd[j] = 1.0 / math.sqrt(var[j] + NORM_LAYER_EPS)


@njit(**FAST)
def by_unit(Z, b, st, gamma, U, add_bias):
    """ẑ = (z − μ_j)·istd_j into Z (in place; z = Z + b where ``add_bias``) and γ ẑ into U,
    with the per-unit statistics of ``st``."""
    mb, n = Z.shape
    mean, istd = st[NM_MEAN, :n], st[NM_ISTD, :n]
    for i in range(mb):
        for j in range(n):
            z = Z[i, j] + b[j] if add_bias else Z[i, j]
            zh = (np.float64(z) - mean[j]) * istd[j]
            Z[i, j] = zh
            U[i, j] = gamma[j] * Z[i, j]


@njit(**FAST)
def _by_row(Z, b, st, gamma, U):
    """LayerNorm of each row of Z + b: ẑ into Z (in place), γ ẑ into U, each row's mean and
    1/√(var + ε) into st[NM_MEAN, i], st[NM_ISTD, i]."""
    mb, n = Z.shape
    for i in range(mb):
        row = Z[i]
        s = 0.0
        for j in range(n):
            z = row[j] + b[j]
            row[j] = z
            s += np.float64(z)
        mean = s / n
        s2 = 0.0
        for j in range(n):
            d = np.float64(row[j]) - mean
            s2 += d * d
        istd = 1.0 / math.sqrt(s2 / n + NORM_LAYER_EPS)
        st[NM_MEAN, i] = mean
        st[NM_VAR, i] = s2 / n
        st[NM_ISTD, i] = istd
        for j in range(n):
            row[j] = (np.float64(row[j]) - mean) * istd
            U[i, j] = gamma[j] * row[j]


@njit(**JIT)
def merge_statistics(parts, counts, st, n):
    """The batch's per-unit mean, biased variance and 1/√(var + ε) into st from the blocks'
    (``batch_statistics`` over counts[t] rows each into parts[t]): mean = Σ n_t μ_t / m and
    var = Σ n_t (σ²_t + (μ_t − mean)²) / m (Chan, Golub & LeVeque: no cancellation)."""
    m = 0
    for t in range(counts.size):
        m += counts[t]
    for j in range(n):
        mean = 0.0
        for t in range(counts.size):
            if counts[t] > 0:  # an empty block's statistics are 0/0
                mean += counts[t] * parts[t, NM_MEAN, j]
        mean /= m
        var = 0.0
        for t in range(counts.size):
            if counts[t] > 0:
                d = parts[t, NM_MEAN, j] - mean
                var += counts[t] * (parts[t, NM_VAR, j] + d * d)
        var /= m
        st[NM_MEAN, j] = mean
        st[NM_VAR, j] = var
        st[NM_ISTD, j] = 1.0 / math.sqrt(var + NORM_LAYER_EPS)


@njit(**JIT)
def normalize(norm, mode, Z, b, gamma, U, st, run_mean, run_var):
    """z = Z + b → ẑ (in place in Z) and γ ẑ (into U; the activation's pass adds β) for
    ``norm``; BatchNorm takes the batch's statistics in ``TRAIN`` mode (into ``st``) and the
    running ones otherwise."""
    if norm == BATCHNORM:
        n = Z.shape[1]
        batch = mode == TRAIN
        if batch:
            batch_statistics(Z, b, st)  # adds b
        else:
            for j in range(n):
                st[NM_MEAN, j] = run_mean[j]
                st[NM_ISTD, j] = 1.0 / math.sqrt(np.float64(run_var[j]) + NORM_LAYER_EPS)
        by_unit(Z, b, st, gamma, U, not batch)
    else:
        _by_row(Z, b, st, gamma, U)


@njit(**JIT)
def update_running(run_mean, run_var, st, mb):
    """The running statistics after a training batch of mb rows (``torch.nn.BatchNorm1d``)."""
    unbiased = mb / (mb - 1.0)
    for j in range(run_mean.size):
        run_mean[j] = (1.0 - BN_MOMENTUM) * run_mean[j] + BN_MOMENTUM * st[NM_MEAN, j]
        run_var[j] = (1.0 - BN_MOMENTUM) * run_var[j] + BN_MOMENTUM * st[NM_VAR, j] * unbiased


@njit(**INLINE)
def _take(D, Zh, i, j, g, sg, sgz):
    """∂L/∂u = g into D[i, j]; its share of the per-unit sums; returns g² (float64)."""
    D[i, j] = g
    g64 = np.float64(g)
    sg[j] += g64
    sgz[j] += g64 * np.float64(Zh[i, j])
    return g64 * g64


@njit(**FAST)
def affine_grads(code, D, Zh, H, gamma, beta, c, sg, sgz):
    """∂L/∂u = c ∂L/∂h ⊙ φ'(u) in place of D (φ' from h = φ(u), or from u = γ ẑ + β where it
    needs u), with its sums per unit Σ ∂L/∂u into sg and Σ ∂L/∂u ⊙ ẑ into sgz (the gradients
    of β and γ); returns Σ (∂L/∂u)². A loop per activation, so that each one vectorizes."""
    mb, n = D.shape
    scale, one, zero = vmath.scalar(c, D), vmath.scalar(1.0, D), vmath.scalar(0.0, D)
    sg[:n] = 0.0
    sgz[:n] = 0.0
    su = 0.0
    if code == RELU:
        for i in range(mb):
            for j in range(n):
                su += _take(D, Zh, i, j, D[i, j] * scale if H[i, j] > zero else zero, sg, sgz)
    elif code == TANH:
        for i in range(mb):
            for j in range(n):
                h = H[i, j]
                su += _take(D, Zh, i, j, D[i, j] * scale * (one - h * h), sg, sgz)
    elif code == SIGMOID:
        for i in range(mb):
            for j in range(n):
                h = H[i, j]
                su += _take(D, Zh, i, j, D[i, j] * scale * (h * (one - h)), sg, sgz)
    elif code == LINEAR:
        for i in range(mb):
            for j in range(n):
                su += _take(D, Zh, i, j, D[i, j] * scale, sg, sgz)
    else:
        for i in range(mb):
            for j in range(n):
                u = gamma[j] * Zh[i, j] + beta[j]
                su += _take(D, Zh, i, j, D[i, j] * scale * dphi(code, u, H[i, j]), sg, sgz)
    return su


@njit(**FAST)
def batch_coefficients(gamma, st, n, mb):
    """BatchNorm's backward, δ = (g − mean(g) − ẑ mean(g ẑ)) / √(σ² + ε) with g = γ ∂L/∂u, is
    δ_ij = γ_j istd_j ∂L/∂u_ij + p_j + q_j ẑ_ij: p_j and q_j in place of the sums Σ ∂L/∂u and
    Σ ∂L/∂u ⊙ ẑ over the batch's mb rows in st (``affine_grads`` left them), for n units."""
    sg, sgz, istd = st[NM_SUM_G, :n], st[NM_SUM_GZ, :n], st[NM_ISTD, :n]
    for j in range(n):
        sg[j] = -sg[j] * gamma[j] * istd[j] / mb
        sgz[j] = -sgz[j] * gamma[j] * istd[j] / mb


@njit(**FAST)
def batch_delta(D, Zh, gamma, st, db):
    """δ from ∂L/∂u in place over the rows of D (all the batch's, or a block of them), with
    ``batch_coefficients``' p and q in st; Σ_rows δ into db; returns Σδ²."""
    mb, n = D.shape
    p, q, istd = st[NM_SUM_G, :n], st[NM_SUM_GZ, :n], st[NM_ISTD, :n]
    zero = vmath.scalar(0.0, D)
    db[:] = zero
    sd = 0.0
    for i in range(mb):
        for j in range(n):
            d = np.float64(D[i, j]) * (gamma[j] * istd[j]) + p[j] + np.float64(Zh[i, j]) * q[j]
            D[i, j] = d
            db[j] += D[i, j]
            sd += np.float64(D[i, j]) * np.float64(D[i, j])
    return sd


@njit(**FAST)
def _layer_backward(D, Zh, gamma, st, db):
    """LayerNorm's δ = (g − mean(g) − ẑ mean(g ẑ)) / √(σ² + ε) in place, g = γ ∂L/∂u (D), the
    means over each row's units; ∂L/∂b = Σ_rows δ into db; returns Σδ²."""
    mb, n = D.shape
    zero = vmath.scalar(0.0, D)
    db[:] = zero
    sd = 0.0
    for i in range(mb):
        mg = 0.0
        mgz = 0.0
        for j in range(n):
            g = np.float64(gamma[j]) * np.float64(D[i, j])
            mg += g
            mgz += g * np.float64(Zh[i, j])
        istd = st[NM_ISTD, i]
        mg *= istd / n
        mgz *= istd / n
        for j in range(n):
            d = np.float64(gamma[j]) * istd * np.float64(D[i, j]) - mg - np.float64(Zh[i, j]) * mgz
            D[i, j] = d
            db[j] += D[i, j]
            sd += np.float64(D[i, j]) * np.float64(D[i, j])
    return sd


@njit(**JIT)
def norm_backward(code, norm, D, Zh, H, gamma, beta, st, c, dgamma, dbeta, db):
    """From D = ∂L/∂h (times c, the residual scale, or 1) to δ = ∂L/∂z in place, with ∂L/∂γ,
    ∂L/∂β and ∂L/∂b written and (Σδ², Σ(∂L/∂u)²) returned, in float64.

    Zh: ẑ; H: h = φ(u); st: the forward's statistics, and room for the sums per unit."""
    n = D.shape[1]
    su = affine_grads(code, D, Zh, H, gamma, beta, c, st[NM_SUM_G], st[NM_SUM_GZ])
    for j in range(n):
        dbeta[j] = st[NM_SUM_G, j]
        dgamma[j] = st[NM_SUM_GZ, j]
    if norm == BATCHNORM:
        batch_coefficients(gamma, st, n, D.shape[0])
        sd = batch_delta(D, Zh, gamma, st, db)
    else:
        sd = _layer_backward(D, Zh, gamma, st, db)
    return sd, su


@njit(**FAST)
def skip_add(A, A_prev, H, alpha):
    """a = a_{l−1} + α h over the (mb, n) block."""
    mb, n = A.shape
    a = vmath.scalar(alpha, A)
    for i in range(mb):
        for j in range(n):
            A[i, j] = A_prev[i, j] + a * H[i, j]


@njit(**FAST)
def copy_block(src, dst):
    """dst[:] = src over two (mb, n) blocks (the skip's share of ∂L/∂a_{l−1})."""
    mb, n = src.shape
    for i in range(mb):
        for j in range(n):
            dst[i, j] = src[i, j]
