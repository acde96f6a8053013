"""The recorders: per-layer statistics of a step, and the record they make (``slots``).

The gradient sums (‖∂L/∂W_l‖², ‖∂L/∂b_l‖², ‖(∂L/∂γ_l, ∂L/∂β_l)‖², Σδ_l²) come from the
backward pass every step, and
‖Δθ‖², ‖θ‖², ‖g‖² from the optimizer's pass. The activation statistics take one pass over the
activations the forward pass left, and the per-sample gradient statistics one pass over the
δ_l and a_{l−1} the backward pass left, on record steps only.

Per-sample gradients (Goodfellow 2015): the batch-mean loss is L = (1/m) Σ_i ℓ_i, and δ_l holds
∂L/∂z_l, so sample i's gradient of a dense layer's (W_l, b_l) is g_{l,i} = m δ_{l,i} [a_{l−1,i}; 1]ᵀ,
a rank-one matrix: ‖g_{l,i}‖² = m² ‖δ_{l,i}‖² (‖a_{l−1,i}‖² + 1) exactly. With G_l = (1/m) Σ_i g_{l,i}
the layer's batch gradient (population, i.e. plug-in, moments over the m samples of the step):

    E‖g_l‖² = (1/m) Σ_i ‖g_{l,i}‖²,     tr Σ_l = E‖g_l‖² − ‖G_l‖²,
    B_l = tr Σ_l / ‖G_l‖²  (the simple noise scale, McCandlish et al. 2018, arXiv:1812.06162),
    SNR_l = ‖G_l‖² / (tr Σ_l / m) = m / B_l  (signal over the variance of a mean of m samples).

The totals over all layers add E‖g‖², ‖G‖² and tr Σ layer by layer (the squared norms of disjoint
parameter blocks add). γ and β of a normalized layer are not included; a BatchNorm net gets NaN,
its samples' gradients not being separable (the batch statistics couple them).
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from bpdiag._core.codes import (
    BATCHNORM,
    CLIP_NORM,
    ELU,
    GELU,
    LEAKY_RELU,
    RELU,
    SELU,
    SIGMOID,
    TANH,
)
from bpdiag._core.forward import block
from bpdiag._core.jit import FAST, JIT
from bpdiag._core.slots import (
    L_ACT_MEAN,
    L_ACT_STD,
    L_DELTA_RMS,
    L_DELTA_RMS_NORMED,
    L_FRAC_DEAD,
    L_FRAC_SAT,
    L_GRAD_AFFINE,
    L_GRAD_B,
    L_GRAD_W,
    L_GRAD_W_CLIPPED,
    L_NOISE,
    L_NONFINITE,
    L_SAMPLE_SQ,
    L_SNR,
    L_UPDATE_RATIO,
    L_WEIGHT_NORM,
    S_ACC,
    S_CLIP_COEF,
    S_GNORM,
    S_GNORM_CLIPPED,
    S_LOSS,
    S_NOISE,
    S_SAMPLE_SQ,
    S_SNR,
    S_STEP,
    T_ACT_SQ,
    T_ACT_SUM,
    T_DEAD,
    T_DELTA_SQ,
    T_DELTA_U_SQ,
    T_GAFF_SQ,
    T_GB_SQ,
    T_GW_SQ,
    T_SAMPLE_SQ,
    T_SAT,
)


@njit(**FAST)
def activation_sums(code, H, A, st, hmax):
    """Statistics of a block of rows of one layer, in one pass: Σa and Σa² of its output a
    (in float64) into st[T_ACT_SUM], st[T_ACT_SQ]; over h = φ(u) (h is a but where a skip
    connection adds a_{l−1}), for tanh (|h| > 0.99) and sigmoid (h < 0.01 or h > 0.99) the
    saturated count into st[T_SAT], for the other activations the column maxima into hmax[:n]
    (a unit is dead where its u ≤ 0 on every row, and for the ReLU family u ≤ 0 ⇔ h ≤ 0).
    Blocks of rows combine by adding the sums and taking the larger hmax (``dead_units``)."""
    mb, n = A.shape
    fa, fh = A.ravel(), H.ravel()  # one loop over contiguous blocks: one reduction, not one per row
    s = 0.0
    s2 = 0.0
    sat = 0.0
    if code == TANH:
        for i in range(fa.size):
            a = np.float64(fa[i])
            s += a
            s2 += a * a
            sat += 1.0 if abs(fh[i]) > 0.99 else 0.0
    elif code == SIGMOID:
        for i in range(fa.size):
            a = np.float64(fa[i])
            s += a
            s2 += a * a
            h = fh[i]
            sat += 1.0 if (h < 0.01) | (h > 0.99) else 0.0
    else:
        hmax[:n] = -np.inf
        for i in range(mb):
            for j in range(n):
                a = np.float64(A[i, j])
                s += a
                s2 += a * a
                hmax[j] = max(hmax[j], H[i, j])
    st[T_ACT_SUM] = s
    st[T_ACT_SQ] = s2
    st[T_SAT] = sat


@njit(**JIT)
def dead_units(code, hmax):
    """Units with hmax ≤ 0 (``activation_sums``); 0 for tanh and sigmoid, which keep no hmax."""
    dead = 0.0
    if code != TANH and code != SIGMOID:
        for j in range(hmax.size):
            dead += 1.0 if hmax[j] <= 0 else 0.0
    return dead


@njit(**JIT)
def h_block(net, k, buf, off, rows):
    """The (rows, n_l) block of h_l = φ(u_l): its own where layer l has a skip, else a_l's."""
    n = net.sizes[k + 1]
    return block(buf.hs if net.skip[k] != 0 else buf.acts, off, rows, n)


