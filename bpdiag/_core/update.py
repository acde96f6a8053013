"""Clipping and optimizer steps on the flat gradient and parameter vectors.

Formulas are PyTorch's (``bpdiag.choices.optim``, ``bpdiag.choices.clipping`` list them). Each
optimizer's loop is a function of its own: compiled into one function, LLVM vectorized some of
the loops and left others scalar. Each loop returns (‖Δθ‖², ‖θ‖², ‖g‖²) over its range, θ before
the step and g the clipped gradient, accumulated in the pass that updates θ.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from bpdiag._core.codes import (
    ADAM,
    ADAMW,
    AGC_DIV_EPS,
    AGC_EPS,
    CLIP_AGC,
    CLIP_LAYER,
    CLIP_NORM,
    CLIP_VALUE,
    NO_CLIP,
    NORM_EPS,
    SGD,
)
from bpdiag._core.jit import FAST, JIT
from bpdiag._core.vmath import scale, sumsq


@njit(**JIT)
def clip(setup, theta, grads, net, total_sq):
    """Clip ``grads`` by ``setup.clip`` with c = ``setup.clip_value``; total_sq = ‖g‖² before.

    Returns (coef, clipped): ``norm`` clipping leaves ``grads`` as they are and returns the
    factor for the optimizer's pass to apply (saving a pass over the gradients); the other modes
    clip in place and return 1.0.
    """
    mode, c = setup.clip, setup.clip_value
    if mode == NO_CLIP:
        return 1.0, False
    if mode == CLIP_NORM:
        coef = min(c / (math.sqrt(total_sq) + NORM_EPS), 1.0)
        return coef, coef < 1.0
    clipped = False
    if mode == CLIP_VALUE:
        for p in range(grads.size):
            g = grads[p]
            grads[p] = min(max(g, -c), c)
            clipped |= grads[p] != g
        return 1.0, clipped
    for k in range(net.sizes.size - 1):
        n_in, n_out = net.sizes[k], net.sizes[k + 1]
        w0, b0, g0 = net.w_off[k], net.b_off[k], net.g_off[k]
        end = b0 + n_out + (2 * n_out if g0 >= 0 else 0)  # W, b, then (γ, β): side by side
        if mode == CLIP_LAYER:
            coef = min(c / (math.sqrt(sumsq(grads, w0, end)) + NORM_EPS), 1.0)
            scale(grads, w0, end, coef)
            clipped |= coef < 1.0
        elif mode == CLIP_AGC:
            # units: the rows of W, then the bias, γ and β vectors, each as one unit
            for i in range(n_out + (3 if g0 >= 0 else 1)):
                if i < n_out:
                    lo, hi = w0 + i * n_in, w0 + (i + 1) * n_in
                else:
                    lo = b0 + (i - n_out) * n_out
                    hi = lo + n_out
                g_norm = math.sqrt(sumsq(grads, lo, hi))
                max_norm = c * max(math.sqrt(sumsq(theta, lo, hi)), AGC_EPS)
                if not g_norm < max_norm:
                    scale(grads, lo, hi, max_norm / max(g_norm, AGC_DIV_EPS))
                    clipped = True
    return 1.0, clipped


@njit(**FAST)
def _sgd(th, gr, cf, lr, wd):
    dsq = 0.0
    wsq = 0.0
    gsq = 0.0
    for p in range(th.size):
        old = th[p]
        gc = gr[p] * cf
        th[p] = old - lr * (gc + wd * old)
        dsq += (np.float64(th[p]) - np.float64(old)) ** 2
        wsq += np.float64(old) * np.float64(old)
        gsq += np.float64(gc) * np.float64(gc)
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
        dsq += (np.float64(th[p]) - np.float64(old)) ** 2
        wsq += np.float64(old) * np.float64(old)
        gsq += np.float64(gc) * np.float64(gc)
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
        dsq += (np.float64(th[p]) - np.float64(old)) ** 2
        wsq += np.float64(old) * np.float64(old)
        gsq += np.float64(gc) * np.float64(gc)
    return dsq, wsq, gsq


@njit(**FAST)
def _rmsprop_plain(th, gr, s1, cf, lr, wd, alpha, one_alpha, eps, zero, first):
    """RMSprop without centering or momentum (the default), in a loop without the branches
    that keep the general loop from vectorizing."""
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
        dsq += (np.float64(th[p]) - np.float64(old)) ** 2
        wsq += np.float64(old) * np.float64(old)
        gsq += np.float64(gc) * np.float64(gc)
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
        dsq += (np.float64(th[p]) - np.float64(old)) ** 2
        wsq += np.float64(old) * np.float64(old)
        gsq += np.float64(gc) * np.float64(gc)
    return dsq, wsq, gsq


@njit(**FAST)
def update(opt, hp, t, theta, grads, coef, state, lo, hi, sc):
    """One optimizer step on theta[lo:hi] with the gradient coef·grads (coef: the factor of
    ``clip_grad_norm_``, else 1); hp: ``structs.Hyper``.

    t is the 1-based step count; at t = 1 the state (3, n_params) is taken as zero without
    being read, so a reused buffer needs no clearing. Scalars are cast to theta's dtype through
    the scratch ``sc`` (10 entries of that dtype), as PyTorch applies Python-float
    hyper-parameters to float32 tensors. Returns (‖Δθ‖², ‖θ‖², ‖g‖²) over the range.
    """
    sc[8] = coef
    sc[9] = 0.0
    cf, zero = sc[8], sc[9]
    first = t == 1
    sc[0] = hp.lr
    sc[1] = hp.weight_decay
    sc[2] = hp.momentum
    lr, wd, mu = sc[0], sc[1], sc[2]
    th, gr = theta[lo:hi], grads[lo:hi]  # slices: loops from 0 vectorize (see vmath.sumsq)
    s0, s1, s2 = state[0, lo:hi], state[1, lo:hi], state[2, lo:hi]
    if opt == SGD:
        if mu == 0.0:
            return _sgd(th, gr, cf, lr, wd)
        sc[3] = 1.0 - hp.dampening
        return _momentum(th, gr, s0, cf, lr, wd, mu, sc[3], hp.nesterov, first)
    if opt == ADAM or opt == ADAMW:
        sc[3] = 1.0 - hp.beta1
        sc[4] = hp.beta2
        sc[5] = 1.0 - hp.beta2
        sc[6] = hp.eps
        sc[7] = 1.0 - hp.lr * hp.weight_decay if opt == ADAMW else 1.0
        sc[0] = hp.lr / (1.0 - hp.beta1**t)  # step size
        sc[1] = math.sqrt(1.0 - hp.beta2**t)
        sc[2] = hp.weight_decay if opt == ADAM else 0.0  # coupled (L2) weight decay
        return _adam(th, gr, s0, s1, cf, sc[2], sc[3], sc[4], sc[5], sc[6], sc[7], sc[0], sc[1],
                     zero, first)  # fmt: skip
    sc[3] = hp.alpha  # RMSPROP
    sc[4] = 1.0 - hp.alpha
    sc[5] = hp.eps
    if mu == 0.0 and not hp.centered:
        return _rmsprop_plain(th, gr, s1, cf, lr, wd, sc[3], sc[4], sc[5], zero, first)
    return _rmsprop(th, gr, s0, s1, s2, cf, lr, wd, mu, sc[3], sc[4], sc[5], hp.centered, zero,
                    first)  # fmt: skip
