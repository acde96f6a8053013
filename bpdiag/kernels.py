"""The jitted backprop core: forward, backward, clipping and optimizer steps (one thread; the
training loop is ``bpdiag.loop``, the multi-threaded passes ``bpdiag.parallel``).

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

from bpdiag import vmath
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
from bpdiag.blas import gemm
from bpdiag.clipping import AGC, AGC_DIV_EPS, AGC_EPS, LAYER, NONE, NORM, NORM_EPS, VALUE
from bpdiag.jit import FAST, INLINE, JIT
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

# codes vector: which activation, output activation, loss, optimizer, clipping, NaN guard, and
# how many threads the step's passes use (1: these; more: ``bpdiag.parallel``).
C_ACT, C_OUT_ACT, C_LOSS, C_OPT, C_CLIP, C_STOP_NONFINITE, C_PARALLEL = range(7)
N_CODES = 7

# Per-layer sums: the backward pass accumulates the gradient ones every step; the activation ones
# are taken on record steps only, from the buffers the forward pass left (loop._record_layers,
# or, on two threads, parallel.forward as it writes them).
STATS = ("act_sum", "act_sumsq", "saturated", "dead", "delta_sumsq", "gW_sumsq", "gb_sumsq")
T_ACT_SUM, T_ACT_SQ, T_SAT, T_DEAD, T_DELTA_SQ, T_GW_SQ, T_GB_SQ = range(len(STATS))
N_STATS = len(STATS)

INV_SQRT2 = 1.0 / math.sqrt(2.0)
INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)


# ---------------------------------------------------------------- elementwise pieces


@njit(**JIT)
def _sigmoid(z):
    """σ(z) with libm's exp, exact in the far tails too (used by the loss on the logits)."""
    if z >= 0:
        return 1.0 / (1.0 + math.exp(-z))
    e = math.exp(z)
    return e / (1.0 + e)


@njit(**INLINE)
def _phi(code, z):
    """φ(z) for one scalar (tanh and sigmoid by the vectorizable ``bpdiag.vmath``)."""
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


@njit(**INLINE)
def _needs_z(code):
    """Whether φ' or the statistics of ``code`` need z itself. Not for relu, tanh, sigmoid and
    linear: their z is never stored (φ'(z) = 1_{a>0}, 1 − a², a(1 − a), 1; a relu unit is dead
    where a ≤ 0 on every row), which saves a pass over memory each way."""
    return not (code == RELU or code == TANH or code == SIGMOID or code == LINEAR)


@njit(**JIT)
def z_block(code, zs, acts, off, rows, cols):
    """The (rows, cols) block holding z for ``code``: in ``zs`` if it is kept, else the a block
    (for linear z = a; for the others nothing reads it as z, see ``_needs_z``)."""
    return block(zs if _needs_z(code) else acts, off, rows, cols)


@njit(**FAST)
def _activate_in_place(code, A, b):
    """a ← φ(a + b) over the (mb, n) block holding the GEMM's a_{l−1}Wᵀ, for the activations
    that need no z (``_needs_z``), one vectorizable loop each."""
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
def _bias_activate(code, Z, b, A):
    """z ← z + b (in place) and a = φ(z) over the (mb, n) block, for the activations that keep
    z (the statistics of a record come later, from ``activation_stats``)."""
    mb, n = Z.shape
    for i in range(mb):
        for j in range(n):
            z = Z[i, j] + b[j]
            Z[i, j] = z
            A[i, j] = _phi(code, z)


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
            s += float(a)
            s2 += float(a) * float(a)
            sat += 1.0 if abs(a) > 0.99 else 0.0
    elif code == SIGMOID:
        for i in range(flat.size):
            a = flat[i]
            s += float(a)
            s2 += float(a) * float(a)
            sat += 1.0 if (a < 0.01) | (a > 0.99) else 0.0
    else:
        zmax[:n] = -np.inf
        for i in range(mb):
            for j in range(n):
                a = A[i, j]
                s += float(a)
                s2 += float(a) * float(a)
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
def activation_stats(code, Z, A, st, zmax):
    """One layer's activation statistics over the whole batch into ``st`` (``activation_sums``
    and the dead-unit count; zmax: scratch of the layer's width)."""
    activation_sums(code, Z, A, st, zmax)
    st[T_DEAD] = dead_units(code, zmax[: Z.shape[1]])


