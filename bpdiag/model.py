"""``MLP``: parameters, input validation, ``forward`` and ``loss_and_grads`` over the kernels."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from bpdiag import compiled
from bpdiag._core.codes import BATCHNORM, BCE, CE, LINEAR, NO_CLIP, SGD, TASK_EVAL, TASK_GRADS
from bpdiag._core.loop import train_steps
from bpdiag._core.slots import LAYER_SLOTS, S_ACC, S_LOSS, STEP_SLOTS
from bpdiag._core.structs import (
    Buffers,
    Feed,
    Hyper,
    Net,
    Records,
    Setup,
    make_buffers,
    make_net,
    n_params,
    n_running,
)
from bpdiag.choices.activations import activation_code
from bpdiag.choices.defaults import DEFAULTS
from bpdiag.choices.inits import init_weights
from bpdiag.choices.losses import OUTPUT_ACTIVATION, loss_code
from bpdiag.choices.norms import norm_code
from bpdiag.choices.norms import residual_scale as residual_scale_of

DTYPES = {"float32": np.float32, "float64": np.float64}

Params = list[tuple[np.ndarray, ...]]  # per layer (W, b), or (W, b, γ, β) where normalized


def resolve_dtype(dtype: object) -> np.dtype:
    """``"float32"``/``"float64"`` (or the NumPy types) → ``np.dtype``."""
    name = np.dtype(dtype).name if isinstance(dtype, type | np.dtype) else dtype
    if name not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    return np.dtype(DTYPES[name])


def _check_sizes(sizes: object) -> list[int]:
    if not isinstance(sizes, Sequence | np.ndarray) or isinstance(sizes, str):
        raise TypeError(
            f"sizes must be a list of layer widths [n_in, h1, ..., n_out], got {sizes!r}"
        )
    sizes = list(sizes)
    if len(sizes) < 2:
        raise ValueError(f"sizes needs at least [n_in, n_out], got {sizes!r}")
    for i, n in enumerate(sizes):
        if isinstance(n, bool) or not isinstance(n, int | np.integer) or n < 1:
            raise ValueError(f"sizes[{i}] must be a positive integer, got {n!r}")
    return [int(n) for n in sizes]


def as_real_array(name: str, value: object, dtype: np.dtype, ndim: tuple[int, ...]) -> np.ndarray:
    """``value`` as a C-contiguous ``dtype`` array with one of the allowed ``ndim``; finite."""
    arr = np.asarray(value)
    if arr.dtype.kind not in "fiu":
        raise TypeError(f"{name} must hold real numbers, got dtype {arr.dtype}")
    if arr.ndim not in ndim:
        raise ValueError(
            f"{name} must have {' or '.join(map(str, ndim))} dimensions, got shape {arr.shape}"
        )
    if arr.shape[0] == 0:
        raise ValueError(f"{name} is empty (shape {arr.shape})")
    arr = np.ascontiguousarray(arr, dtype=dtype)
    if not np.all(np.isfinite(arr)):
        bad = np.argwhere(~np.isfinite(arr))[0]
        raise ValueError(
            f"{name} contains NaN or Inf (first at index {tuple(int(i) for i in bad)})"
        )
    return arr


class MLP:
    """A fully connected net z_l = a_{l−1} W_lᵀ + b_l, a_l = φ(z_l), trained by ``bpdiag.train``.

    ``sizes = [n_in, h_1, ..., n_out]``; ``activation`` acts on hidden layers, the output activation
    follows from ``loss`` (bce: sigmoid, ce: softmax, mse: ``output_activation`` or linear).

    ``norm`` ("batchnorm", "layernorm") normalizes each hidden layer's pre-activation before φ,
    with a learnable scale γ (init 1) and shift β (init 0): a_l = φ(γ ⊙ norm(z_l) + β). With
    ``residual``, every hidden layer l ≥ 2 whose input and output widths match adds its input:
    a_l = a_{l−1} + α·φ(γ ⊙ norm(z_l) + β), α = ``residual_scale`` (or "inv_sqrt_depth",
    1/√L); the first and the output layer stay plain (``bpdiag.choices.norms``).
    """

    def __init__(
        self,
        sizes: Sequence[int],
        activation: str = DEFAULTS.activation,
        loss: str = DEFAULTS.loss,
        output_activation: str | None = None,
        init: str = DEFAULTS.init,
        seed: int = DEFAULTS.seed,
        dtype: str = DEFAULTS.dtype,
        norm: str = DEFAULTS.norm,
        residual: bool = DEFAULTS.residual,
        residual_scale: float | str = DEFAULTS.residual_scale,
    ) -> None:
        self.sizes = _check_sizes(sizes)
        self.activation, self.loss, self.init, self.seed = activation, loss, init, seed
        self.dtype = resolve_dtype(dtype)
        act, loss_c = activation_code(activation), loss_code(loss)
        default_out = OUTPUT_ACTIVATION[loss]
        if output_activation is None or output_activation == default_out:
            self.output_activation = default_out
            # bce and ce take the logits: their sigmoid/softmax lives in the loss
            out_act = LINEAR if loss_c in (BCE, CE) else activation_code(default_out)
        elif loss_c in (BCE, CE):
            raise ValueError(
                f"output_activation {output_activation!r} does not go with loss {loss!r}, "
                f"whose output activation is {default_out!r} (leave it None)"
            )
        else:
            out_act = activation_code(output_activation, "output_activation")
            self.output_activation = output_activation
        if loss_c == CE and self.sizes[-1] < 2:
            raise ValueError(
                f"loss 'ce' needs at least 2 outputs, got sizes[-1] = {self.sizes[-1]}"
            )
        if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
        if not isinstance(residual, bool | np.bool_):
            raise TypeError(f"residual must be True or False, got {residual!r}")
        self.norm, self.residual, self.residual_scale = norm, bool(residual), residual_scale
        alpha = residual_scale_of(residual_scale, self.depth)
        self.layout: Net = make_net(self.sizes, act, out_act, loss_c, norm_code(norm),
                                    self.residual, alpha)  # fmt: skip
        self.theta = np.zeros(n_params(self.layout), dtype=self.dtype)
        self.running = np.zeros((2, n_running(self.layout)), dtype=self.dtype)
        self.running[1] = 1.0  # BatchNorm's running variance starts at 1, its mean at 0
        weights = init_weights(self.sizes, init, int(seed))
        self.set_params([(W, np.zeros(W.shape[0]), np.ones(W.shape[0]), np.zeros(W.shape[0]))
                         if self._normed(k) else (W, np.zeros(W.shape[0]))
                         for k, W in enumerate(weights)])  # fmt: skip

    @property
    def depth(self) -> int:
        """Number of weight layers L."""
        return len(self.sizes) - 1

    def _normed(self, k: int) -> bool:
        return bool(self.layout.g_off[k] >= 0)

    @property
    def skips(self) -> list[bool]:
        """Which layers l = 1..L have a skip connection."""
        return [bool(s) for s in self.layout.skip]

    @property
    def params(self) -> Params:
        """Copies of the parameters, one tuple per layer: (W_l, b_l) with W_l shaped
        (n_l, n_{l−1}), and (W_l, b_l, γ_l, β_l) for a normalized hidden layer."""
        return self._unflatten(self.theta)

    def set_params(self, params: Params) -> None:
        """Replace all parameters (same structure as ``params``; finite)."""
        if len(params) != self.depth:
            what = (
                "tuples (W, b[, gamma, beta])" if (self.layout.g_off >= 0).any() else "(W, b) pairs"
            )
            raise ValueError(f"params must have {self.depth} {what}, got {len(params)}")
        theta = np.empty_like(self.theta)
        names = ("W", "b", "gamma", "beta")
        for k, group in enumerate(params):
            n_in, n_out = self.sizes[k], self.sizes[k + 1]
            want = 4 if self._normed(k) else 2
            if len(group) != want:
                shape = "(W, b, gamma, beta)" if want == 4 else "a pair (W, b)"
                raise ValueError(f"params[{k}] must be {shape}, got {len(group)} arrays")
            arrays = [as_real_array(f"params[{k}][{i}] ({names[i]})", a, self.dtype,
                                    (2,) if i == 0 else (1,)) for i, a in enumerate(group)]  # fmt: skip
            W, rest = arrays[0], arrays[1:]
            if W.shape != (n_out, n_in) or any(v.shape != (n_out,) for v in rest):
                vectors = "b" if want == 2 else "b, gamma and beta"
                got = " and ".join(f"{names[i]} {a.shape}" for i, a in enumerate(arrays))
                raise ValueError(
                    f"params[{k}] must be W {(n_out, n_in)} and {vectors} {(n_out,)}, got {got}"
                )
            w0 = self.layout.w_off[k]
            theta[w0 : w0 + W.size] = W.ravel()
            for i, v in enumerate(rest):  # b, γ and β follow W, side by side
                lo = self.layout.b_off[k] + i * n_out
                theta[lo : lo + n_out] = v
        self.theta = theta

    @property
    def running_stats(self) -> list[tuple[np.ndarray, np.ndarray]]:
        """Copies of BatchNorm's (running mean, running variance) of each hidden layer ([]
        without BatchNorm): what evaluation (``forward``, ``evaluate``) normalizes with."""
        out = []
        for k in range(self.depth):
            r, n = self.layout.r_off[k], self.sizes[k + 1]
            if r >= 0:
                out.append((self.running[0, r : r + n].copy(), self.running[1, r : r + n].copy()))
        return out

    # ------------------------------------------------------------ data checks

    def check_X(self, X: object, name: str = "X") -> np.ndarray:
        """X as an (m, n_in) array of the net's dtype."""
        X = as_real_array(name, X, self.dtype, (2,))
        if X.shape[1] != self.sizes[0]:
            raise ValueError(f"{name} must have shape (m, {self.sizes[0]}), got {X.shape}")
        return X

    def check_Y(self, Y: object, m: int, name: str = "Y") -> np.ndarray:
        """Targets as the (m, k) array the kernels read (ce: labels as floats in one column)."""
        k = self.sizes[-1]
        if self.layout.loss == CE:
            labels = as_real_array(name, Y, np.float64, (1, 2))
            if labels.shape != (m,):
                raise ValueError(
                    f"{name} for loss 'ce' must be integer labels of shape ({m},), got {labels.shape}"
                )
            if np.any(labels != np.round(labels)) or labels.min() < 0 or labels.max() >= k:
                raise ValueError(
                    f"{name} labels must be integers in [0, {k}), got range [{labels.min()}, {labels.max()}]"
                )
            return labels.astype(self.dtype).reshape(m, 1)
        Y = as_real_array(name, Y, self.dtype, (1, 2))
        if Y.ndim == 1 and k == 1:
            Y = Y.reshape(-1, 1)
        if Y.shape != (m, k):
            raise ValueError(f"{name} must have shape ({m}, {k}), got {Y.shape}")
        if self.layout.loss == BCE and (Y.min() < 0 or Y.max() > 1):
            raise ValueError(
                f"{name} targets for loss 'bce' must be in [0, 1], got range [{Y.min()}, {Y.max()}]"
            )
        return Y

    # ------------------------------------------------------------ computation

    def _unflatten(self, flat: np.ndarray) -> Params:
        """Copies of each layer's (W_l, b_l[, γ_l, β_l]) from a flat vector laid out like theta."""
        lay, out = self.layout, []
        for k in range(self.depth):
            n_in, n_out = self.sizes[k], self.sizes[k + 1]
            W = flat[lay.w_off[k] : lay.w_off[k] + n_out * n_in].reshape(n_out, n_in).copy()
            vectors = [flat[lay.b_off[k] + i * n_out :][:n_out].copy()
                       for i in range(3 if self._normed(k) else 1)]  # fmt: skip
            out.append((W, *vectors))
        return out

    def _pass(self, X: np.ndarray, Y: np.ndarray, task: int,
              buf: Buffers | None = None) -> tuple[float, float, Buffers]:  # fmt: skip
        """One pass of the training kernel over the whole of (X, Y) (``_core.loop``):
        ``TASK_GRADS``, forward and backward in training mode (BatchNorm with the batch's
        statistics, which the running ones do not take up), or ``TASK_EVAL``, the forward pass
        in evaluation mode. ``buf``: buffers for len(X) rows to reuse (default: new ones).
        Returns (loss, accuracy, the buffers)."""
        compiled.ready()
        m, L = X.shape[0], self.depth
        if task == TASK_GRADS and self.layout.norm == BATCHNORM and m < 2:
            raise ValueError(
                "batchnorm needs at least 2 rows to compute gradients (batch statistics, as "
                f"torch.nn.BatchNorm1d in training), got X of shape {X.shape}"
            )
        if buf is None:
            buf = make_buffers(self.layout, m, Y.shape[1], self.dtype)
        setup = Setup(SGD, Hyper(lr=0.0), NO_CLIP, 0.0, False, 1, np.zeros((3, 0), np.int64), task)
        rec = Records(np.full((1, len(STEP_SLOTS)), np.nan),
                      np.full((1, L, len(LAYER_SLOTS)), np.nan), 1, 0, np.zeros(1, np.int64))  # fmt: skip
        feed = Feed(X, Y, np.arange(m, dtype=np.int64), np.array([0, m], np.int64))
        state = np.zeros((3, 0), self.dtype)  # no optimizer step
        train_steps(self.theta, self.running, state, self.layout, buf, setup, feed, rec, 0, 0)
        return float(rec.steps[0, S_LOSS]), float(rec.steps[0, S_ACC]), buf

    def forward(self, X: object) -> np.ndarray:
        """Predictions (m, n_out) after the output activation (sigmoid / softmax / linear ...),
        in evaluation mode (BatchNorm with its running statistics)."""
        X = self.check_X(X)
        m, k = X.shape[0], self.sizes[-1]
        no_targets = np.zeros((m, 1 if self.layout.loss == CE else k), self.dtype)
        _, _, buf = self._pass(X, no_targets, TASK_EVAL)
        off = buf.a_off[-2]
        out = buf.acts[off : off + m * k].reshape(m, k).copy()
        if self.layout.loss == BCE:
            return 0.5 + 0.5 * np.tanh(0.5 * out)
        if self.layout.loss == CE:
            e = np.exp(out - out.max(axis=1, keepdims=True))
            return e / e.sum(axis=1, keepdims=True)
        return out

    def loss_and_grads(self, X: object, Y: object) -> tuple[float, Params]:
        """Batch-mean loss and the gradients, like ``params`` ([(∂L/∂W_l, ∂L/∂b_l[, ∂L/∂γ_l,
        ∂L/∂β_l]), ...]), on (X, Y) in training mode (BatchNorm with the batch's statistics;
        the running ones are not touched)."""
        X = self.check_X(X)
        Y = self.check_Y(Y, X.shape[0])
        loss, _, buf = self._pass(X, Y, TASK_GRADS)
        return float(loss), self._unflatten(buf.grads)

    def evaluate(self, X: object, Y: object) -> tuple[float, float]:
        """(batch-mean loss, accuracy) on (X, Y) in evaluation mode (BatchNorm with its running
        statistics); accuracy is NaN for mse."""
        X = self.check_X(X)
        loss, acc, _ = self._pass(X, self.check_Y(Y, X.shape[0]), TASK_EVAL)
        return float(loss), float(acc)

    def __repr__(self) -> str:
        extra = f", norm={self.norm!r}" if self.norm != "none" else ""
        if self.residual:
            extra += f", residual=True, residual_scale={self.residual_scale!r}"
        return (
            f"MLP(sizes={self.sizes}, activation={self.activation!r}, loss={self.loss!r}, "
            f"init={self.init!r}, seed={self.seed}, dtype={self.dtype.name!r}{extra})"
        )