@njit(**JIT)
def activation_stats(net, buf, mb, hmax):
    """Every layer's activation statistics over the first mb rows into buf.stats
    (hmax: (L, max width) scratch)."""
    L = net.sizes.size - 1
    for k in range(L):
        n, off = net.sizes[k + 1], buf.a_off[k + 1]
        code = net.act if k < L - 1 else net.out_act
        activation_sums(code, h_block(net, k, buf, off, mb), block(buf.acts, off, mb, n),
                        buf.stats[k], hmax[k])  # fmt: skip
        buf.stats[k, T_DEAD] = dead_units(code, hmax[k, :n])


@njit(**JIT)
def grad_sq(net, buf, k):
    """‖∂L/∂θ_l‖² of layer l = k + 1: its W and b, and its γ and β where it has them."""
    st = buf.stats[k]
    return st[T_GW_SQ] + st[T_GB_SQ] + (st[T_GAFF_SQ] if net.g_off[k] >= 0 else 0.0)


@njit(**FAST)
def sample_sq_sum(D, A):
    """Σ_i ‖δ_i‖² (‖a_i‖² + 1) over the rows of D = δ_l (mb, n_l) and A = a_{l−1} (mb, n_{l−1}),
    in float64: (1/m) of the per-sample gradients' Σ_i ‖g_{l,i}‖², as the module says."""
    s = 0.0
    for i in range(D.shape[0]):
        d2 = 0.0
        for j in range(D.shape[1]):
            d2 += np.float64(D[i, j]) * np.float64(D[i, j])
        a2 = 1.0
        for j in range(A.shape[1]):
            a2 += np.float64(A[i, j]) * np.float64(A[i, j])
        s += d2 * a2
    return s


@njit(**JIT)
def noise_stats(out, mean_sq, grad_sq, mb, resolution, i_sq, i_noise, i_snr):
    """E‖g‖², B = tr Σ / ‖G‖² and SNR = m ‖G‖² / tr Σ into out[i_sq, i_noise, i_snr] from E‖g‖²
    and ‖G‖². tr Σ = E‖g‖² − ‖G‖² is ≥ 0 in exact arithmetic and 0 for one sample; a difference
    within ``resolution`` × E‖g‖² is rounding (‖G‖² comes from gradients in the net's dtype),
    and counts as 0."""
    trace = mean_sq - grad_sq
    if mb == 1 or trace <= resolution * mean_sq:
        trace = 0.0
    out[i_sq] = mean_sq
    out[i_noise] = trace / grad_sq if grad_sq > 0 else (np.nan if trace == 0 else np.inf)
    out[i_snr] = mb * grad_sq / trace if trace > 0 else (np.nan if grad_sq == 0 else np.inf)