@njit(**FAST)
def _times_dphi(code, Z, A, D, db):
    """D ← D ⊙ φ'(z) over the (mb, n) block, and from the same pass db = Σ_rows D (the bias
    gradient) and the returned Σ D² (in float64, for the error-signal RMS). Constants take D's
    dtype (``vmath.scalar``), so float32 stays float32 as in PyTorch, at twice the vector width."""
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
                s += float(d) * float(d)
    elif code == TANH:
        for i in range(mb):
            for j in range(n):
                d = D[i, j] * (one - A[i, j] * A[i, j])
                D[i, j] = d
                db[j] += d
                s += float(d) * float(d)
    elif code == SIGMOID:
        for i in range(mb):
            for j in range(n):
                d = D[i, j] * (A[i, j] * (one - A[i, j]))
                D[i, j] = d
                db[j] += d
                s += float(d) * float(d)
    elif code == LINEAR:
        for i in range(mb):
            for j in range(n):
                d = D[i, j]
                db[j] += d
                s += float(d) * float(d)
    else:
        for i in range(mb):
            for j in range(n):
                d = D[i, j] * _dphi(code, Z[i, j], A[i, j])
                D[i, j] = d
                db[j] += d
                s += float(d) * float(d)
    return s


# ---------------------------------------------------------------- forward, loss, backward


@njit(**JIT)
def block(buf, off, rows, cols):
    return buf[off : off + rows * cols].reshape((rows, cols))


@njit(**JIT)
def dense(code, theta, w0, b0, n_in, n_out, acts, zs, off_in, off_out, rows):
    """a = φ(a_prev Wᵀ + b) for ``rows`` rows starting at acts[off_in] (a_prev, width n_in) and
    acts[off_out] (a, width n_out); z at zs[off_out] where ``_needs_z``. W at theta[w0], b at
    theta[b0]."""
    W = block(theta, w0, n_out, n_in)
    b = theta[b0 : b0 + n_out]
    A_prev, A = block(acts, off_in, rows, n_in), block(acts, off_out, rows, n_out)
    if _needs_z(code):
        Z = block(zs, off_out, rows, n_out)
        gemm(A_prev, False, W, True, Z)
        _bias_activate(code, Z, b, A)
    else:
        gemm(A_prev, False, W, True, A)
        _activate_in_place(code, A, b)


@njit(**JIT)
def forward(theta, sizes, w_off, b_off, a_off, mb, acts, zs, act, out_act):
    """a_0 (already in ``acts``) → a_l for l = 1..L, and z_l where ``_needs_z``."""
    L = sizes.size - 1
    for k in range(L):
        code = act if k < L - 1 else out_act
        dense(code, theta, w_off[k], b_off[k], sizes[k], sizes[k + 1], acts, zs, a_off[k],
              a_off[k + 1], mb)  # fmt: skip


@njit(**JIT)
def loss_delta(loss, Z, A, Y, D):
    """Batch-mean loss, accuracy (NaN for mse) and ∂L/∂a_L written into D (``backward`` makes it
    δ_L = ∂L/∂a_L ⊙ φ'(z_L); for bce and ce the output is linear, a_L = z_L).

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
    return total * scale, np.nan


@njit(**JIT)
def output_delta(sizes, b_off, a_off, mb, acts, zs, deltas, grads, out_act, stats):
    """δ_L = ∂L/∂a_L ⊙ φ'(z_L) in place, with ∂L/∂b_L and Σδ_L² (``loss_delta`` wrote ∂L/∂a_L)."""
    L = sizes.size - 1
    n = sizes[L]
    stats[L - 1, T_DELTA_SQ] = _times_dphi(
        out_act, z_block(out_act, zs, acts, a_off[L], mb, n), block(acts, a_off[L], mb, n),
        block(deltas, a_off[L], mb, n), grads[b_off[L - 1] : b_off[L - 1] + n],
    )  # fmt: skip


