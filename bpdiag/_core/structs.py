"""The named tuples the kernels take: the net's layout, the scratch of a batch, the training setup.

Conventions (the seed's notation, PyTorch's layout):

- Layers are numbered l = 1..L in the math and k = l − 1 in code. a_0 = x is the input batch;
  z_l = a_{l−1} W_lᵀ + b_l and a_l = φ(z_l), with W_l of shape (n_l, n_{l−1}) and every batch
  a row-major (m, n) block. For ``bce`` and ``ce`` the output layer keeps a_L = z_L (logits):
  the loss applies the sigmoid or softmax itself, stably.
- δ_l = ∂L/∂z_l for the batch-mean loss L, so ∂L/∂W_l = δ_lᵀ a_{l−1}, ∂L/∂b_l = Σ_rows δ_l and
  δ_{l−1} = (δ_l W_l) ⊙ φ'(z_{l−1}) (the seed's recursion, batch in rows).
- All parameters live in one flat vector ``theta`` (W_1, b_1, W_2, b_2, …); gradients and the
  optimizer's state rows share that layout, so clipping and optimizer steps are flat loops.
- Activations, pre-activations and deltas live in flat buffers with one (cap, n_j) block per
  layer j = 0..L; a batch of mb ≤ cap rows uses the first mb rows of each block.

Numba compiles one specialization per combination of field types, so the constructors below fix
every field's type (int64 arrays, Python ints, floats and bools).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from bpdiag._core.codes import BATCHNORM, NO_NORM, TASK_TRAIN
from bpdiag._core.slots import N_STATS


class Net(NamedTuple):
    """A net as the kernels see it: where each layer lives in theta, and what it computes.

    Hidden layer l (1 ≤ l < L) computes z_l = a_{l−1} W_lᵀ + b_l, u_l = norm(z_l) (u_l = z_l
    without normalization), h_l = φ(u_l), and a_l = a_{l−1} + α h_l where it has a skip
    connection, else a_l = h_l. The output layer is z_L = a_{L−1} W_Lᵀ + b_L, a_L = φ_out(z_L).
    theta holds, layer after layer, W_l, b_l and, for a normalized layer, γ_l then β_l.
    """

    sizes: np.ndarray  # (L + 1,) int64: [n_0 = n_in, n_1, ..., n_L = n_out]
    w_off: np.ndarray  # (L,) int64: W_l is theta[w_off[k] : w_off[k] + n_l n_{l−1}]
    b_off: np.ndarray  # (L,) int64: b_l is theta[b_off[k] : b_off[k] + n_l]
    act: int  # code of the hidden activation (``codes``)
    out_act: int  # code of the output activation (linear for bce and ce)
    loss: int  # code of the loss
    norm: int  # code of the hidden layers' normalization
    g_off: np.ndarray  # (L,) int64: γ_l at theta[g_off[k]:][:n_l], β_l right after; −1: none
    r_off: np.ndarray  # (L,) int64: BatchNorm's running mean and variance of layer l at
    #                    running[0 and 1, r_off[k]:][:n_l]; −1: none
    skip: np.ndarray  # (L,) int64: 1 where layer l has a skip connection
    alpha: float  # α, the scale of the residual branch


def make_net(sizes: list[int], act: int, out_act: int, loss: int, norm: int = NO_NORM,
             residual: bool = False, alpha: float = 1.0) -> Net:  # fmt: skip
    """The layout of a net; with ``residual``, every hidden layer but the first whose input and
    output widths match gets a skip connection."""
    sizes = np.asarray(sizes, dtype=np.int64)
    L = sizes.size - 1
    width = sizes[1:]
    normed = (np.arange(L) < L - 1) & (norm != NO_NORM)
    fan = sizes[:-1] * width
    size = fan + width + 2 * width * normed  # W, b and (γ, β) of each layer
    w_off = np.concatenate([[0], np.cumsum(size)[:-1]]).astype(np.int64)
    b_off = w_off + fan
    g_off = np.where(normed, b_off + width, -1).astype(np.int64)
    running = normed & (norm == BATCHNORM)
    r_off = np.where(running, np.concatenate([[0], np.cumsum(width * running)[:-1]]), -1)
    skip = np.zeros(L, np.int64)
    if residual:
        skip[1 : L - 1] = sizes[1 : L - 1] == sizes[2:L]
    return Net(sizes, w_off, b_off, int(act), int(out_act), int(loss), int(norm), g_off,
               r_off.astype(np.int64), skip, float(alpha))  # fmt: skip


def n_params(net: Net) -> int:
    width = net.sizes[1:]
    return int(np.sum(net.sizes[:-1] * width + width + 2 * width * (net.g_off >= 0)))


def n_running(net: Net) -> int:
    """Units whose BatchNorm keeps running statistics."""
    return int(np.sum(net.sizes[1:] * (net.r_off >= 0)))


class Buffers(NamedTuple):
    """The scratch of one batch of up to ``cap`` rows (nothing is read before it is written)."""

    a_off: np.ndarray  # (L + 1,) int64: offsets of the (cap, n_j) blocks j = 0..L
    acts: np.ndarray  # a_0 (the input batch), a_1, ..., a_L
    zs: np.ndarray  # z_l where φ' needs it (``elementwise.needs_z``); ẑ_l of a normalized layer
    hs: np.ndarray  # h_l = φ(u_l) of a layer with a skip connection (a_l is a_{l−1} + α h_l)
    deltas: np.ndarray  # ∂L/∂a_L, then ∂L/∂a_l and δ_l
    Y: np.ndarray  # (cap, k): the batch's targets (ce: integer labels as floats, k = 1)
    grads: np.ndarray  # (n_params,) ∂L/∂θ, laid out like theta
    stats: np.ndarray  # (L, N_STATS) float64: the step's per-layer sums (``slots.STATS``)
    norms: np.ndarray  # (L, N_NORM, max(width, cap)) float64: normalization statistics
    grads_part: np.ndarray  # (threads − 1, n_params): the two-core step's other threads' ∂L/∂b_l


# rows of Buffers.norms: per unit (BatchNorm) or per row (LayerNorm)
NM_MEAN, NM_ISTD, NM_VAR, NM_SUM_G, NM_SUM_GZ = range(5)
N_NORM = 5


def make_buffers(net: Net, cap: int, n_targets: int, dtype: np.dtype, threads: int = 1) -> Buffers:
    """The scratch of batches of up to ``cap`` rows for a step on ``threads`` threads."""
    a_off = cap * np.concatenate([[0], np.cumsum(net.sizes)]).astype(np.int64)
    n = int(a_off[-1])
    L = net.sizes.size - 1
    widest = int(net.sizes.max())
    normed = bool(np.any(net.g_off >= 0))
    return Buffers(a_off, np.zeros(n, dtype), np.zeros(n, dtype),
                   np.zeros(n if net.skip.any() else 1, dtype), np.zeros(n, dtype),
                   np.zeros((cap, n_targets), dtype), np.zeros(n_params(net), dtype),
                   np.zeros((L, N_STATS)),
                   np.zeros((L, N_NORM, max(widest, cap) if normed else 1)),
                   np.zeros((max(threads, 1) - 1, n_params(net)), dtype))  # fmt: skip


class Hyper(NamedTuple):
    """Optimizer hyper-parameters under PyTorch's names (``bpdiag.choices.optim`` fills them)."""

    lr: float
    momentum: float = 0.0
    dampening: float = 0.0
    nesterov: bool = False
    beta1: float = 0.0
    beta2: float = 0.0
    eps: float = 0.0
    alpha: float = 0.0
    weight_decay: float = 0.0
    centered: bool = False


