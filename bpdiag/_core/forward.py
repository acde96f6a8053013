"""The forward pass and the loss: a_0 → a_1 … a_L, then L and ∂L/∂a_L (layout: ``structs``)."""

from __future__ import annotations

import math

import numpy as np
from numba import njit, types
from numba.extending import intrinsic
from numba.np.arrayobj import populate_array

from bpdiag._core.codes import BCE, CE
from bpdiag._core.elementwise import (
    activate,
    activate_in_place,
    bias_activate,
    needs_z,
    sigmoid_exact,
)
from bpdiag._core.gemm import gemm
from bpdiag._core.jit import INLINE, JIT
from bpdiag._core.norm import normalize, skip_add


@intrinsic
def _borrowed_view(typingctx, buf, off, rows, cols):
    """The (rows, cols) C-contiguous view of the 1-D ``buf`` from element ``off``, borrowed: no
    reference of its own on buf's memory (the caller keeps buf alive)."""
    if not (isinstance(buf, types.Array) and buf.ndim == 1 and buf.layout == "C"):
        return None  # a typing error: the view's arithmetic assumes contiguous elements
    ret = types.Array(buf.dtype, 2, "C")
    sig = ret(buf, off, rows, cols)

    def codegen(context, builder, signature, args):
        src = context.make_array(signature.args[0])(context, builder, args[0])
        off_, rows_, cols_ = (
            context.cast(builder, v, t, types.intp)
            for v, t in zip(args[1:], signature.args[1:], strict=True)
        )
        itemsize = context.get_constant(
            types.intp, context.get_abi_sizeof(context.get_data_type(buf.dtype))
        )
        out = context.make_array(ret)(context, builder)
        populate_array(
            out,
            data=builder.gep(src.data, [off_]),
            shape=[rows_, cols_],
            strides=[builder.mul(cols_, itemsize), itemsize],
            itemsize=itemsize,
            meminfo=None,
        )
        return out._getvalue()

    return sig, codegen


@njit(**INLINE)
def block(buf, off, rows, cols):
    """The (rows, cols) view of the flat ``buf`` starting at ``off`` (borrowed: it lives no
    longer than the kernel that holds ``buf``; Numba's reference counting of a view is a locked
    increment and decrement, which a layer's dozen views made a measurable share of a small
    net's step). Unchecked, unlike the reshaped slice it replaces: off and off + rows·cols lie
    in ``buf`` by the layout ``structs.make_buffers`` builds (a range check here cost 15–20 % of
    a 64-layer width-8 step, its raise path kept in every layer's code)."""
    return _borrowed_view(buf, off, rows, cols)


@njit(**JIT)
def z_block(code, buf, off, rows, cols):
    """The (rows, cols) block holding z_l of a plain layer for ``code``: in ``buf.zs`` where it
    is kept, else the a block (for linear z = a; for relu, tanh and sigmoid nothing reads z)."""
    return block(buf.zs if needs_z(code) else buf.acts, off, rows, cols)


@njit(**JIT)
def running_of(running, net, k):
    """(mean, var): BatchNorm's running statistics of layer k (empty where it keeps none)."""
    r, n = net.r_off[k], net.sizes[k + 1]
    lo = r if r >= 0 else 0
    hi = r + n if r >= 0 else 0
    return running[0, lo:hi], running[1, lo:hi]


@njit(**JIT)
def plain_dense(theta, net, k, buf, r0, rows):
    """A plain layer l = k + 1 (no normalization, no skip) on ``rows`` rows from row r0:
    a_l = φ(a_{l−1} W_lᵀ + b_l), z_l kept where φ' needs it. The two-core passes use this."""
    n_in, n_out = net.sizes[k], net.sizes[k + 1]
    off = buf.a_off[k + 1] + r0 * n_out
    code = net.act if k < net.sizes.size - 2 else net.out_act
    W = block(theta, net.w_off[k], n_out, n_in)
    b = theta[net.b_off[k] : net.b_off[k] + n_out]
    A_prev, A = (
        block(buf.acts, buf.a_off[k] + r0 * n_in, rows, n_in),
        block(buf.acts, off, rows, n_out),
    )
    if needs_z(code):
        Z = block(buf.zs, off, rows, n_out)
        gemm(A_prev, False, W, True, Z)
        bias_activate(code, Z, b, A)
    else:
        gemm(A_prev, False, W, True, A)
        activate_in_place(code, A, b)