@njit(**JIT)
def weight_grad(k, sizes, w_off, b_off, a_off, mb, acts, deltas, grads, stats):
    """∂L/∂W_l = δ_lᵀ a_{l−1} into ``grads``, ‖∂L/∂W_l‖² and ‖∂L/∂b_l‖² into ``stats`` (k = l − 1;
    ∂L/∂b_l is already there)."""
    n_in, n_out = sizes[k], sizes[k + 1]
    D = block(deltas, a_off[k + 1], mb, n_out)
    gemm(D, True, block(acts, a_off[k], mb, n_in), False, block(grads, w_off[k], n_out, n_in))
    stats[k, T_GW_SQ] = _sumsq(grads, w_off[k], w_off[k] + n_out * n_in)
    stats[k, T_GB_SQ] = _sumsq(grads, b_off[k], b_off[k] + n_out)


@njit(**JIT)
def delta_below(k, theta, sizes, w_off, b_off, a_off, mb, acts, zs, deltas, grads, act, stats):
    """δ_{l−1} = (δ_l W_l) ⊙ φ'(z_{l−1}) into ``deltas`` (k = l − 1 ≥ 1), with ∂L/∂b_{l−1} and
    Σδ_{l−1}² from the same pass."""
    n_in, n_out = sizes[k], sizes[k + 1]
    D, W = block(deltas, a_off[k + 1], mb, n_out), block(theta, w_off[k], n_out, n_in)
    D_prev = block(deltas, a_off[k], mb, n_in)
    gemm(D, False, W, False, D_prev)
    stats[k - 1, T_DELTA_SQ] = _times_dphi(
        act, z_block(act, zs, acts, a_off[k], mb, n_in), block(acts, a_off[k], mb, n_in),
        D_prev, grads[b_off[k - 1] : b_off[k - 1] + n_in],
    )  # fmt: skip


@njit(**JIT)
def backward(theta, sizes, w_off, b_off, a_off, mb, acts, zs, deltas, grads, act, out_act, stats):
    """Given ∂L/∂a_L in ``deltas`` (``loss_delta``): δ_l into ``deltas``, ∂L/∂W_l and ∂L/∂b_l
    into ``grads``, and ‖∂L/∂W_l‖², ‖∂L/∂b_l‖², Σδ_l² into ``stats``. ∂L/∂b_l and Σδ_l² come
    from the pass that makes δ_l (``_times_dphi``)."""
    output_delta(sizes, b_off, a_off, mb, acts, zs, deltas, grads, out_act, stats)
    for k in range(sizes.size - 2, -1, -1):
        weight_grad(k, sizes, w_off, b_off, a_off, mb, acts, deltas, grads, stats)
        if k > 0:
            delta_below(k, theta, sizes, w_off, b_off, a_off, mb, acts, zs, deltas, grads, act,
                        stats)  # fmt: skip


# ---------------------------------------------------------------- clipping and optimizers


@njit(**FAST)
def _sumsq(x, lo, hi):
    """Σ x[p]² over [lo, hi), accumulated in float64 (vectorized: ``reassoc``).

    Loops here run over a slice from 0, never ``range(lo, hi)``: an index that might be
    negative makes Numba wrap it around, which keeps LLVM from vectorizing (7× slower)."""
    v = x[lo:hi]
    s = 0.0
    for p in range(v.size):
        s += float(v[p]) * float(v[p])
    return s


@njit(**FAST)
def _scale(x, lo, hi, c):
    v = x[lo:hi]
    for p in range(v.size):
        v[p] *= c


@njit(**JIT)
def clip(clip_code, c, theta, grads, sizes, w_off, b_off, total_sq):
    """Clip ``grads`` (see ``bpdiag.clipping``); ``total_sq`` = ‖g‖² before clipping.

    Returns (coef, clipped): ``norm`` clipping leaves ``grads`` as they are and returns the
    factor for the optimizer pass to apply (one pass over the gradients fewer); the other modes
    clip in place and return 1.0.
    """
    if clip_code == NONE:
        return 1.0, False
    if clip_code == NORM:
        coef = min(c / (math.sqrt(total_sq) + NORM_EPS), 1.0)
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


