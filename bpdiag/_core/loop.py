"""The training loop kernel: minibatch steps with the NaN guard, clipping, the optimizer and the
records, one call per chunk of steps (``bpdiag.training`` drives it).
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from bpdiag._core import backward as serial_backward
from bpdiag._core import bnpasses, parallel
from bpdiag._core import forward as serial_forward
from bpdiag._core.codes import (
    BATCHNORM,
    EVAL,
    STATUS_NONFINITE,
    STATUS_OK,
    TASK_EVAL,
    TASK_GRADS,
    TRAIN,
)
from bpdiag._core.forward import block, output_loss, running_of
from bpdiag._core.jit import JIT
from bpdiag._core.norm import update_running
from bpdiag._core.slots import N_STATS, S_ACC, S_LOSS
from bpdiag._core.stats import (
    activation_stats,
    grad_sq,
    record_gradients,
    record_update,
    sample_sums,
)
from bpdiag._core.update import clip, update


@njit(**JIT)
def train_steps(theta, running, state, net, buf, setup, feed, rec, step0, row):
    """Run len(feed.starts) − 1 optimizer steps from step ``step0``, records from ``row`` on.

    theta: the parameters (updated in place); running: (2, n) BatchNorm's running statistics
    (updated after each accepted step); state: (3, n_params) optimizer state; net, buf,
    setup, feed, rec: ``structs.Net``, ``Buffers``, ``Setup``, ``Feed``, ``Records``. A record
    is written at steps ≡ 0 (mod rec.every), at rec.last and at a non-finite step (where the NaN
    guard stops before the update); rec.counters[0] counts the steps clipping changed. The
    passes are those of one thread, or for setup.threads > 1 those of ``parallel`` (a BatchNorm
    net: ``bnpasses``).

    ``setup.task`` makes the same kernel serve the net's other passes over one batch (Numba
    optimizes everything a kernel calls into it, so one kernel compiles faster than three):
    ``TASK_GRADS`` stops after the backward pass and its record (the loss and gradients in
    training mode), ``TASK_EVAL`` after the evaluation-mode forward pass and the loss, written
    into the record's loss and accuracy. Returns (steps done, next row, status).
    """
    L = net.sizes.size - 1
    n_in = net.sizes[0]
    n_steps = feed.starts.size - 1
    threads = setup.threads
    par = threads > 1
    by_rows = par and net.norm != BATCHNORM  # ``parallel``'s passes (BatchNorm's: ``bnpasses``)
    n_pcs = setup.pieces.shape[1]
    sums = np.zeros((n_pcs, 3))  # (‖Δθ‖², ‖θ‖², ‖g‖²) of each optimizer piece
    seg = np.zeros((3 * L, 3))  # the same per W_l, b_l and (γ_l, β_l)
    zmax = np.empty((threads, L, net.sizes.max()))  # scratch of the activation statistics, per
    part = np.empty((threads, L, N_STATS))  # thread (row block of the two-core step) and layer
    spart = np.zeros((threads, L, N_STATS))  # the two-core step's per-block sums,
    lossacc = np.zeros((threads, 2))  # loss and accuracy, and ‖∂L/∂W_l‖² per part of a layer
    gw_sq = np.zeros(threads * L)
    tnorms = np.empty((threads if par else 0, L, buf.norms.shape[1], buf.norms.shape[2]))
    sc = np.empty((n_pcs, 10), theta.dtype)
    bn_sums = np.zeros((threads, 2))  # ``bnpasses``' per-thread sums
    mode = EVAL if setup.task == TASK_EVAL else TRAIN  # BatchNorm's statistics
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
        if setup.task == TASK_EVAL:
            serial_forward.forward(theta, running, net, buf, mb, mode)
            rec.steps[row, S_LOSS], rec.steps[row, S_ACC] = output_loss(net, buf, mb, mb)
            return 1, row + 1, STATUS_OK
        if par and net.norm == BATCHNORM:
            loss, acc = bnpasses.passes(theta, net, buf, mb, threads, tnorms, spart, lossacc,
                                        bn_sums, gw_sq)  # fmt: skip
        elif par:
            blocks = min(threads, mb)  # blocks of rows, one per thread
            parallel.passes(theta, running, net, buf, mb, blocks, cadence, part, zmax, spart,
                            lossacc, tnorms)  # fmt: skip
            loss, acc = parallel.combine(net, buf, blocks, cadence, part, zmax, spart, lossacc)
            parallel.weight_grads(net, buf, mb, threads, gw_sq)
            parallel.reduce_bias(net, buf, blocks, threads, gw_sq)
        else:
            serial_forward.forward(theta, running, net, buf, mb, mode)
            loss, acc = output_loss(net, buf, mb, mb)
            serial_backward.backward(theta, net, buf, mb)
        total_sq = 0.0
        for k in range(L):
            total_sq += grad_sq(net, buf, k)
        stop = setup.nan_guard and not (math.isfinite(loss) and math.isfinite(total_sq))
        recording = cadence or stop
        if recording:
            if not (by_rows and cadence):  # the two-core passes took them already
                activation_stats(net, buf, mb, zmax[0])
                sample_sums(net, buf, mb)
            record_gradients(rec, row, step, loss, acc, total_sq, net, buf, mb)
        if stop:  # keep the failing step's record; nothing is clipped or updated
            return s, row + 1, STATUS_NONFINITE
        if setup.task == TASK_GRADS:
            return 1, row + 1, STATUS_OK
        if net.norm == BATCHNORM:
            for k in range(L):
                if net.r_off[k] >= 0:
                    run_mean, run_var = running_of(running, net, k)
                    update_running(run_mean, run_var, buf.norms[k], mb)
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