@njit(**JIT)
def cured_dense(theta, running, net, k, buf, mb, mode):
    """A hidden layer l = k + 1 with a normalization or a skip connection, on the batch's mb
    rows: z_l (kept where φ' needs it) or ẑ_l (kept), u_l, h_l = φ(u_l) (kept where there is a
    skip) and a_l. ``mode``: BatchNorm's statistics, ``codes.TRAIN`` (the batch's, into
    buf.norms) or ``codes.EVAL`` (the running ones)."""
    n_in, n = net.sizes[k], net.sizes[k + 1]
    off = buf.a_off[k + 1]
    W = block(theta, net.w_off[k], n, n_in)
    b = theta[net.b_off[k] : net.b_off[k] + n]
    A_prev, A = block(buf.acts, buf.a_off[k], mb, n_in), block(buf.acts, off, mb, n)
    skip = net.skip[k] != 0
    H = block(buf.hs, off, mb, n) if skip else A  # h_l = φ(u_l)
    g0 = net.g_off[k]
    if g0 >= 0:
        Z = block(buf.zs, off, mb, n)
        gemm(A_prev, False, W, True, Z)
        run_mean, run_var = running_of(running, net, k)
        normalize(net.norm, mode, Z, b, theta[g0 : g0 + n], H, buf.norms[k], run_mean, run_var)
        activate(net.act, H, theta[g0 + n : g0 + 2 * n])  # u = γ ẑ + β, h = φ(u)
    elif needs_z(net.act):
        Z = block(buf.zs, off, mb, n)
        gemm(A_prev, False, W, True, Z)
        bias_activate(net.act, Z, b, H)
    else:
        gemm(A_prev, False, W, True, H)
        activate_in_place(net.act, H, b)
    if skip:
        skip_add(A, A_prev, H, net.alpha)


@njit(**JIT)
def forward(theta, running, net, buf, mb, mode):
    """a_0 (already in ``buf.acts``) → a_l for l = 1..L on the first mb rows."""
    first = np.int64(0)  # not the literal 0: a literal argument compiles a callee of its own
    for k in range(net.sizes.size - 1):
        if net.g_off[k] >= 0 or net.skip[k] != 0:
            cured_dense(theta, running, net, k, buf, mb, mode)
        else:
            plain_dense(theta, net, k, buf, first, mb)


@njit(**JIT)
def loss_delta(loss, Z, A, Y, D, batch):
    """Batch-mean loss and accuracy (NaN for mse); ∂L/∂a_L into D (``backward`` makes it
    δ_L = ∂L/∂a_L ⊙ φ'(z_L); for bce and ce the output is linear, a_L = z_L).

    Z, A, D: (mb, k) rows of a batch of ``batch`` rows (mb = batch but for the two-core step's
    blocks, whose returned loss and accuracy add up to the batch's). Y: (mb, k) targets, or
    (mb, 1) integer labels stored as floats for ce. Semantics of PyTorch's BCEWithLogitsLoss,
    CrossEntropyLoss and MSELoss (mean reduction).
    """
    mb, k = Z.shape
    total = 0.0
    correct = 0.0
    if loss == BCE:
        scale = 1.0 / (batch * k)
        for i in range(mb):
            for j in range(k):
                z = Z[i, j]
                y = Y[i, j]
                total += max(z, 0.0) - z * y + math.log1p(math.exp(-abs(z)))
                D[i, j] = (sigmoid_exact(z) - y) * scale
                correct += 1.0 if (z > 0) == (y >= 0.5) else 0.0
        return total * scale, correct * scale
    if loss == CE:
        scale = 1.0 / batch
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
    scale = 1.0 / (batch * k)
    for i in range(mb):
        for j in range(k):
            e = A[i, j] - Y[i, j]
            total += e * e
            D[i, j] = 2.0 * e * scale
    return total * scale, np.nan


@njit(**JIT)
def output_loss(net, buf, mb, batch):
    """The loss of the first mb rows of the output block against buf.Y, with ∂L/∂a_L written
    into the delta block, as parts of a batch of ``batch`` rows: (loss, accuracy)."""
    L = net.sizes.size - 1
    n, off = net.sizes[L], buf.a_off[L]
    return loss_delta(net.loss, z_block(net.out_act, buf, off, mb, n), block(buf.acts, off, mb, n),
                      buf.Y[:mb], block(buf.deltas, off, mb, n), batch)  # fmt: skip
