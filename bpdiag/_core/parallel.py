"""The step's passes spread over Numba's threads, with BLAS single-threaded meanwhile (the
caller decides when; the one-thread passes are in ``forward``, ``backward`` and ``update``).
``passes`` covers every net but BatchNorm's, whose statistics couple the batch's rows: its
threads meet at every layer (``bnpasses``, which ends with ``weight_grads`` and
``reduce_bias`` from here).

- ``passes``: the batch's rows cut into T blocks, and each block's whole forward pass, loss
  and δ_L … δ_1 on a thread of its own (a row's δ depends on that row alone), so that the
  threads meet once for the passes, not twice a layer. Thread t's ∂L/∂b_l (and LayerNorm's
  ∂L/∂γ_l, ∂L/∂β_l) over its rows go into ``buf.grads`` (t = 0) or ``buf.grads_part[t − 1]``,
  its sums and LayerNorm statistics into blocks of its own;
- ``weight_grads``: then ∂L/∂W_l = δ_lᵀ a_{l−1} over the whole batch, each thread a share of
  every layer's rows (one product over the batch, no partial sums to add up), with their ‖·‖²;
- ``combine`` and ``reduce_bias`` (one thread, a few numbers a layer): the blocks' sums;
- ``update``: the optimizer step over pieces of the flat parameter vector (``pieces``).

A parallel loop's body takes the net's tuple as it is and builds only the tuple whose fields
differ by thread: a ``Buffers`` whose offsets start at the thread's rows.

Results agree with one thread's to rounding: BLAS may round a GEMM over a block of rows or
columns differently from one over the whole, and the records' sums add their pieces in another
order. Entering a parallel region has a fixed cost, so this pays only for nets with enough
multiply-adds a step (``bpdiag.training`` picks).
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from bpdiag._core.backward import delta_below, output_delta
from bpdiag._core.codes import TRAIN
from bpdiag._core.forward import block, forward, output_loss
from bpdiag._core.gemm import gemm
from bpdiag._core.jit import JIT
from bpdiag._core.slots import (
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
from bpdiag._core.stats import activation_sums, dead_units, h_block, sample_sq_sum
from bpdiag._core.structs import Buffers, Hyper
from bpdiag._core.update import update as update_piece
from bpdiag._core.vmath import sumsq

PIECE = 16384  # parameters per optimizer piece: far more work than handing a piece out costs


def pieces(net, size: int) -> np.ndarray:
    """(3, n) int64: [lo, hi) of each piece of theta and the segment it belongs to (3k for W of
    layer k, 3k + 1 for its bias, 3k + 2 for its γ and β). W blocks are cut into near-equal
    pieces of ≤ ``size``."""
    out = []
    for k, (w0, b0, g0) in enumerate(zip(net.w_off, net.b_off, net.g_off, strict=True)):
        n_w, n_b = int(net.sizes[k] * net.sizes[k + 1]), int(net.sizes[k + 1])
        edges = np.linspace(w0, w0 + n_w, -(-n_w // size) + 1).astype(np.int64)
        out += [(lo, hi, 3 * k) for lo, hi in zip(edges[:-1], edges[1:], strict=True)]
        out.append((b0, b0 + n_b, 3 * k + 1))
        if g0 >= 0:
            out.append((g0, g0 + 2 * n_b, 3 * k + 2))
    return np.array(out, np.int64).T.copy()


@njit(parallel=True, **JIT)
def passes(theta, running, net, buf, mb, T, record, part, zmax, spart, lossacc, tnorms):
    """Forward, loss and δ_L … δ_1 of a net without BatchNorm over the first mb rows, cut into
    T ≤ mb blocks of rows, each block's passes on one thread (T is passed in:
    ``numba.get_num_threads`` in a kernel would keep it out of the on-disk cache). Block t's
    ∂L/∂b_l (and ∂L/∂γ_l, ∂L/∂β_l) go into buf.grads (t = 0) or buf.grads_part[t − 1], its
    sums into spart[t] (the layout of buf.stats), its LayerNorm statistics into tnorms[t]
    (the layout of buf.norms), its share of the loss and accuracy into lossacc[t]; with
    ``record``, its ``stats.activation_sums`` into part[t, k] and zmax[t, k] (scratch: (T, L,
    ≥ 3) and (T, L, max width)) and its ``stats.sample_sq_sum`` into spart[t, k, T_SAMPLE_SQ]."""
    sizes, w_off, b_off, act, out_act, loss, norm, g_off, r_off, skip, alpha = net
    a_off, acts, zs, hs, deltas, Y, grads, stats, norms, grads_part = buf
    L = sizes.size - 1
    for t in prange(T):
        r0, r1 = t * mb // T, (t + 1) * mb // T
        rows = r1 - r0
        off_t = a_off.copy()  # block j's rows from r0 on: a buffer of rows r0.. for the passes
        for j in range(L + 1):
            off_t[j] += r0 * sizes[j]
        g_t = grads if t == 0 else grads_part[t - 1]
        buf_t = Buffers(off_t, acts, zs, hs, deltas, Y[r0:r1], g_t, spart[t], tnorms[t],
                        grads_part)  # fmt: skip
        forward(theta, running, net, buf_t, rows, TRAIN)
        if record:
            for k in range(L):
                n_out = sizes[k + 1]
                activation_sums(act if k < L - 1 else out_act,
                                h_block(net, k, buf_t, off_t[k + 1], rows),
                                block(acts, off_t[k + 1], rows, n_out), part[t, k], zmax[t, k])  # fmt: skip
        lossacc[t, 0], lossacc[t, 1] = output_loss(net, buf_t, rows, mb)
        output_delta(net, buf_t, rows)
        for k in range(L - 1, -1, -1):
            n_in, n_out = sizes[k], sizes[k + 1]
            if record:
                spart[t, k, T_SAMPLE_SQ] = sample_sq_sum(block(deltas, off_t[k + 1], rows, n_out),
                                                         block(acts, off_t[k], rows, n_in))  # fmt: skip
            if k > 0:
                delta_below(theta, net, k, buf_t, rows)


@njit(parallel=True, **JIT)
def weight_grads(net, buf, mb, T, wsq):
    """∂L/∂W_l = δ_lᵀ a_{l−1} over the batch's mb rows for every layer, once ``passes`` has
    written the δ_l: task q takes layer q mod L's rows of ∂L/∂W_l in part q // L of T (so each
    thread gets a part of every layer), with its ‖·‖² into wsq[q] (wsq: (T L,) float64)."""
    sizes, w_off, acts, deltas, a_off, grads = (net.sizes, net.w_off, buf.acts, buf.deltas,
                                                buf.a_off, buf.grads)  # fmt: skip
    L = sizes.size - 1
    for q in prange(T * L):
        k, part = q % L, q // L
        n_in, n_out = sizes[k], sizes[k + 1]
        j0, j1 = part * n_out // T, (part + 1) * n_out // T
        wsq[q] = 0.0
        if j1 > j0:
            D = block(deltas, a_off[k + 1], mb, n_out)[:, j0:j1]
            lo = w_off[k] + j0 * n_in
            gemm(D, True, block(acts, a_off[k], mb, n_in), False, block(grads, lo, j1 - j0, n_in))
            wsq[q] = sumsq(grads, lo, lo + (j1 - j0) * n_in)


@njit(**JIT)
def combine(net, buf, T, record, part, zmax, spart, lossacc):
    """The blocks' sums of ``passes`` into buf.stats (Σδ_l², and with ``record`` the activation
    statistics); returns the batch's (loss, accuracy)."""
    L = net.sizes.size - 1
    loss = 0.0
    acc = 0.0
    for t in range(T):
        loss += lossacc[t, 0]
        acc += lossacc[t, 1]
    for k in range(L):
        st = buf.stats[k]
        st[T_DELTA_SQ] = 0.0
        st[T_DELTA_U_SQ] = 0.0
        for t in range(T):
            st[T_DELTA_SQ] += spart[t, k, T_DELTA_SQ]
            st[T_DELTA_U_SQ] += spart[t, k, T_DELTA_U_SQ]
        if not record:
            continue
        st[T_SAMPLE_SQ] = 0.0
        for t in range(T):
            st[T_SAMPLE_SQ] += spart[t, k, T_SAMPLE_SQ]
        n, code = net.sizes[k + 1], net.act if k < L - 1 else net.out_act
        st[T_ACT_SUM] = 0.0
        st[T_ACT_SQ] = 0.0
        st[T_SAT] = 0.0
        for t in range(T):
            st[T_ACT_SUM] += part[t, k, T_ACT_SUM]
            st[T_ACT_SQ] += part[t, k, T_ACT_SQ]
            st[T_SAT] += part[t, k, T_SAT]
            if t > 0:
                for j in range(n):
                    zmax[0, k, j] = max(zmax[0, k, j], zmax[t, k, j])
        st[T_DEAD] = dead_units(code, zmax[0, k, :n])
    return loss, acc


