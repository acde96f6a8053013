"""``MLP``: parameters, input validation, ``forward`` and ``loss_and_grads`` over the kernels."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from bpdiag import blas
from bpdiag._core.backward import loss_and_grads
from bpdiag._core.codes import BCE, CE, LINEAR
from bpdiag._core.forward import forward
from bpdiag._core.structs import Net, make_buffers, make_net, n_params
from bpdiag.choices.activations import activation_code
from bpdiag.choices.defaults import DEFAULTS
from bpdiag.choices.inits import init_weights
from bpdiag.choices.losses import OUTPUT_ACTIVATION, loss_code

DTYPES = {"float32": np.float32, "float64": np.float64}

Params = list[tuple[np.ndarray, np.ndarray]]


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
        self.layout: Net = make_net(self.sizes, act, out_act, loss_c)
        self.theta = np.zeros(n_params(self.layout), dtype=self.dtype)
        weights = init_weights(self.sizes, init, int(seed))
        self.set_params([(W, np.zeros(W.shape[0])) for W in weights])

    @property
    def depth(self) -> int:
        """Number of weight layers L."""
        return len(self.sizes) - 1

    @property
    def params(self) -> Params:
        """Copies of [(W_1, b_1), ..., (W_L, b_L)], W_l shaped (n_l, n_{l−1})."""
        return self._unflatten(self.theta)

    def set_params(self, params: Params) -> None:
        """Replace all weights and biases (same structure as ``params``; finite)."""
        if len(params) != self.depth:
            raise ValueError(f"params must have {self.depth} (W, b) pairs, got {len(params)}")
        theta = np.empty_like(self.theta)
        for k, pair in enumerate(params):
            if len(pair) != 2:
                raise ValueError(f"params[{k}] must be a pair (W, b)")
            n_in, n_out = self.sizes[k], self.sizes[k + 1]
            W = as_real_array(f"params[{k}][0] (W)", pair[0], self.dtype, (2,))
            b = as_real_array(f"params[{k}][1] (b)", pair[1], self.dtype, (1,))
            if W.shape != (n_out, n_in) or b.shape != (n_out,):
                raise ValueError(
                    f"params[{k}] must be W {(n_out, n_in)} and b {(n_out,)}, "
                    f"got W {W.shape} and b {b.shape}"
                )
            w0, b0 = self.layout.w_off[k], self.layout.b_off[k]
            theta[w0 : w0 + W.size] = W.ravel()
            theta[b0 : b0 + n_out] = b
        self.theta = theta

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
        """Copies of (W_l, b_l) from a flat vector laid out like theta."""
        lay, out = self.layout, []
        for k in range(self.depth):
            n_in, n_out = self.sizes[k], self.sizes[k + 1]
            W = flat[lay.w_off[k] : lay.w_off[k] + n_out * n_in].reshape(n_out, n_in)
            out.append((W.copy(), flat[lay.b_off[k] : lay.b_off[k] + n_out].copy()))
        return out

    def _run(self, X: np.ndarray, Y: np.ndarray | None):
        """The kernels over the whole of X: (loss, accuracy, buffers); NaN loss without Y."""
        blas.bind()
        m = X.shape[0]
        buf = make_buffers(self.layout, m, 1 if Y is None else Y.shape[1], self.dtype)
        buf.acts[: X.size] = X.ravel()
        if Y is None:
            forward(self.theta, self.layout, buf, m)
            return np.nan, np.nan, buf
        buf.Y[:] = Y
        loss, acc = loss_and_grads(self.theta, self.layout, buf, m)
        return loss, acc, buf

    def forward(self, X: object) -> np.ndarray:
        """Predictions (m, n_out) after the output activation (sigmoid / softmax / linear ...)."""
        X = self.check_X(X)
        _, _, buf = self._run(X, None)
        m, k = X.shape[0], self.sizes[-1]
        off = buf.a_off[-2]
        out = buf.acts[off : off + m * k].reshape(m, k).copy()
        if self.layout.loss == BCE:
            return 0.5 + 0.5 * np.tanh(0.5 * out)
        if self.layout.loss == CE:
            e = np.exp(out - out.max(axis=1, keepdims=True))
            return e / e.sum(axis=1, keepdims=True)
        return out

    def loss_and_grads(self, X: object, Y: object) -> tuple[float, Params]:
        """Batch-mean loss and [(∂L/∂W_l, ∂L/∂b_l)] on (X, Y)."""
        X = self.check_X(X)
        Y = self.check_Y(Y, X.shape[0])
        loss, _, buf = self._run(X, Y)
        return float(loss), self._unflatten(buf.grads)

    def evaluate(self, X: object, Y: object) -> tuple[float, float]:
        """(batch-mean loss, accuracy) on (X, Y); accuracy is NaN for mse."""
        X = self.check_X(X)
        loss, acc, _ = self._run(X, self.check_Y(Y, X.shape[0]))
        return float(loss), float(acc)

    def __repr__(self) -> str:
        return (
            f"MLP(sizes={self.sizes}, activation={self.activation!r}, loss={self.loss!r}, "
            f"init={self.init!r}, seed={self.seed}, dtype={self.dtype.name!r})"
        )
