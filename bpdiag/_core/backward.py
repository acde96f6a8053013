"""The backward pass: δ_L … δ_1, ∂L/∂W_l and ∂L/∂b_l, with the sums the recorders need.

Each layer takes three passes over memory: the GEMM for ∂L/∂W_l, the GEMM for δ_{l−1}, and one
elementwise pass that multiplies by φ' and, as it goes, sums ∂L/∂b_l and Σδ².
"""

from __future__ import annotations

from numba import njit

from bpdiag._core.elementwise import times_dphi
from bpdiag._core.forward import block, forward, output_loss, z_block
from bpdiag._core.gemm import gemm
from bpdiag._core.jit import JIT
from bpdiag._core.slots import T_DELTA_SQ, T_GB_SQ, T_GW_SQ
from bpdiag._core.vmath import sumsq


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
def delta_below(theta, net, k, buf, mb):
    """δ_{l−1} = (δ_l W_l) ⊙ φ'(z_{l−1}) (l = k + 1 ≥ 2) into buf.deltas, with ∂L/∂b_{l−1}
    and Σδ_{l−1}² from the same pass."""
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
def backward(theta, net, buf, mb):
    """Given ∂L/∂a_L in buf.deltas: δ_l into buf.deltas, ∂L/∂W_l and ∂L/∂b_l into buf.grads,
    and ‖∂L/∂W_l‖², ‖∂L/∂b_l‖², Σδ_l² into buf.stats, for l = L..1."""
    output_delta(net, buf, mb)
    for k in range(net.sizes.size - 2, -1, -1):
        weight_grad(net, k, buf, mb)
        if k > 0:
            delta_below(theta, net, k, buf, mb)


@njit(**JIT)
def loss_and_grads(theta, net, buf, mb):
    """Forward, loss and backward on the batch already in a_0 and buf.Y: (loss, accuracy)."""
    forward(theta, net, buf, mb)
    loss, acc = output_loss(net, buf, mb)
    backward(theta, net, buf, mb)
    return loss, acc
