"""The step's passes spread over Numba's threads, with BLAS single-threaded (``bpdiag.train``
decides when; the one-thread passes are in ``bpdiag.kernels``).

- forward: each layer's GEMM and activation pass by row blocks of the batch, one per thread,
  and on record steps the activation statistics of the block just written;
- backward: a layer's two GEMMs side by side, ∂L/∂W_l = δ_lᵀ a_{l−1} (with its norms) on one
  thread and δ_{l−1} = (δ_l W_l) ⊙ φ'(z_{l−1}) on another;
- the optimizer step over pieces of the flat parameter vector (``pieces``), shared out evenly.

Results agree with one thread's to rounding: BLAS may round a GEMM over a block of rows
differently from one over the whole batch, and a record's per-layer sums add their pieces in
another order. Entering a parallel region costs ≈ 2.5 µs, so this pays from about 2^20
multiply-adds a layer (``bpdiag.train.PARALLEL_MIN_MACS``).
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from bpdiag import kernels
from bpdiag.jit import JIT

PIECE = 16384  # parameters per optimizer piece: ≈ 10 µs of Adam, ≫ the cost of handing it out


def pieces(w_off: np.ndarray, b_off: np.ndarray, sizes: np.ndarray, size: int) -> np.ndarray:
    """(3, n) int64: [lo, hi) of each piece of theta and the segment it belongs to (2k for W of
    layer k, 2k + 1 for its bias). W blocks are cut into near-equal pieces of ≤ ``size``."""
    out = []
    for k, (w0, b0) in enumerate(zip(w_off, b_off, strict=True)):
        n_w, n_b = int(sizes[k] * sizes[k + 1]), int(sizes[k + 1])
        edges = np.linspace(w0, w0 + n_w, -(-n_w // size) + 1).astype(np.int64)
        out += [(lo, hi, 2 * k) for lo, hi in zip(edges[:-1], edges[1:], strict=True)]
        out.append((b0, b0 + n_b, 2 * k + 1))
    return np.array(out, np.int64).T.copy()


@njit(parallel=True, **JIT)
def forward(theta, sizes, w_off, b_off, a_off, mb, acts, zs, act, out_act, T, record, stats,
            part, zmax):  # fmt: skip
    """``kernels.forward`` with each layer's rows split into T blocks, one per thread (T is
    passed in: ``numba.get_num_threads`` in a kernel would keep it out of the on-disk cache).
    With ``record``, each thread also takes ``kernels.activation_sums`` of the block it has just
    written (part: (T, L, ≥ 3), zmax: (T, L, max width) scratch), combined into ``stats``."""
    L = sizes.size - 1
    for k in range(L):
        n_in, n_out = sizes[k], sizes[k + 1]
        code = act if k < L - 1 else out_act
        for t in prange(T):
            r0, r1 = t * mb // T, (t + 1) * mb // T
            if r1 > r0:
                kernels.dense(code, theta, w_off[k], b_off[k], n_in, n_out, acts, zs,
                              a_off[k] + r0 * n_in, a_off[k + 1] + r0 * n_out, r1 - r0)  # fmt: skip
                if record:
                    off = a_off[k + 1] + r0 * n_out
                    kernels.activation_sums(code, kernels.z_block(code, zs, acts, off, r1 - r0, n_out),
                                            kernels.block(acts, off, r1 - r0, n_out), part[t, k],
                                            zmax[t, k])  # fmt: skip
    if record:
        _combine(sizes, mb, act, out_act, T, stats, part, zmax)


@njit(**JIT)
def _combine(sizes, mb, act, out_act, T, stats, part, zmax):
    """The per-block statistics of ``forward`` into each layer's row of ``stats``."""
    L = sizes.size - 1
    for k in range(L):
        n, code = sizes[k + 1], act if k < L - 1 else out_act
        st = stats[k]
        st[kernels.T_ACT_SUM] = 0.0
        st[kernels.T_ACT_SQ] = 0.0
        st[kernels.T_SAT] = 0.0
        first = -1
        for t in range(T):
            if (t + 1) * mb // T > t * mb // T:  # a block with rows
                st[kernels.T_ACT_SUM] += part[t, k, kernels.T_ACT_SUM]
                st[kernels.T_ACT_SQ] += part[t, k, kernels.T_ACT_SQ]
                st[kernels.T_SAT] += part[t, k, kernels.T_SAT]
                if first < 0:
                    first = t
                else:
                    for j in range(n):
                        zmax[first, k, j] = max(zmax[first, k, j], zmax[t, k, j])
        st[kernels.T_DEAD] = kernels.dead_units(code, zmax[first, k, :n])


@njit(parallel=True, **JIT)
def backward(theta, sizes, w_off, b_off, a_off, mb, acts, zs, deltas, grads, act, out_act, stats):
    """``kernels.backward`` with ∂L/∂W_l and δ_{l−1} of each layer on two threads."""
    L = sizes.size - 1
    kernels.output_delta(sizes, b_off, a_off, mb, acts, zs, deltas, grads, out_act, stats)
    for k in range(L - 1, -1, -1):
        for task in prange(2):
            if task == 0:
                kernels.weight_grad(k, sizes, w_off, b_off, a_off, mb, acts, deltas, grads, stats)
            elif k > 0:
                kernels.delta_below(k, theta, sizes, w_off, b_off, a_off, mb, acts, zs, deltas,
                                    grads, act, stats)  # fmt: skip


@njit(parallel=True, **JIT)
def update(opt, hp, t, theta, grads, coef, state, pcs, sums, sc):
    """``kernels.update`` on each piece (``pieces``), the pieces shared out over the threads;
    (‖Δθ‖², ‖θ‖², ‖g‖²) of piece q into sums[q]. sc: (pieces, 10) scratch of theta's dtype."""
    for q in prange(pcs.shape[1]):
        dsq, wsq, gsq = kernels.update(opt, hp, t, theta, grads, coef, state, pcs[0, q],
                                       pcs[1, q], sc[q])  # fmt: skip
        sums[q, 0] = dsq
        sums[q, 1] = wsq
        sums[q, 2] = gsq
