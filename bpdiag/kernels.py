"""The jitted backprop core: forward, backward, recorders, clipping and optimizer steps.

Conventions (the seed's notation, PyTorch's layout):

- Layers are numbered l = 1..L in the math and k = l − 1 in code. a_0 = x is the input batch;
  z_l = a_{l−1} W_lᵀ + b_l and a_l = φ(z_l), with W_l of shape (n_l, n_{l−1}) and every batch a
  row-major (m, n) block. For ``bce``/``ce`` the output layer keeps a_L = z_L (logits); the loss
  applies the sigmoid/softmax itself, stably.
- δ_l = ∂L/∂z_l for the batch-mean loss L, so ∂L/∂W_l = δ_lᵀ a_{l−1} and ∂L/∂b_l = Σ_rows δ_l,
  and δ_{l−1} = (δ_l W_l) ⊙ φ'(z_{l−1}) (the seed's recursion, batch in rows).
- All parameters live in one flat vector ``theta`` (W_1, b_1, W_2, b_2, …; offsets ``w_off``,
  ``b_off``); gradients ``grads`` and optimizer state rows ``state[s]`` share that layout, so
  clipping and optimizer steps are flat loops.
- Activations, pre-activations and deltas live in flat buffers with one (cap, n_j) block per
  layer j = 0..L at ``a_off[j]``; a batch of mb ≤ cap rows uses the first mb rows.

Integer codes (from the registries) select activation, loss, optimizer and clipping inside one
compiled kernel per dtype.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from bpdiag.activations import (
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
from bpdiag.clipping import AGC, AGC_DIV_EPS, AGC_EPS, LAYER, NONE, NORM, NORM_EPS, VALUE
from bpdiag.losses import BCE, CE
from bpdiag.optim import (
    ADAM,
    ADAMW,
    ALPHA,
    BETA1,
    BETA2,
    CENTERED,
    DAMPENING,
    EPS,
    LR,
    MOMENTUM,
    NESTEROV,
    SGD,
    WEIGHT_DECAY,
)

JIT = {"cache": True, "error_model": "numpy"}

# codes vector: which activation, output activation, loss, optimizer, clipping, NaN guard.
C_ACT, C_OUT_ACT, C_LOSS, C_OPT, C_CLIP, C_STOP_NONFINITE = range(6)
N_CODES = 6

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

INV_SQRT2 = 1.0 / math.sqrt(2.0)
INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)


# ---------------------------------------------------------------- elementwise pieces


@njit(**JIT)
def _sigmoid(z):
    """σ(z) without overflow warnings: e^z/(1+e^z) for z < 0."""
    if z >= 0:
        return 1.0 / (1.0 + math.exp(-z))
    e = math.exp(z)
    return e / (1.0 + e)


@njit(**JIT)
def _phi(code, z):
    """φ(z) for one scalar."""
    if code == SIGMOID:
        return _sigmoid(z)
    if code == TANH:
        return math.tanh(z)
    if code == RELU:
        return z if z > 0 else 0.0 * z
    if code == LEAKY_RELU:
        return z if z > 0 else LEAKY_SLOPE * z
    if code == ELU:
        return z if z > 0 else ELU_ALPHA * math.expm1(z)
    if code == SELU:
        return SELU_LAMBDA * z if z > 0 else SELU_LAMBDA * SELU_ALPHA * math.expm1(z)
    if code == GELU:
        return 0.5 * z * (1.0 + math.erf(z * INV_SQRT2))
    return z


@njit(**JIT)
def _dphi(code, z, a):
    """φ'(z), from the stored activation a = φ(z) where that is cheaper (seed's table)."""
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


@njit(**JIT)
def _bias_activate(code, Z, b, A):
    """z ← z + b (in place) and a = φ(z), for every row of the (mb, n) block."""
    mb, n = Z.shape
    for i in range(mb):
        for j in range(n):
            z = Z[i, j] + b[j]
            Z[i, j] = z
            A[i, j] = _phi(code, z)


@njit(**JIT)
def _times_dphi(code, Z, A, D):
    """D ← D ⊙ φ'(Z)."""
    if code == LINEAR:
        return
    mb, n = Z.shape
    for i in range(mb):
        for j in range(n):
            D[i, j] *= _dphi(code, Z[i, j], A[i, j])


