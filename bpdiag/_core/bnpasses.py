"""The two-core passes of a BatchNorm net: the batch's rows cut into T blocks as in
``parallel``, but the threads meet at every layer, since BatchNorm's statistics and the means
of its backward pass are sums over all the rows.

- ``forward_layer`` (a parallel region a layer): each thread finishes layer l − 1 on its rows
  (ẑ with the batch's statistics, γ ẑ + β, φ, the skip), then takes its rows of
  z_l = a_{l−1} W_lᵀ + b_l and their mean and variance (``norm.batch_statistics``); one thread
  merges the blocks' statistics before the next region (``norm.merge_statistics``). The output
  layer's region also takes the loss and δ_L on each block of rows.
- ``backward_layer`` (a region a layer): each thread finishes δ_l on its rows
  (``norm.batch_delta`` with the batch's sums), takes its rows of ∂L/∂a_{l−1} = δ_l W_l and of
  ∂L/∂u_{l−1} with their sums Σ ∂L/∂u and Σ ∂L/∂u ⊙ ẑ (``norm.affine_grads``), which one thread
  adds up before the next region (``norm.batch_coefficients``).
- ``passes``: the regions in turn, then ``parallel.weight_grads`` and ``parallel.reduce_bias``
  as for the other nets.

Thread t's shares of ∂L/∂b_l, ∂L/∂γ_l, ∂L/∂β_l go into buf.grads (t = 0) or
buf.grads_part[t − 1] (``parallel.reduce_bias`` adds them up), its statistics and sums into
tnorms[t] (the layout of buf.norms). Splitting each layer by units instead needs no merging,
but two threads each writing half of every row ran no faster than one here. Results agree with
one thread's to rounding (the sums add their blocks' parts).
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from bpdiag._core.backward import output_delta
from bpdiag._core.elementwise import activate
from bpdiag._core.forward import block, output_loss, plain_dense
from bpdiag._core.gemm import gemm, gemm_add
from bpdiag._core.jit import JIT
from bpdiag._core.norm import (
    affine_grads,
    batch_coefficients,
    batch_delta,
    batch_statistics,
    by_unit,
    copy_block,
    merge_statistics,
    skip_add,
)
from bpdiag._core.parallel import reduce_bias, weight_grads
from bpdiag._core.slots import T_DELTA_SQ, T_DELTA_U_SQ
from bpdiag._core.structs import NM_SUM_G, NM_SUM_GZ, Buffers


@njit(**JIT)
def _finish_forward(theta, act, alpha, n, b0, g0, skip, A_prev, Z, H, A, st):
    """A BatchNorm layer of n units on a block of rows, from z + b in Z (its batch statistics
    in st): ẑ in Z, h = φ(γ ẑ + β) in H, a = a_prev + α h in A where it has a skip (else H is
    A)."""
    by_unit(Z, theta[b0 : b0 + n], st, theta[g0 : g0 + n], H, False)
    activate(act, H, theta[g0 + n : g0 + 2 * n])
    if skip:
        skip_add(A, A_prev, H, alpha)


@njit(parallel=True, **JIT)
def forward_layer(theta, net, buf, k, mb, T, tnorms, spart, lossacc):
    """Layer l = k + 1's pass over mb rows in T blocks: layer l − 1 finished on them first
    (l ≥ 2); then z_l and thread t's statistics of it into tnorms[t, k] (a BatchNorm layer), or
    a_l, the loss and δ_L (the output layer: its share of the loss and accuracy into
    lossacc[t], of Σδ_L² into spart[t], of ∂L/∂b_L into its gradient block)."""
    sizes, w_off, b_off, g_off, skip = net.sizes, net.w_off, net.b_off, net.g_off, net.skip
    act, alpha = net.act, net.alpha
    a_off, acts, zs, hs, deltas, Y = buf.a_off, buf.acts, buf.zs, buf.hs, buf.deltas, buf.Y
    grads, norms, grads_part = buf.grads, buf.norms, buf.grads_part
    L = sizes.size - 1
    n_in, n = sizes[k], sizes[k + 1]
    j = max(k - 1, 0)  # the layer below, finished first
    st_below, skip_below, n_j = norms[j], skip[j] != 0, sizes[j + 1]
    for t in prange(T):
        r0, r1 = t * mb // T, (t + 1) * mb // T
        rows = r1 - r0
        g_t = grads if t == 0 else grads_part[t - 1]
        if rows > 0 and k > 0 and g_off[j] >= 0:
            off = a_off[k] + r0 * n_j
            A = block(acts, off, rows, n_j)
            _finish_forward(theta, act, alpha, n_j, b_off[j], g_off[j], skip_below,
                            block(acts, a_off[j] + r0 * n_j, rows, n_j),
                            block(zs, off, rows, n_j), block(hs, off, rows, n_j) if skip_below
                            else A, A, st_below)  # fmt: skip
        if rows > 0 and k < L - 1:
            Z = block(zs, a_off[k + 1] + r0 * n, rows, n)
            gemm(block(acts, a_off[k] + r0 * n_in, rows, n_in), False,
                 block(theta, w_off[k], n, n_in), True, Z)  # fmt: skip
            batch_statistics(Z, theta[b_off[k] : b_off[k] + n], tnorms[t, k])
        if rows > 0 and k == L - 1:
            off_t = a_off.copy()  # block i's rows from r0 on, as in ``parallel.passes``
            for i in range(L + 1):
                off_t[i] += r0 * sizes[i]
            buf_t = Buffers(off_t, acts, zs, hs, deltas, Y[r0:r1], g_t, spart[t], norms,
                            grads_part)  # fmt: skip
            plain_dense(theta, net, k, buf_t, np.int64(0), rows)
            lossacc[t, 0], lossacc[t, 1] = output_loss(net, buf_t, rows, mb)
            output_delta(net, buf_t, rows)
        if rows == 0 and k == L - 1:
            lossacc[t, 0], lossacc[t, 1] = 0.0, 0.0
            spart[t, L - 1, T_DELTA_SQ] = 0.0
            g_t[b_off[k] : b_off[k] + n] = 0.0


@njit(parallel=True, **JIT)
def backward_layer(theta, net, buf, k, mb, T, tnorms, sums):
    """From layer l = k + 1's ∂L/∂u_l (or δ_L) over mb rows in T blocks: thread t finishes δ_l
    on its rows (a BatchNorm layer, with ``batch_coefficients`` in buf.norms[k]; its share of
    Σδ_l² into sums[t, 0], of ∂L/∂b_l into its gradient block), then for l ≥ 2 takes its rows
    of ∂L/∂a_{l−1} = δ_l W_l (added to the skip's share where layer l has one) and of
    ∂L/∂u_{l−1}: its Σ(∂L/∂u)² into sums[t, 1], its sums per unit into tnorms[t, k − 1] and
    its shares of ∂L/∂γ_{l−1}, ∂L/∂β_{l−1} into its gradient block."""
    sizes, w_off, b_off, g_off, skip = net.sizes, net.w_off, net.b_off, net.g_off, net.skip
    act, alpha = net.act, net.alpha
    a_off, acts, zs, hs, deltas = buf.a_off, buf.acts, buf.zs, buf.hs, buf.deltas
    grads, norms, grads_part = buf.grads, buf.norms, buf.grads_part
    n_in, n = sizes[k], sizes[k + 1]
    for t in prange(T):
        r0, r1 = t * mb // T, (t + 1) * mb // T
        rows = r1 - r0
        g_t = grads if t == 0 else grads_part[t - 1]
        sums[t, 0] = 0.0
        sums[t, 1] = 0.0
        D = block(deltas, a_off[k + 1] + r0 * n, rows, n)
        if g_off[k] >= 0:
            gk, bk = g_off[k], b_off[k]
            sums[t, 0] = batch_delta(D, block(zs, a_off[k + 1] + r0 * n, rows, n),
                                     theta[gk : gk + n], norms[k], g_t[bk : bk + n])  # fmt: skip
        if k > 0 and rows > 0:
            D_prev = block(deltas, a_off[k] + r0 * n_in, rows, n_in)
            W = block(theta, w_off[k], n, n_in)
            if skip[k] != 0:
                gemm_add(D, False, W, False, D_prev)  # ∂L/∂a_l is there already
            else:
                gemm(D, False, W, False, D_prev)
        if k > 0:
            j, gj = k - 1, g_off[k - 1]  # layer l − 1's
            off = a_off[k] + r0 * n_in
            if skip[j] != 0:  # a_{l−1} = a_{l−2} + α h_{l−1}: ∂L/∂a_{l−1} reaches a_{l−2}
                copy_block(block(deltas, off, rows, n_in),
                           block(deltas, a_off[j] + r0 * n_in, rows, n_in))  # fmt: skip
            st = tnorms[t, j]
            sums[t, 1] = affine_grads(
                act, block(deltas, off, rows, n_in), block(zs, off, rows, n_in),
                block(hs if skip[j] != 0 else acts, off, rows, n_in), theta[gj : gj + n_in],
                theta[gj + n_in : gj + 2 * n_in], alpha if skip[j] != 0 else 1.0,
                st[NM_SUM_G], st[NM_SUM_GZ],
            )  # fmt: skip
            g_t[gj : gj + n_in] = st[NM_SUM_GZ, :n_in]  # ∂L/∂γ
            g_t[gj + n_in : gj + 2 * n_in] = st[NM_SUM_G, :n_in]  # ∂L/∂β


@njit(**JIT)
def passes(theta, net, buf, mb, T, tnorms, spart, lossacc, sums, gw_sq):
    """Forward, loss and backward of a BatchNorm net (every hidden layer normalized, the output
    layer plain) over mb rows in training mode, on T threads: the gradients into buf.grads and
    the step's sums into buf.stats as ``backward.backward`` leaves them; returns (loss,
    accuracy). Scratch: tnorms (T, L, N_NORM, ≥ width), spart (T, L, N_STATS), lossacc (T, 2),
    sums (T, 2), gw_sq (T L,), all float64."""
    L = net.sizes.size - 1
    counts = np.empty(T, np.int64)
    for t in range(T):
        counts[t] = (t + 1) * mb // T - t * mb // T
    for k in range(L):
        forward_layer(theta, net, buf, k, mb, T, tnorms, spart, lossacc)
        if k < L - 1:
            merge_statistics(tnorms[:, k], counts, buf.norms[k], net.sizes[k + 1])
    loss = 0.0
    acc = 0.0
    buf.stats[L - 1, T_DELTA_SQ] = 0.0
    for t in range(T):
        loss += lossacc[t, 0]
        acc += lossacc[t, 1]
        buf.stats[L - 1, T_DELTA_SQ] += spart[t, L - 1, T_DELTA_SQ]
    for k in range(L - 1, -1, -1):
        backward_layer(theta, net, buf, k, mb, T, tnorms, sums)
        if k < L - 1:
            buf.stats[k, T_DELTA_SQ] = np.sum(sums[:, 0])
        if k > 0:
            j, n = k - 1, net.sizes[k]
            st = buf.norms[j]
            buf.stats[j, T_DELTA_U_SQ] = np.sum(sums[:, 1])
            for u in range(n):
                sg = 0.0
                sgz = 0.0
                for t in range(T):
                    sg += tnorms[t, j, NM_SUM_G, u]
                    sgz += tnorms[t, j, NM_SUM_GZ, u]
                st[NM_SUM_G, u] = sg
                st[NM_SUM_GZ, u] = sgz
            g0 = net.g_off[j]
            batch_coefficients(theta[g0 : g0 + n], st, n, mb)
    weight_grads(net, buf, mb, T, gw_sq)
    reduce_bias(net, buf, T, T, gw_sq)
    return loss, acc
