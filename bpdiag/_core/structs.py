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

from bpdiag._core.slots import N_STATS


class Net(NamedTuple):
    """A net as the kernels see it: where each layer lives in theta, and what it computes."""

    sizes: np.ndarray  # (L + 1,) int64: [n_0 = n_in, n_1, ..., n_L = n_out]
    w_off: np.ndarray  # (L,) int64: W_l is theta[w_off[k] : w_off[k] + n_l n_{l−1}]
    b_off: np.ndarray  # (L,) int64: b_l is theta[b_off[k] : b_off[k] + n_l]
    act: int  # code of the hidden activation (``codes``)
    out_act: int  # code of the output activation (linear for bce and ce)
    loss: int  # code of the loss


def make_net(sizes: list[int], act: int, out_act: int, loss: int) -> Net:
    sizes = np.asarray(sizes, dtype=np.int64)
    fan = sizes[:-1] * sizes[1:]
    w_off = np.concatenate([[0], np.cumsum(fan + sizes[1:])[:-1]]).astype(np.int64)
    return Net(sizes, w_off, w_off + fan, int(act), int(out_act), int(loss))


def n_params(net: Net) -> int:
    return int(np.sum(net.sizes[:-1] * net.sizes[1:] + net.sizes[1:]))


class Buffers(NamedTuple):
    """The scratch of one batch of up to ``cap`` rows (nothing is read before it is written)."""

    a_off: np.ndarray  # (L + 1,) int64: offsets of the (cap, n_j) blocks j = 0..L
    acts: np.ndarray  # a_0 (the input batch), a_1, ..., a_L
    zs: np.ndarray  # z_l, where φ' or the statistics need it (``elementwise.needs_z``)
    deltas: np.ndarray  # ∂L/∂a_L, then δ_l
    Y: np.ndarray  # (cap, k): the batch's targets (ce: integer labels as floats, k = 1)
    grads: np.ndarray  # (n_params,) ∂L/∂θ, laid out like theta
    stats: np.ndarray  # (L, N_STATS) float64: the step's per-layer sums (``slots.STATS``)


def make_buffers(net: Net, cap: int, n_targets: int, dtype: np.dtype) -> Buffers:
    a_off = cap * np.concatenate([[0], np.cumsum(net.sizes)]).astype(np.int64)
    n = int(a_off[-1])
    L = net.sizes.size - 1
    return Buffers(a_off, np.zeros(n, dtype), np.zeros(n, dtype), np.zeros(n, dtype),
                   np.zeros((cap, n_targets), dtype), np.zeros(n_params(net), dtype),
                   np.zeros((L, N_STATS)))  # fmt: skip


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