# Each optimizer's loop is a function of its own: compiled together in one function, LLVM
# vectorized some of them and not others (Adam 0.5 → 3.5 ns a parameter when the SGD loop was
# split in two). Each returns (‖Δθ‖², ‖θ‖², ‖g‖²) with g the clipped gradient cf·grad.


@njit(**FAST)
def _sgd(th, gr, cf, lr, wd):
    dsq = 0.0
    wsq = 0.0
    gsq = 0.0
    for p in range(th.size):
        old = th[p]
        gc = gr[p] * cf
        th[p] = old - lr * (gc + wd * old)
        dsq += (float(th[p]) - float(old)) ** 2
        wsq += float(old) * float(old)
        gsq += float(gc) * float(gc)
    return dsq, wsq, gsq


@njit(**FAST)
def _momentum(th, gr, s0, cf, lr, wd, mu, undamped, nesterov, first):
    dsq = 0.0
    wsq = 0.0
    gsq = 0.0
    for p in range(th.size):
        old = th[p]
        gc = gr[p] * cf
        g = gc + wd * old
        buf = g if first else mu * s0[p] + undamped * g
        s0[p] = buf
        g = g + mu * buf if nesterov else buf
        th[p] = old - lr * g
        dsq += (float(th[p]) - float(old)) ** 2
        wsq += float(old) * float(old)
        gsq += float(gc) * float(gc)
    return dsq, wsq, gsq


@njit(**FAST)
def _adam(th, gr, s0, s1, cf, l2, one_b1, b2, one_b2, eps, decay, step_size, bc2_sqrt, zero,
          first):  # fmt: skip
    dsq = 0.0
    wsq = 0.0
    gsq = 0.0
    for p in range(th.size):
        old = th[p]
        gc = gr[p] * cf
        g = gc + l2 * old
        m = zero if first else s0[p]
        m = m + one_b1 * (g - m)  # torch: exp_avg.lerp_(grad, 1 - beta1)
        v = (zero if first else s1[p]) * b2 + one_b2 * g * g
        s0[p] = m
        s1[p] = v
        th[p] = old * decay - step_size * m / (math.sqrt(v) / bc2_sqrt + eps)
        dsq += (float(th[p]) - float(old)) ** 2
        wsq += float(old) * float(old)
        gsq += float(gc) * float(gc)
    return dsq, wsq, gsq


@njit(**FAST)
def _rmsprop_plain(th, gr, s1, cf, lr, wd, alpha, one_alpha, eps, zero, first):
    """RMSprop without centering or momentum (the default): the general loop's branches kept
    LLVM from vectorizing it (float64 ≈ 110 ns a parameter, this loop ≈ 1 ns)."""
    dsq = 0.0
    wsq = 0.0
    gsq = 0.0
    for p in range(th.size):
        old = th[p]
        gc = gr[p] * cf
        g = gc + wd * old
        v = (zero if first else s1[p]) * alpha + one_alpha * g * g
        s1[p] = v
        th[p] = old - lr * g / (math.sqrt(v) + eps)
        dsq += (float(th[p]) - float(old)) ** 2
        wsq += float(old) * float(old)
        gsq += float(gc) * float(gc)
    return dsq, wsq, gsq


@njit(**FAST)
def _rmsprop(th, gr, s0, s1, s2, cf, lr, wd, mu, alpha, one_alpha, eps, centered, zero, first):
    dsq = 0.0
    wsq = 0.0
    gsq = 0.0
    for p in range(th.size):
        old = th[p]
        gc = gr[p] * cf
        g = gc + wd * old
        v = (zero if first else s1[p]) * alpha + one_alpha * g * g
        s1[p] = v
        if centered:
            gbar = zero if first else s2[p]
            gbar = gbar + one_alpha * (g - gbar)
            s2[p] = gbar
            avg = math.sqrt(v - gbar * gbar) + eps
        else:
            avg = math.sqrt(v) + eps
        if mu > 0.0:
            buf = (zero if first else s0[p]) * mu + g / avg
            s0[p] = buf
            th[p] = old - lr * buf
        else:
            th[p] = old - lr * g / avg
        dsq += (float(th[p]) - float(old)) ** 2
        wsq += float(old) * float(old)
        gsq += float(gc) * float(gc)
    return dsq, wsq, gsq


