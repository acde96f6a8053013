"""The training loop kernel: minibatch steps with the NaN guard, clipping, the optimizer and
per-layer records, one call per chunk of steps (``bpdiag.train`` drives it).

``train_steps`` runs the passes of ``bpdiag.kernels`` on one thread, or those of
``bpdiag.parallel`` on codes[C_PARALLEL] threads; the optimizer goes over ``parallel.pieces``
either way.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from bpdiag import kernels, parallel
from bpdiag.activations import ELU, GELU, LEAKY_RELU, RELU, SELU, SIGMOID, TANH
from bpdiag.clipping import NORM
from bpdiag.jit import JIT
from bpdiag.kernels import (
    C_ACT,
    C_CLIP,
    C_LOSS,
    C_OPT,
    C_OUT_ACT,
    C_PARALLEL,
    C_STOP_NONFINITE,
    N_STATS,
    T_ACT_SQ,
    T_ACT_SUM,
    T_DEAD,
    T_DELTA_SQ,
    T_GB_SQ,
    T_GW_SQ,
    T_SAT,
    activation_stats,
    block,
    clip,
    loss_delta,
    update,
    z_block,
)

# Columns of the per-record step table and per-record, per-layer table.
STEP_COLUMNS = (
    "step",
    "loss",
    "accuracy",
    "grad_norm_total",
    "grad_norm_total_clipped",
    "clip_coef",
)
S_STEP, S_LOSS, S_ACC, S_GNORM, S_GNORM_CLIPPED, S_CLIP_COEF = range(len(STEP_COLUMNS))
LAYER_COLUMNS = (
    "grad_norm_W",
    "grad_norm_b",
    "grad_norm_W_clipped",
    "delta_rms",
    "weight_norm",
    "update_ratio",
    "act_mean",
    "act_std",
    "frac_saturated",
    "frac_dead",
    "nonfinite",
)
(
    L_GRAD_W,
    L_GRAD_B,
    L_GRAD_W_CLIPPED,
    L_DELTA_RMS,
    L_WEIGHT_NORM,
    L_UPDATE_RATIO,
    L_ACT_MEAN,
    L_ACT_STD,
    L_FRAC_SAT,
    L_FRAC_DEAD,
    L_NONFINITE,
) = range(len(LAYER_COLUMNS))

STATUS_OK, STATUS_NONFINITE = 0, 1


@njit(**JIT)
def _record_layers(rec, act, out_act, sizes, w_off, b_off, a_off, mb, acts, zs, grads, stats,
                   zmax, have_stats):  # fmt: skip
    """Per-layer record of the current step: gradient sums from the passes that computed them,
    activation statistics from the activations the forward pass left in ``acts``/``zs`` (unless
    the two-core forward pass took them already: ``have_stats``; zmax: (L, max width) scratch)."""
    L = sizes.size - 1
    relu_family = act == RELU or act == LEAKY_RELU or act == ELU or act == SELU or act == GELU
    for k in range(L):
        n_in, n_out = sizes[k], sizes[k + 1]
        st = stats[k]
        code = act if k < L - 1 else out_act
        if not have_stats:
            activation_stats(code, z_block(code, zs, acts, a_off[k + 1], mb, n_out),
                             block(acts, a_off[k + 1], mb, n_out), st, zmax[k])  # fmt: skip
        rec[k, L_GRAD_W] = math.sqrt(st[T_GW_SQ])
        rec[k, L_GRAD_B] = math.sqrt(st[T_GB_SQ])
        # per-sample error ‖∂ℓ_i/∂z_l‖ = mb ‖δ_l[i]‖, its RMS over the batch = √(mb Σ δ²)
        rec[k, L_DELTA_RMS] = math.sqrt(mb * st[T_DELTA_SQ])
        cnt = mb * n_out
        mean = st[T_ACT_SUM] / cnt
        rec[k, L_ACT_MEAN] = mean
        rec[k, L_ACT_STD] = math.sqrt(max(st[T_ACT_SQ] / cnt - mean * mean, 0.0))
        hidden = k < L - 1
        rec[k, L_FRAC_SAT] = (
            st[T_SAT] / cnt if hidden and (act == SIGMOID or act == TANH) else np.nan
        )
        rec[k, L_FRAC_DEAD] = st[T_DEAD] / n_out if hidden and relu_family else np.nan
        bad = 0
        if not math.isfinite(st[T_GW_SQ] + st[T_GB_SQ]):  # a finite sum of squares has no NaN/Inf
            w0, b0 = w_off[k], b_off[k]
            for p in range(w0, w0 + n_out * n_in):
                bad += 0 if math.isfinite(grads[p]) else 1
            for p in range(b0, b0 + n_out):
                bad += 0 if math.isfinite(grads[p]) else 1
        rec[k, L_NONFINITE] = bad


@njit(**JIT)
def train_steps(
    theta, grads, state, hp, clip_value, codes, sizes, w_off, b_off, a_off, pcs,
    acts, zs, deltas, Yb, X, Y, idx, starts, step0, last_step, record_every,
    rec_step, rec_layer, row, counters,
):  # fmt: skip
    """Run len(starts) − 1 optimizer steps; step s uses rows idx[starts[s]:starts[s+1]] of X, Y.

    Records at steps ≡ 0 (mod record_every), at ``last_step`` and at a non-finite step into
    ``rec_step[row]``/``rec_layer[row]``, advancing ``row``; counters[0] counts clipped steps.
    The statistics come from the passes that compute the step, so recording costs little.
    pcs: the optimizer's pieces (``parallel.pieces``). The passes are those of
    ``bpdiag.kernels`` on one thread, or of ``bpdiag.parallel`` on codes[C_PARALLEL] > 1
    threads: one kernel holds both, since compiling the step twice cost more than the parallel
    passes do. Returns (steps done, row, status).
    """
    L = sizes.size - 1
    n_in, n_out = sizes[0], sizes[L]
    n_steps = starts.size - 1
    opt, clip_code, act, out_act = codes[C_OPT], codes[C_CLIP], codes[C_ACT], codes[C_OUT_ACT]
    threads = codes[C_PARALLEL]
    par = threads > 1
    n_pcs = pcs.shape[1]
    stats = np.zeros((L, N_STATS))
    sums = np.zeros((n_pcs, 3))  # (‖Δθ‖², ‖θ‖², ‖g‖²) of each piece
    seg = np.zeros((2 * L, 3))  # the same per W_l and b_l
    zmax = np.empty((threads, L, sizes.max()))  # scratch of the activation statistics: per
    part = np.empty((threads, L, N_STATS))  # thread (row block of the two-core forward) and layer
    sc = np.empty((n_pcs, 10), theta.dtype)
    for s in range(n_steps):
        step = step0 + s
        lo = starts[s]
        mb = starts[s + 1] - lo
        Xb = block(acts, a_off[0], mb, n_in)
        Yv = Yb[:mb]
        for i in range(mb):
            r = idx[lo + i]
            Xb[i, :] = X[r, :]
            Yv[i, :] = Y[r, :]
        cadence = step % record_every == 0 or step == last_step  # a record step, unless it fails
        if par:
            parallel.forward(theta, sizes, w_off, b_off, a_off, mb, acts, zs, act, out_act,
                             threads, cadence, stats, part, zmax)  # fmt: skip
        else:
            kernels.forward(theta, sizes, w_off, b_off, a_off, mb, acts, zs, act, out_act)
        loss, acc = loss_delta(codes[C_LOSS], z_block(out_act, zs, acts, a_off[L], mb, n_out),
                               block(acts, a_off[L], mb, n_out), Yv,
                               block(deltas, a_off[L], mb, n_out))  # fmt: skip
        if par:
            parallel.backward(theta, sizes, w_off, b_off, a_off, mb, acts, zs, deltas, grads, act,
                              out_act, stats)  # fmt: skip
        else:
            kernels.backward(theta, sizes, w_off, b_off, a_off, mb, acts, zs, deltas, grads, act,
                             out_act, stats)  # fmt: skip
        total_sq = 0.0
        for k in range(L):
            total_sq += stats[k, T_GW_SQ] + stats[k, T_GB_SQ]
        finite = math.isfinite(loss) and math.isfinite(total_sq)
        stop = codes[C_STOP_NONFINITE] != 0 and not finite
        recording = cadence or stop
        if recording:
            rec_step[row, S_STEP] = step
            rec_step[row, S_LOSS] = loss
            rec_step[row, S_ACC] = acc
            rec_step[row, S_GNORM] = math.sqrt(total_sq)
            _record_layers(rec_layer[row], act, out_act, sizes, w_off, b_off, a_off, mb, acts, zs,
                           grads, stats, zmax[0], par and cadence)  # fmt: skip
        if stop:  # keep the failing step's record; nothing is clipped or updated
            return s, row + 1, STATUS_NONFINITE
        coef, clipped = clip(clip_code, clip_value, theta, grads, sizes, w_off, b_off, total_sq)
        counters[0] += clipped
        if par:
            parallel.update(opt, hp, step + 1, theta, grads, coef, state, pcs, sums, sc)
        else:
            for q in range(n_pcs):
                dsq, wsq, gsq = update(opt, hp, step + 1, theta, grads, coef, state, pcs[0, q],
                                       pcs[1, q], sc[q])  # fmt: skip
                sums[q, 0], sums[q, 1], sums[q, 2] = dsq, wsq, gsq
        if recording:
            seg[:] = 0.0
            for q in range(n_pcs):
                seg[pcs[2, q]] += sums[q]
            clipped_sq = 0.0
            for k in range(L):
                dsq, wsq, gwsq = seg[2 * k, 0], seg[2 * k, 1], seg[2 * k, 2]
                clipped_sq += gwsq + seg[2 * k + 1, 2]
                rec_layer[row, k, L_GRAD_W_CLIPPED] = math.sqrt(gwsq)
                rec_layer[row, k, L_WEIGHT_NORM] = math.sqrt(wsq)
                rec_layer[row, k, L_UPDATE_RATIO] = math.sqrt(dsq / wsq) if wsq > 0 else np.inf
            rec_step[row, S_GNORM_CLIPPED] = math.sqrt(clipped_sq)
            if clip_code == NORM:
                rec_step[row, S_CLIP_COEF] = coef
            else:
                rec_step[row, S_CLIP_COEF] = (
                    math.sqrt(clipped_sq / total_sq) if total_sq > 0 else 1.0
                )
            row += 1
    return n_steps, row, STATUS_OK
