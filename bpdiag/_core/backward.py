"""The backward pass: δ_L … δ_1, ∂L/∂W_l, ∂L/∂b_l (and ∂L/∂γ_l, ∂L/∂β_l), with the sums the
recorders need.

Each layer takes three passes over memory: the GEMM for ∂L/∂W_l, the GEMM for ∂L/∂a_{l−1}, and
one elementwise pass that multiplies by φ' and, as it goes, sums ∂L/∂b_l and Σδ² (a normalized
layer takes a second pass, through the normalization). Where layer l has a skip connection,
a_l = a_{l−1} + α h_l, its pass first copies ∂L/∂a_l into the block of ∂L/∂a_{l−1}, and the
GEMM adds δ_l W_l to it.
"""

from __future__ import annotations

from numba import njit

from bpdiag._core import vmath
from bpdiag._core.elementwise import needs_z, times_dphi
from bpdiag._core.forward import block, z_block
from bpdiag._core.gemm import gemm, gemm_add
from bpdiag._core.jit import JIT
from bpdiag._core.norm import copy_block, norm_backward
from bpdiag._core.slots import T_DELTA_SQ, T_DELTA_U_SQ, T_GAFF_SQ, T_GB_SQ, T_GW_SQ
from bpdiag._core.vmath import scale, sumsq


@njit(**JIT)
def output_delta(net, buf, mb):
    """δ_L = ∂L/∂a_L ⊙ φ'(z_L) in place (``output_loss`` wrote ∂L/∂a_L), with ∂L/∂b_L and Σδ_L²."""
    L = net.sizes.size - 1
    n, off, b0 = net.sizes[L], buf.a_off[L], net.b_off[L - 1]
    buf.stats[L - 1, T_DELTA_SQ] = times_dphi(
        net.out_act, z_block(net.out_act, buf, off, mb, n), block(buf.acts, off, mb, n),
        block(buf.deltas, off, mb, n), buf.grads[b0 : b0 + n],
    )  # fmt: skip


@njit(**JIT)
def hidden_delta(theta, net, k, buf, mb):
    """δ_l (l = k + 1 < L) in place from ∂L/∂a_l in buf.deltas, with ∂L/∂b_l, ∂L/∂γ_l, ∂L/∂β_l
    and the layer's sums; first, for a skip connection, ∂L/∂a_l into the block of ∂L/∂a_{l−1}.
    A plain layer's is ``plain_delta_below``'s pass."""
    n, off, b0 = net.sizes[k + 1], buf.a_off[k + 1], net.b_off[k]
    D = block(buf.deltas, off, mb, n)
    skip = net.skip[k] != 0
    if skip:
        copy_block(D, block(buf.deltas, buf.a_off[k], mb, n))
    H = block(buf.hs, off, mb, n) if skip else block(buf.acts, off, mb, n)
    c = net.alpha if skip else 1.0
    g0 = net.g_off[k]
    if g0 >= 0:
        sd, su = norm_backward(net.act, net.norm, D, block(buf.zs, off, mb, n), H,
                               theta[g0 : g0 + n], theta[g0 + n : g0 + 2 * n], buf.norms[k], c,
                               buf.grads[g0 : g0 + n], buf.grads[g0 + n : g0 + 2 * n],
                               buf.grads[b0 : b0 + n])  # fmt: skip
        buf.stats[k, T_DELTA_SQ] = sd
        buf.stats[k, T_DELTA_U_SQ] = su
        buf.stats[k, T_GAFF_SQ] = sumsq(buf.grads, g0, g0 + 2 * n)
        return
    # without normalization: δ_l = c ∂L/∂a_l ⊙ φ'(z_l), φ' from z_l (kept where needed) or h_l
    if c != 1.0:
        scale(buf.deltas, off, off + mb * n, vmath.scalar(c, buf.deltas))
    Z = block(buf.zs, off, mb, n) if needs_z(net.act) else H
    buf.stats[k, T_DELTA_SQ] = times_dphi(net.act, Z, H, D, buf.grads[b0 : b0 + n])


@njit(**JIT)
def weight_grad(net, k, buf, mb):
    """∂L/∂W_l = δ_lᵀ a_{l−1} (l = k + 1) into buf.grads, and ‖∂L/∂W_l‖², ‖∂L/∂b_l‖² into
    buf.stats (∂L/∂b_l is there already)."""
    n_in, n_out = net.sizes[k], net.sizes[k + 1]
    w0, b0 = net.w_off[k], net.b_off[k]
    D = block(buf.deltas, buf.a_off[k + 1], mb, n_out)
    gemm(D, True, block(buf.acts, buf.a_off[k], mb, n_in), False,
         block(buf.grads, w0, n_out, n_in))  # fmt: skip
    buf.stats[k, T_GW_SQ] = sumsq(buf.grads, w0, w0 + n_out * n_in)
    buf.stats[k, T_GB_SQ] = sumsq(buf.grads, b0, b0 + n_out)


@njit(**JIT)
def plain_delta_below(theta, net, k, buf, mb):
    """δ_{l−1} = (δ_l W_l) ⊙ φ'(z_{l−1}) into buf.deltas (l = k + 1 ≥ 2) where layers l and
    l − 1 are plain, with ∂L/∂b_{l−1} and Σδ_{l−1}² from the same pass. The two-core passes use
    this."""
    n_in, n_out = net.sizes[k], net.sizes[k + 1]
    off, b0 = buf.a_off[k], net.b_off[k - 1]
    D_prev = block(buf.deltas, off, mb, n_in)
    gemm(block(buf.deltas, buf.a_off[k + 1], mb, n_out), False,
         block(theta, net.w_off[k], n_out, n_in), False, D_prev)  # fmt: skip
    buf.stats[k - 1, T_DELTA_SQ] = times_dphi(
        net.act, z_block(net.act, buf, off, mb, n_in), block(buf.acts, off, mb, n_in), D_prev,
        buf.grads[b0 : b0 + n_in],
    )  # fmt: skip


@njit(**JIT)
def delta_below(theta, net, k, buf, mb):
    """∂L/∂a_{l−1} = δ_l W_l (l = k + 1 ≥ 2), plus ∂L/∂a_l where layer l has a skip connection,
    then δ_{l−1} from it (``hidden_delta``)."""
    if net.skip[k] == 0 and net.skip[k - 1] == 0 and net.g_off[k - 1] < 0:
        plain_delta_below(theta, net, k, buf, mb)
        return
    n_in, n_out = net.sizes[k], net.sizes[k + 1]
    D = block(buf.deltas, buf.a_off[k + 1], mb, n_out)
    W = block(theta, net.w_off[k], n_out, n_in)
    D_prev = block(buf.deltas, buf.a_off[k], mb, n_in)
    if net.skip[k] != 0:
        gemm_add(D, False, W, False, D_prev)
    else:
        gemm(D, False, W, False, D_prev)
    hidden_delta(theta, net, k - 1, buf, mb)


@njit(**JIT)
def backward(theta, net, buf, mb):
    """Given ∂L/∂a_L in buf.deltas: δ_l into buf.deltas, the gradients into buf.grads, and
    their sums (‖∂L/∂W_l‖², ‖∂L/∂b_l‖², ‖(∂L/∂γ_l, ∂L/∂β_l)‖², Σδ_l²) into buf.stats."""
    output_delta(net, buf, mb)
    for k in range(net.sizes.size - 2, -1, -1):
        weight_grad(net, k, buf, mb)
        if k > 0:
            delta_below(theta, net, k, buf, mb)