@njit(**JIT)
def sample_sums(net, buf, mb):
    """Every layer's ``sample_sq_sum`` over the first mb rows into buf.stats[k, T_SAMPLE_SQ]
    (the two-core step takes them block by block in its passes)."""
    if net.norm == BATCHNORM:
        return  # no per-sample gradients
    for k in range(net.sizes.size - 1):
        n_in, n_out = net.sizes[k], net.sizes[k + 1]
        buf.stats[k, T_SAMPLE_SQ] = sample_sq_sum(block(buf.deltas, buf.a_off[k + 1], mb, n_out),
                                                  block(buf.acts, buf.a_off[k], mb, n_in))  # fmt: skip


@njit(**JIT)
def record_samples(rec, row, net, buf, mb):
    """The per-sample gradient statistics of every layer and in total (module docstring), from
    buf.stats's sums (``sample_sums``)."""
    L = net.sizes.size - 1
    if net.norm == BATCHNORM:
        return  # the record's NaN stays: no per-sample gradients
    resolution = 8.0 * (1.2e-7 if buf.deltas.itemsize == 4 else 2.3e-16)  # a few ulps
    tot_mean, tot_grad = 0.0, 0.0
    for k in range(L):
        mean_sq = mb * buf.stats[k, T_SAMPLE_SQ]
        g_sq = buf.stats[k, T_GW_SQ] + buf.stats[k, T_GB_SQ]
        noise_stats(rec.layers[row, k], mean_sq, g_sq, mb, resolution, L_SAMPLE_SQ, L_NOISE,
                    L_SNR)  # fmt: skip
        tot_mean += mean_sq
        tot_grad += g_sq
    noise_stats(rec.steps[row], tot_mean, tot_grad, mb, resolution, S_SAMPLE_SQ, S_NOISE, S_SNR)


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
        normed = net.g_off[k] >= 0
        out[L_GRAD_AFFINE] = math.sqrt(st[T_GAFF_SQ]) if normed else np.nan
        out[L_DELTA_RMS_NORMED] = math.sqrt(mb * st[T_DELTA_U_SQ]) if normed else np.nan
        bad = 0
        # a finite sum of squares has no NaN/Inf; the layer's W, b (and γ, β) lie side by side
        if not math.isfinite(grad_sq(net, buf, k)):
            w0 = net.w_off[k]
            for p in range(w0, w0 + n_out * n_in + n_out * (3 if normed else 1)):
                bad += 0 if math.isfinite(buf.grads[p]) else 1
        out[L_NONFINITE] = bad
    record_samples(rec, row, net, buf, mb)


@njit(**JIT)
def record_update(rec, row, net, setup, coef, total_sq, sums, seg):
    """The rest of the record, from the optimizer's sums of each piece (``sums``, (pieces, 3):
    ‖Δθ‖², ‖θ‖², ‖g‖²): per layer ‖∂L/∂W_l‖ after clipping, ‖W_l‖ and ‖ΔW_l‖/‖W_l‖; the total
    clipped norm and the clipping factor. seg: (3L, 3) scratch, one row per W_l, b_l and the
    layer's (γ_l, β_l) (``parallel.pieces``)."""
    pcs = setup.pieces
    seg[:] = 0.0
    for q in range(pcs.shape[1]):
        seg[pcs[2, q]] += sums[q]
    clipped_sq = 0.0
    for k in range(net.sizes.size - 1):
        dsq, wsq, gwsq = seg[3 * k, 0], seg[3 * k, 1], seg[3 * k, 2]
        clipped_sq += gwsq + seg[3 * k + 1, 2] + seg[3 * k + 2, 2]
        rec.layers[row, k, L_GRAD_W_CLIPPED] = math.sqrt(gwsq)
        rec.layers[row, k, L_WEIGHT_NORM] = math.sqrt(wsq)
        rec.layers[row, k, L_UPDATE_RATIO] = math.sqrt(dsq / wsq) if wsq > 0 else np.inf
    rec.steps[row, S_GNORM_CLIPPED] = math.sqrt(clipped_sq)
    if setup.clip == CLIP_NORM:
        rec.steps[row, S_CLIP_COEF] = coef
    else:
        rec.steps[row, S_CLIP_COEF] = math.sqrt(clipped_sq / total_sq) if total_sq > 0 else 1.0