# ---------------------------------------------------------------- forward, loss, backward


@njit(**JIT)
def _block(buf, off, rows, cols):
    return buf[off : off + rows * cols].reshape((rows, cols))


@njit(**JIT)
def forward(theta, sizes, w_off, b_off, a_off, mb, acts, zs, act, out_act):
    """a_0 (already in ``acts``) → z_l, a_l for l = 1..L."""
    L = sizes.size - 1
    for k in range(L):
        n_in, n_out = sizes[k], sizes[k + 1]
        W = _block(theta, w_off[k], n_out, n_in)
        b = theta[b_off[k] : b_off[k] + n_out]
        A_prev = _block(acts, a_off[k], mb, n_in)
        Z = _block(zs, a_off[k + 1], mb, n_out)
        np.dot(A_prev, W.T, Z)
        _bias_activate(act if k < L - 1 else out_act, Z, b, _block(acts, a_off[k + 1], mb, n_out))


@njit(**JIT)
def loss_delta(loss, out_act, Z, A, Y, D):
    """Batch-mean loss, accuracy (NaN for mse) and δ_L = ∂L/∂z_L written into D.

    Z, A, D: (mb, k). Y: (mb, k) targets, or (mb, 1) integer labels stored as floats for ``ce``.
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
                D[i, j] = (_sigmoid(z) - y) * scale
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
    _times_dphi(out_act, Z, A, D)
    return total * scale, np.nan


@njit(**JIT)
def backward(theta, sizes, w_off, b_off, a_off, mb, acts, zs, deltas, grads, act):
    """Given δ_L in ``deltas``: ∂L/∂W_l, ∂L/∂b_l into ``grads`` and δ_l into ``deltas``."""
    L = sizes.size - 1
    for k in range(L - 1, -1, -1):
        n_in, n_out = sizes[k], sizes[k + 1]
        D = _block(deltas, a_off[k + 1], mb, n_out)
        np.dot(D.T, _block(acts, a_off[k], mb, n_in), _block(grads, w_off[k], n_out, n_in))
        db = grads[b_off[k] : b_off[k] + n_out]
        db[:] = 0.0
        for i in range(mb):
            for j in range(n_out):
                db[j] += D[i, j]
        if k > 0:
            D_prev = _block(deltas, a_off[k], mb, n_in)
            np.dot(D, _block(theta, w_off[k], n_out, n_in), D_prev)
            _times_dphi(
                act, _block(zs, a_off[k], mb, n_in), _block(acts, a_off[k], mb, n_in), D_prev
            )


# ---------------------------------------------------------------- clipping and optimizers


@njit(**JIT)
def _sumsq(x, lo, hi):
    s = 0.0
    for p in range(lo, hi):
        s += float(x[p]) * float(x[p])
    return s


@njit(**JIT)
def _scale(x, lo, hi, c):
    for p in range(lo, hi):
        x[p] *= c


@njit(**JIT)
def clip(clip_code, c, theta, grads, sizes, w_off, b_off, total_sq):
    """Clip ``grads`` in place (see ``bpdiag.clipping``); ``total_sq`` = ‖g‖² before clipping.

    Returns (coefficient of ``norm`` clipping or 1.0, whether any entry changed).
    """
    if clip_code == NONE:
        return 1.0, False
    if clip_code == NORM:
        coef = min(c / (math.sqrt(total_sq) + NORM_EPS), 1.0)
        _scale(grads, 0, grads.size, coef)
        return coef, coef < 1.0
    clipped = False
    if clip_code == VALUE:
        for p in range(grads.size):
            g = grads[p]
            grads[p] = min(max(g, -c), c)
            clipped |= grads[p] != g
        return 1.0, clipped
    for k in range(sizes.size - 1):
        n_in, n_out = sizes[k], sizes[k + 1]
        w0, b0 = w_off[k], b_off[k]
        if clip_code == LAYER:
            norm = math.sqrt(_sumsq(grads, w0, w0 + n_out * n_in) + _sumsq(grads, b0, b0 + n_out))
            coef = min(c / (norm + NORM_EPS), 1.0)
            _scale(grads, w0, w0 + n_out * n_in, coef)
            _scale(grads, b0, b0 + n_out, coef)
            clipped |= coef < 1.0
        elif clip_code == AGC:
            for i in range(n_out + 1):  # rows of W, then the bias vector as one unit
                lo, hi = (w0 + i * n_in, w0 + (i + 1) * n_in) if i < n_out else (b0, b0 + n_out)
                g_norm = math.sqrt(_sumsq(grads, lo, hi))
                max_norm = c * max(math.sqrt(_sumsq(theta, lo, hi)), AGC_EPS)
                if not g_norm < max_norm:
                    _scale(grads, lo, hi, max_norm / max(g_norm, AGC_DIV_EPS))
                    clipped = True
    return 1.0, clipped


@njit(**JIT)
def update(opt, hp, t, theta, grads, state, lo, hi):
    """One optimizer step (PyTorch's formulas, see ``bpdiag.optim``) on theta[lo:hi].

    t is the 1-based step count. Returns ‖Δθ‖² over the range.
    """
    lr = hp[LR]
    wd = hp[WEIGHT_DECAY]
    mu = hp[MOMENTUM]
    dsq = 0.0
    if opt == SGD:
        damp = hp[DAMPENING]
        nesterov = hp[NESTEROV] != 0.0
        for p in range(lo, hi):
            old = theta[p]
            g = grads[p] + wd * old if wd != 0.0 else grads[p]
            if mu != 0.0:
                buf = g if t == 1 else mu * state[0, p] + (1.0 - damp) * g
                state[0, p] = buf
                g = g + mu * buf if nesterov else buf
            theta[p] = old - lr * g
            dsq += (float(theta[p]) - float(old)) ** 2
    elif opt == ADAM or opt == ADAMW:
        b1 = hp[BETA1]
        b2 = hp[BETA2]
        eps = hp[EPS]
        step_size = lr / (1.0 - b1**t)
        bc2_sqrt = math.sqrt(1.0 - b2**t)
        decay = 1.0 - lr * wd
        for p in range(lo, hi):
            old = theta[p]
            g = grads[p]
            if opt == ADAMW:
                theta[p] = old * decay
            elif wd != 0.0:
                g = g + wd * old
            m = state[0, p]
            m = m + (1.0 - b1) * (g - m)  # torch: exp_avg.lerp_(grad, 1 - beta1)
            v = state[1, p] * b2 + (1.0 - b2) * g * g
            state[0, p] = m
            state[1, p] = v
            theta[p] = theta[p] - step_size * m / (math.sqrt(v) / bc2_sqrt + eps)
            dsq += (float(theta[p]) - float(old)) ** 2
    else:  # RMSPROP
        alpha = hp[ALPHA]
        eps = hp[EPS]
        centered = hp[CENTERED] != 0.0
        for p in range(lo, hi):
            old = theta[p]
            g = grads[p] + wd * old if wd != 0.0 else grads[p]
            v = state[1, p] * alpha + (1.0 - alpha) * g * g
            state[1, p] = v
            if centered:
                gbar = state[2, p] + (1.0 - alpha) * (g - state[2, p])
                state[2, p] = gbar
                avg = math.sqrt(v - gbar * gbar) + eps
            else:
                avg = math.sqrt(v) + eps
            if mu > 0.0:
                buf = state[0, p] * mu + g / avg
                state[0, p] = buf
                theta[p] = old - lr * buf
            else:
                theta[p] = old - lr * g / avg
            dsq += (float(theta[p]) - float(old)) ** 2
    return dsq


# ---------------------------------------------------------------- recorders


@njit(**JIT)
def _record_layers(rec, act, sizes, w_off, b_off, a_off, mb, theta, grads, gsq, acts, zs, deltas):
    """Per-layer statistics of the current step, before clipping and update, into rec (L, cols).

    gsq (L, 2): ‖∂L/∂W_l‖², ‖∂L/∂b_l‖² already computed for this step.
    """
    L = sizes.size - 1
    for k in range(L):
        n_in, n_out = sizes[k], sizes[k + 1]
        w0, b0, nw = w_off[k], b_off[k], n_out * n_in
        rec[k, L_GRAD_W] = math.sqrt(gsq[k, 0])
        rec[k, L_GRAD_B] = math.sqrt(gsq[k, 1])
        rec[k, L_WEIGHT_NORM] = math.sqrt(_sumsq(theta, w0, w0 + nw))
        bad = 0
        if not math.isfinite(gsq[k, 0] + gsq[k, 1]):  # a finite sum of squares has no NaN/Inf
            for p in range(w0, w0 + nw):
                bad += 0 if math.isfinite(grads[p]) else 1
            for p in range(b0, b0 + n_out):
                bad += 0 if math.isfinite(grads[p]) else 1
        rec[k, L_NONFINITE] = bad
        # per-sample error ‖∂ℓ_i/∂z_l‖ = mb ‖δ_l[i]‖, its RMS over the batch = √(mb Σ δ²)
        rec[k, L_DELTA_RMS] = math.sqrt(
            mb * _sumsq(deltas, a_off[k + 1], a_off[k + 1] + mb * n_out)
        )
        A = _block(acts, a_off[k + 1], mb, n_out)
        s = 0.0
        s2 = 0.0
        sat = 0
        for i in range(mb):
            for j in range(n_out):
                a = float(A[i, j])
                s += a
                s2 += a * a
                if k < L - 1 and act == SIGMOID and (a < 0.01 or a > 0.99):
                    sat += 1
                elif k < L - 1 and act == TANH and abs(a) > 0.99:
                    sat += 1
        cnt = mb * n_out
        mean = s / cnt
        rec[k, L_ACT_MEAN] = mean
        rec[k, L_ACT_STD] = math.sqrt(max(s2 / cnt - mean * mean, 0.0))
        hidden = k < L - 1
        rec[k, L_FRAC_SAT] = sat / cnt if hidden and (act == SIGMOID or act == TANH) else np.nan
        if hidden and (
            act == RELU or act == LEAKY_RELU or act == ELU or act == SELU or act == GELU
        ):
            Z = _block(zs, a_off[k + 1], mb, n_out)
            dead = 0
            for j in range(n_out):
                alive = False
                for i in range(mb):
                    if Z[i, j] > 0:
                        alive = True
                        break
                dead += 0 if alive else 1
            rec[k, L_FRAC_DEAD] = dead / n_out
        else:
            rec[k, L_FRAC_DEAD] = np.nan


# ---------------------------------------------------------------- entry points


@njit(**JIT)
def loss_and_grads(theta, sizes, w_off, b_off, a_off, codes, acts, zs, deltas, Y, grads):
    """Forward + backward on the batch already in a_0; returns (loss, accuracy)."""
    mb = Y.shape[0]
    L = sizes.size - 1
    forward(theta, sizes, w_off, b_off, a_off, mb, acts, zs, codes[C_ACT], codes[C_OUT_ACT])
    n_out = sizes[L]
    loss, acc = loss_delta(
        codes[C_LOSS],
        codes[C_OUT_ACT],
        _block(zs, a_off[L], mb, n_out),
        _block(acts, a_off[L], mb, n_out),
        Y,
        _block(deltas, a_off[L], mb, n_out),
    )
    backward(theta, sizes, w_off, b_off, a_off, mb, acts, zs, deltas, grads, codes[C_ACT])
    return loss, acc


@njit(**JIT)
def train_steps(
    theta, grads, state, hp, clip_value, codes, sizes, w_off, b_off, a_off,
    acts, zs, deltas, Yb, X, Y, idx, starts, step0, last_step, record_every,
    rec_step, rec_layer, row, counters,
):  # fmt: skip
    """Run len(starts) − 1 optimizer steps; step s uses rows idx[starts[s]:starts[s+1]] of X, Y.

    Records at steps ≡ 0 (mod record_every), at ``last_step`` and at a non-finite step into
    ``rec_step[row]``/``rec_layer[row]``, advancing ``row``; counters[0] counts clipped steps.
    Returns (steps done, row, status).
    """
    L = sizes.size - 1
    n_in = sizes[0]
    n_steps = starts.size - 1
    opt, clip_code, act = codes[C_OPT], codes[C_CLIP], codes[C_ACT]
    gsq = np.empty((L, 2))
    for s in range(n_steps):
        step = step0 + s
        lo = starts[s]
        mb = starts[s + 1] - lo
        Xb = _block(acts, a_off[0], mb, n_in)
        Yv = Yb[:mb]
        for i in range(mb):
            r = idx[lo + i]
            Xb[i, :] = X[r, :]
            Yv[i, :] = Y[r, :]
        loss, acc = loss_and_grads(
            theta, sizes, w_off, b_off, a_off, codes, acts, zs, deltas, Yv, grads
        )
        total_sq = 0.0
        for k in range(L):
            gsq[k, 0] = _sumsq(grads, w_off[k], w_off[k] + sizes[k + 1] * sizes[k])
            gsq[k, 1] = _sumsq(grads, b_off[k], b_off[k] + sizes[k + 1])
            total_sq += gsq[k, 0] + gsq[k, 1]
        stop = codes[C_STOP_NONFINITE] != 0 and not (
            math.isfinite(loss) and math.isfinite(total_sq)
        )
        recording = step % record_every == 0 or step == last_step or stop
        if recording:
            rs = rec_step[row]
            rs[S_STEP] = step
            rs[S_LOSS] = loss
            rs[S_ACC] = acc
            rs[S_GNORM] = math.sqrt(total_sq)
            _record_layers(
                rec_layer[row],
                act,
                sizes,
                w_off,
                b_off,
                a_off,
                mb,
                theta,
                grads,
                gsq,
                acts,
                zs,
                deltas,
            )
        if stop:  # keep the failing step's record; nothing is clipped or updated
            return s, row + 1, STATUS_NONFINITE
        coef, clipped = clip(clip_code, clip_value, theta, grads, sizes, w_off, b_off, total_sq)
        counters[0] += clipped
        if recording:
            clipped_sq = _sumsq(grads, 0, grads.size) if clipped else total_sq
            rec_step[row, S_GNORM_CLIPPED] = math.sqrt(clipped_sq)
            if clip_code == NORM:
                rec_step[row, S_CLIP_COEF] = coef
            else:
                rec_step[row, S_CLIP_COEF] = (
                    math.sqrt(clipped_sq / total_sq) if total_sq > 0 else 1.0
                )
        for k in range(L):
            w0, b0, nw = w_off[k], b_off[k], sizes[k + 1] * sizes[k]
            if recording:
                rec_layer[row, k, L_GRAD_W_CLIPPED] = (
                    math.sqrt(_sumsq(grads, w0, w0 + nw)) if clipped else math.sqrt(gsq[k, 0])
                )
            dsq = update(opt, hp, step + 1, theta, grads, state, w0, w0 + nw)
            update(opt, hp, step + 1, theta, grads, state, b0, b0 + sizes[k + 1])
            if recording:
                w_norm = rec_layer[row, k, L_WEIGHT_NORM]
                rec_layer[row, k, L_UPDATE_RATIO] = (
                    math.sqrt(dsq) / w_norm if w_norm > 0 else np.inf
                )
        if recording:
            row += 1
    return n_steps, row, STATUS_OK


@njit(**JIT)
def phi_array(code, z):
    """φ(z) elementwise over a float64 array (used by the theory's quadrature)."""
    out = np.empty_like(z)
    for i in range(z.size):
        out[i] = _phi(code, z[i])
    return out


@njit(**JIT)
def dphi_array(code, z):
    """φ'(z) elementwise over a float64 array."""
    out = np.empty_like(z)
    for i in range(z.size):
        out[i] = _dphi(code, z[i], _phi(code, z[i]))
    return out