@njit(**FAST)
def update(opt, hp, t, theta, grads, coef, state, lo, hi, sc):
    """One optimizer step (PyTorch's formulas, see ``bpdiag.optim``) on theta[lo:hi] with the
    gradient coef·grads (coef: ``clip_grad_norm_``'s factor, else 1).

    t is the 1-based step count; at t = 1 the state is taken as zero without being read (it may
    hold anything, so a reused buffer needs no clearing). Scalars are cast to theta's dtype
    (through the scratch ``sc``, 10 entries of that dtype), as PyTorch applies Python-float
    hyper-parameters to float32 tensors. Returns (‖Δθ‖², ‖θ‖², ‖g‖²) over the range, θ before
    the step and g the clipped gradient, accumulated in the same pass.
    """
    sc[8] = coef
    sc[9] = 0.0
    cf, zero = sc[8], sc[9]
    first = t == 1
    sc[0] = hp[LR]
    sc[1] = hp[WEIGHT_DECAY]
    sc[2] = hp[MOMENTUM]
    lr, wd, mu = sc[0], sc[1], sc[2]
    th, gr = theta[lo:hi], grads[lo:hi]  # slices: loops from 0 vectorize (see _sumsq)
    s0, s1, s2 = state[0, lo:hi], state[1, lo:hi], state[2, lo:hi]
    if opt == SGD:
        if mu == 0.0:
            return _sgd(th, gr, cf, lr, wd)
        sc[3] = 1.0 - hp[DAMPENING]
        return _momentum(th, gr, s0, cf, lr, wd, mu, sc[3], hp[NESTEROV] != 0.0, first)
    if opt == ADAM or opt == ADAMW:
        sc[3] = 1.0 - hp[BETA1]
        sc[4] = hp[BETA2]
        sc[5] = 1.0 - hp[BETA2]
        sc[6] = hp[EPS]
        sc[7] = 1.0 - hp[LR] * hp[WEIGHT_DECAY] if opt == ADAMW else 1.0
        sc[0] = hp[LR] / (1.0 - hp[BETA1] ** t)  # step size
        sc[1] = math.sqrt(1.0 - hp[BETA2] ** t)
        sc[2] = hp[WEIGHT_DECAY] if opt == ADAM else 0.0  # coupled (L2) weight decay
        return _adam(th, gr, s0, s1, cf, sc[2], sc[3], sc[4], sc[5], sc[6], sc[7], sc[0], sc[1],
                     zero, first)  # fmt: skip
    sc[3] = hp[ALPHA]  # RMSPROP
    sc[4] = 1.0 - hp[ALPHA]
    sc[5] = hp[EPS]
    if mu == 0.0 and hp[CENTERED] == 0.0:
        return _rmsprop_plain(th, gr, s1, cf, lr, wd, sc[3], sc[4], sc[5], zero, first)
    return _rmsprop(th, gr, s0, s1, s2, cf, lr, wd, mu, sc[3], sc[4], sc[5],
                    hp[CENTERED] != 0.0, zero, first)  # fmt: skip


# ---------------------------------------------------------------- entry points


@njit(**JIT)
def loss_and_grads(theta, sizes, w_off, b_off, a_off, codes, acts, zs, deltas, Y, grads, stats):
    """Forward + backward on the batch already in a_0; returns (loss, accuracy)."""
    mb = Y.shape[0]
    L = sizes.size - 1
    act, out_act = codes[C_ACT], codes[C_OUT_ACT]
    forward(theta, sizes, w_off, b_off, a_off, mb, acts, zs, act, out_act)
    n_out = sizes[L]
    Z_L, A_L = z_block(out_act, zs, acts, a_off[L], mb, n_out), block(acts, a_off[L], mb, n_out)
    loss, acc = loss_delta(codes[C_LOSS], Z_L, A_L, Y, block(deltas, a_off[L], mb, n_out))
    backward(theta, sizes, w_off, b_off, a_off, mb, acts, zs, deltas, grads, act, out_act, stats)
    return loss, acc


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
