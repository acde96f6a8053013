"""The step's passes spread over Numba's threads, with BLAS single-threaded meanwhile (the
caller decides when; the one-thread passes are in ``forward``, ``backward`` and ``update``).
They cover plain nets; a net with normalization or skip connections runs its passes on one
thread (its GEMMs on the BLAS's threads), which keeps the normalization out of these
kernels and their compile time.

- forward: each layer's GEMM and activation pass by row blocks of the batch, one per thread,
  and on record steps the activation statistics of the block just written;
- backward: a layer's two GEMMs side by side, ∂L/∂W_l = δ_lᵀ a_{l−1} (with its norms) on one
  thread and δ_{l−1} = (δ_l W_l) ⊙ φ'(z_{l−1}) on another;
- the optimizer step over pieces of the flat parameter vector (``pieces``), shared out evenly.

Numba cannot pass a tuple into a parallel loop's body, so each loop below takes the arrays and
scalars out of the named tuples before it and puts them back together inside it.

Results agree with one thread's to rounding: BLAS may round a GEMM over a block of rows
differently from one over the whole batch, and a record's per-layer sums add their pieces in
another order. Entering a parallel region has a fixed cost, so this pays only for layers with
many multiply-adds a step (``bpdiag.training`` picks).
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from bpdiag._core.backward import output_delta, plain_delta_below, weight_grad
from bpdiag._core.forward import block, plain_dense
from bpdiag._core.jit import JIT
from bpdiag._core.slots import T_ACT_SQ, T_ACT_SUM, T_DEAD, T_SAT
from bpdiag._core.stats import activation_sums, dead_units
from bpdiag._core.structs import Buffers, Hyper, Net
from bpdiag._core.update import update as update_piece

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
def forward(theta, net, buf, mb, T, record, part, zmax):
    """``forward.forward`` of a plain net with each layer's rows split into T blocks, one per
    thread (T is passed in: ``numba.get_num_threads`` in a kernel would keep it out of the
    on-disk cache). With ``record``, each thread also takes ``stats.activation_sums`` of the
    block it has just written (part: (T, L, ≥ 3), zmax: (T, L, max width) scratch), combined
    into buf.stats."""
    sizes, w_off, b_off, act, out_act, loss, norm, g_off, r_off, skip, alpha = net
    a_off, acts, zs, hs, deltas, Y, grads, stats, norms = buf
    L = sizes.size - 1
    for k in range(L):
        n_out = sizes[k + 1]
        code = act if k < L - 1 else out_act
        for t in prange(T):
            r0, r1 = t * mb // T, (t + 1) * mb // T
            if r1 > r0:
                net_t = Net(sizes, w_off, b_off, act, out_act, loss, norm, g_off, r_off, skip,
                            alpha)  # fmt: skip
                buf_t = Buffers(a_off, acts, zs, hs, deltas, Y, grads, stats, norms)
                plain_dense(theta, net_t, k, buf_t, r0, r1 - r0)
                if record:
                    off = a_off[k + 1] + r0 * n_out
                    block_t = block(acts, off, r1 - r0, n_out)
                    activation_sums(code, block_t, block_t, part[t, k], zmax[t, k])
    if record:
        _combine(net, buf, mb, T, part, zmax)


@njit(**JIT)
def _combine(net, buf, mb, T, part, zmax):
    """The per-block statistics of ``forward`` into each layer's row of buf.stats."""
    L = net.sizes.size - 1
    for k in range(L):
        n, code = net.sizes[k + 1], net.act if k < L - 1 else net.out_act
        st = buf.stats[k]
        st[T_ACT_SUM] = 0.0
        st[T_ACT_SQ] = 0.0
        st[T_SAT] = 0.0
        first = -1
        for t in range(T):
            if (t + 1) * mb // T > t * mb // T:  # a block with rows
                st[T_ACT_SUM] += part[t, k, T_ACT_SUM]
                st[T_ACT_SQ] += part[t, k, T_ACT_SQ]
                st[T_SAT] += part[t, k, T_SAT]
                if first < 0:
                    first = t
                else:
                    for j in range(n):
                        zmax[first, k, j] = max(zmax[first, k, j], zmax[t, k, j])
        st[T_DEAD] = dead_units(code, zmax[first, k, :n])


@njit(parallel=True, **JIT)
def backward(theta, net, buf, mb):
    """``backward.backward`` of a plain net with ∂L/∂W_l and δ_{l−1} of each layer on two
    threads."""
    output_delta(net, buf, mb)
    sizes, w_off, b_off, act, out_act, loss, norm, g_off, r_off, skip, alpha = net
    a_off, acts, zs, hs, deltas, Y, grads, stats, norms = buf
    for k in range(sizes.size - 2, -1, -1):
        for task in prange(2):
            net_t = Net(sizes, w_off, b_off, act, out_act, loss, norm, g_off, r_off, skip, alpha)
            buf_t = Buffers(a_off, acts, zs, hs, deltas, Y, grads, stats, norms)
            if task == 0:
                weight_grad(net_t, k, buf_t, mb)
            elif k > 0:
                plain_delta_below(theta, net_t, k, buf_t, mb)


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
