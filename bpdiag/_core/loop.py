"""The training loop kernel: minibatch steps with the NaN guard, clipping, the optimizer and the
records, one call per chunk of steps (``bpdiag.training`` drives it).
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from bpdiag._core import backward as serial_backward
from bpdiag._core import forward as serial_forward
from bpdiag._core import parallel
from bpdiag._core.codes import STATUS_NONFINITE, STATUS_OK
from bpdiag._core.forward import block, output_loss
from bpdiag._core.jit import JIT
from bpdiag._core.slots import N_STATS, T_GB_SQ, T_GW_SQ
from bpdiag._core.stats import activation_stats, record_gradients, record_update
from bpdiag._core.update import clip, update


@njit(**JIT)
def train_steps(theta, state, net, buf, setup, feed, rec, step0, row):
    """Run len(feed.starts) − 1 optimizer steps from step ``step0``, records from ``row`` on.

    theta: the parameters (updated in place); state: (3, n_params) optimizer state; net, buf,
    setup, feed, rec: ``structs.Net``, ``Buffers``, ``Setup``, ``Feed``, ``Records``. A record
    is written at steps ≡ 0 (mod rec.every), at rec.last and at a non-finite step (where the NaN
    guard stops before the update); rec.counters[0] counts the steps clipping changed. The
    passes are those of one thread, or of ``parallel`` for setup.threads > 1: one kernel holds
    both, which compiles faster than two. Returns (steps done, next row, status).
    """
    L = net.sizes.size - 1
    n_in = net.sizes[0]
    n_steps = feed.starts.size - 1
    threads = setup.threads
    par = threads > 1
    n_pcs = setup.pieces.shape[1]
    sums = np.zeros((n_pcs, 3))  # (‖Δθ‖², ‖θ‖², ‖g‖²) of each optimizer piece
    seg = np.zeros((2 * L, 3))  # the same per W_l and b_l
    zmax = np.empty((threads, L, net.sizes.max()))  # scratch of the activation statistics, per
    part = np.empty((threads, L, N_STATS))  # thread (row block of the two-core forward) and layer
    sc = np.empty((n_pcs, 10), theta.dtype)
    for s in range(n_steps):
        step = step0 + s
        lo = feed.starts[s]
        mb = feed.starts[s + 1] - lo
        Xb = block(buf.acts, buf.a_off[0], mb, n_in)
        for i in range(mb):
            r = feed.idx[lo + i]
            Xb[i, :] = feed.X[r, :]
            buf.Y[i, :] = feed.Y[r, :]
        cadence = step % rec.every == 0 or step == rec.last  # a record step, unless it fails
        if par:
            parallel.forward(theta, net, buf, mb, threads, cadence, part, zmax)
        else:
            serial_forward.forward(theta, net, buf, mb)
        loss, acc = output_loss(net, buf, mb)
        if par:
            parallel.backward(theta, net, buf, mb)
        else:
            serial_backward.backward(theta, net, buf, mb)
        total_sq = 0.0
        for k in range(L):
            total_sq += buf.stats[k, T_GW_SQ] + buf.stats[k, T_GB_SQ]
        stop = setup.nan_guard and not (math.isfinite(loss) and math.isfinite(total_sq))
        recording = cadence or stop
        if recording:
            if not (par and cadence):  # the two-core forward took them already
                activation_stats(net, buf, mb, zmax[0])
            record_gradients(rec, row, step, loss, acc, total_sq, net, buf, mb)
        if stop:  # keep the failing step's record; nothing is clipped or updated
            return s, row + 1, STATUS_NONFINITE
        coef, clipped = clip(setup, theta, buf.grads, net, total_sq)
        rec.counters[0] += clipped
        if par:
            parallel.update(setup, step + 1, theta, buf.grads, coef, state, sums, sc)
        else:
            for q in range(n_pcs):
                lo_q, hi_q = setup.pieces[0, q], setup.pieces[1, q]
                dsq, wsq, gsq = update(setup.optimizer, setup.hyper, step + 1, theta, buf.grads,
                                       coef, state, lo_q, hi_q, sc[q])  # fmt: skip
                sums[q, 0], sums[q, 1], sums[q, 2] = dsq, wsq, gsq
        if recording:
            record_update(rec, row, net, setup, coef, total_sq, sums, seg)
            row += 1
    return n_steps, row, STATUS_OK