class Setup(NamedTuple):
    """How to train: optimizer, clipping, the NaN guard, threads and the optimizer's pieces."""

    optimizer: int  # code (``codes``)
    hyper: Hyper
    clip: int  # code
    clip_value: float  # c of the clipping mode (0 for none)
    nan_guard: bool  # stop at the first non-finite loss or gradient, before its update
    threads: int  # 1: the passes of one thread; more: those of ``parallel``
    pieces: np.ndarray  # (3, n) int64: [lo, hi) and segment of each optimizer piece
    task: int = TASK_TRAIN  # or one pass over a batch (``codes``, ``loop.train_steps``)


class Feed(NamedTuple):
    """The minibatches of one chunk: step s uses rows idx[starts[s]:starts[s + 1]] of X, Y."""

    X: np.ndarray  # (m, n_in)
    Y: np.ndarray  # (m, k)
    idx: np.ndarray  # int64 row indices
    starts: np.ndarray  # int64, one more than the chunk's steps


class Records(NamedTuple):
    """Where the records go (``slots``), and when."""

    steps: np.ndarray  # (n_rec, len(STEP_SLOTS)) float64
    layers: np.ndarray  # (n_rec, L, len(LAYER_SLOTS)) float64
    every: int  # record at steps ≡ 0 (mod every), at ``last`` and at a non-finite step
    last: int  # the training's last step
    counters: np.ndarray  # int64: [clipped steps]