@njit(**JIT)
def _add_parts(buf, T, lo, hi):
    """buf.grads[lo:hi] += the other T − 1 blocks' parts; returns its ‖·‖² (in float64)."""
    s = 0.0
    for j in range(lo, hi):
        v = buf.grads[j]
        for t in range(T - 1):
            v += buf.grads_part[t, j]
        buf.grads[j] = v
        s += np.float64(v) * np.float64(v)
    return s


@njit(**JIT)
def reduce_bias(net, buf, T, parts, wsq):
    """∂L/∂b_l (and ∂L/∂γ_l, ∂L/∂β_l) = the T blocks' parts of ``passes`` added up in
    buf.grads; their ‖·‖² and ‖∂L/∂W_l‖² (the sum of its ``parts`` parts in ``weight_grads``'s
    wsq) into buf.stats."""
    L = net.sizes.size - 1
    for k in range(L):
        b0, g0, n = net.b_off[k], net.g_off[k], net.sizes[k + 1]
        buf.stats[k, T_GB_SQ] = _add_parts(buf, T, b0, b0 + n)
        if g0 >= 0:
            buf.stats[k, T_GAFF_SQ] = _add_parts(buf, T, g0, g0 + 2 * n)
        w = 0.0
        for part in range(parts):
            w += wsq[part * L + k]
        buf.stats[k, T_GW_SQ] = w


@njit(parallel=True, **JIT)
def update(setup, t, theta, grads, coef, state, sums, sc):
    """``update.update`` on each piece (``pieces``), the pieces shared out over the threads;
    (‖Δθ‖², ‖θ‖², ‖g‖²) of piece q into sums[q]. sc: (pieces, 10) scratch of theta's dtype."""
    pcs, opt = setup.pieces, setup.optimizer
    lr, momentum, dampening, nesterov, beta1, beta2, eps, alpha, weight_decay, centered = (
        setup.hyper
    )
    for q in prange(pcs.shape[1]):
        hyper = Hyper(lr, momentum, dampening, nesterov, beta1, beta2, eps, alpha, weight_decay,
                      centered)  # fmt: skip
        dsq, wsq, gsq = update_piece(opt, hyper, t, theta, grads, coef, state, pcs[0, q],
                                     pcs[1, q], sc[q])  # fmt: skip
        sums[q, 0] = dsq
        sums[q, 1] = wsq
        sums[q, 2] = gsq
