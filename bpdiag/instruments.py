"""Instruments beyond the recorders: the loss's sharpness and the Jacobian's spectrum at init.

- **Sharpness** (``sharpness``, ``LossSurface``): the largest eigenvalue λ_max of the Hessian
  ∇²L of the batch-mean training loss on fixed rows, by power iteration on Hessian-vector
  products. Each product is a central difference of two gradients, taken by the training
  kernel's gradient pass (training mode: BatchNorm with the rows' own statistics) in float64
  whatever the net's dtype:

      H v ≈ (∇L(θ + εv) − ∇L(θ − εv)) / 2ε,   ‖v‖ = 1,  ε = ``HVP_STEP``,

  whose error is (ε²/6)·∂³L[v, v, ·] from the truncation plus about 1e-16·‖∇L‖/ε from rounding:
  ≈ 1e-10 relative for the nets here (tests/test_instruments.py compares λ_max with the exact
  Hessian's). Under full-batch gradient descent with step size η, λ_max rises until it reaches
  2/η and hovers there: the edge of stability (Cohen et al. 2021, arXiv:2103.00065).
- **Jacobian spectrum** (``jacobian_spectrum``): the singular values of J = ∂a_j/∂a_i for a few
  inputs, by pushing the identity through the layers in float64 (a_L is the output layer's z_L,
  before the loss's sigmoid or softmax). Its mean squared singular value, the *gain*
  tr(JᵀJ)/n_i, is χ^(L) of mean-field theory (``theory.jacobian_gain``); its spread tells
  dynamical isometry: a deep linear net with orthogonal weights has every singular value 1
  (Saxe et al. 2014); orthogonal tanh nets at the edge of chaos stay well conditioned as depth
  grows, Gaussian ones do not, nor ReLU nets (Pennington et al. 2017, arXiv:1711.04735).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from bpdiag._core.codes import BATCHNORM, NORM_LAYER_EPS, TASK_GRADS
from bpdiag._core.elementwise import dphi_array, phi_array
from bpdiag._core.structs import make_buffers
from bpdiag.diagnostics.theory import jacobian_gain
from bpdiag.model import MLP
from bpdiag.schema import SHARPNESS_COLUMNS

HVP_STEP = 1e-5  # ε of the central difference along a unit vector
SHARPNESS_TOL = 1e-4  # power iteration stops when λ changes by less than this, relatively
SHARPNESS_ITERS = 100  # … or after this many Hessian-vector products (per phase)
SHARPNESS_ROWS = 1024  # rows of the training set the sharpness is measured on (at most)


def _dot(a: np.ndarray, b: np.ndarray) -> float:
    """aᵀb without NumPy's BLAS: its threads, spinning after a call, would compete on the cores
    with those of the kernels' BLAS (another library) in the gradient passes in between."""
    return float(np.sum(a * b))


def _norm(a: np.ndarray) -> float:
    return math.sqrt(_dot(a, a))


def _float64_twin(net: MLP) -> MLP:
    """A float64 MLP with ``net``'s architecture, parameters and running statistics."""
    twin = MLP(net.sizes, activation=net.activation, loss=net.loss,
               output_activation=net.output_activation, init="zeros", dtype="float64",
               norm=net.norm, residual=net.residual, residual_scale=net.residual_scale)  # fmt: skip
    twin.theta = net.theta.astype(np.float64)
    twin.running = net.running.astype(np.float64)
    return twin


class LossSurface:
    """L(θ), the batch-mean loss on fixed rows (X, Y), as a function of the flat parameter
    vector θ (laid out as ``MLP.theta``), with its gradient and Hessian-vector products, in
    float64. The net itself is not changed."""

    def __init__(self, net: MLP, X: object, Y: object) -> None:
        X = net.check_X(X)
        Y = net.check_Y(Y, X.shape[0])
        self.twin = _float64_twin(net)
        self.X, self.Y = X.astype(np.float64), Y.astype(np.float64)
        self.buffers = make_buffers(net.layout, X.shape[0], Y.shape[1], np.dtype(np.float64))
        self.theta = self.twin.theta.copy()  # θ of ``net`` when the surface was made
        self.passes = 0  # gradient passes so far

    def gradient(self, theta: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """∇L(θ), (n_params,), into ``out`` if given."""
        self.twin.theta = theta
        self.twin._pass(self.X, self.Y, TASK_GRADS, self.buffers)
        self.passes += 1
        if out is None:
            return self.buffers.grads.copy()
        out[:] = self.buffers.grads
        return out

    def hvp(self, v: np.ndarray, theta: np.ndarray | None = None) -> np.ndarray:
        """H(θ) v by the central difference of the module docstring (v of any norm)."""
        theta = self.theta if theta is None else theta
        norm = _norm(v)
        if norm == 0:
            return np.zeros_like(v)
        step = HVP_STEP / norm
        shifted, down = np.empty_like(theta), np.empty_like(theta)
        up = self.gradient(np.add(theta, np.multiply(v, step, out=shifted), out=shifted))
        self.gradient(np.subtract(theta, np.multiply(v, step, out=shifted), out=shifted), down)
        up -= down
        up *= 1.0 / (2 * step)
        return up


def power_iteration(matvec: Callable[[np.ndarray], np.ndarray], v0: np.ndarray,
                    tol: float = SHARPNESS_TOL,
                    max_iter: int = SHARPNESS_ITERS) -> tuple[float, np.ndarray, int]:  # fmt: skip
    """The eigenvalue of largest magnitude of a symmetric operator and its unit eigenvector, by
    power iteration from v0: the Rayleigh quotient λ = vᵀAv until it changes by at most
    tol·|λ| between iterations. Returns (λ, v, products taken)."""
    v = v0 / _norm(v0)
    lam = math.nan
    for k in range(1, max_iter + 1):
        w = matvec(v)
        new = _dot(v, w)
        size = _norm(w)
        if size == 0 or not math.isfinite(size):
            return new, v, k
        if abs(new - lam) <= tol * abs(new):
            return new, w / size, k
        lam, v = new, w / size
    return lam, v, max_iter


@dataclass(frozen=True)
class Sharpness:
    """λ_max of the Hessian at one point, and how it was found."""

    value: float  # λ_max
    vector: np.ndarray  # its unit eigenvector (a warm start for the next measurement)
    products: int  # Hessian-vector products taken (two gradient passes each)


def top_eigenvalue(surface: LossSurface, v0: np.ndarray | None = None, tol: float = SHARPNESS_TOL,
                   max_iter: int = SHARPNESS_ITERS, seed: int = 0) -> Sharpness:  # fmt: skip
    """λ_max of ∇²L at ``surface.theta``: power iteration finds the eigenvalue of largest
    magnitude; where that is negative, a second run on H − λI (whose spectrum is ≥ 0) finds
    λ_max − λ. v0: a starting vector (default: a Gaussian one drawn from ``seed``)."""
    if v0 is None:
        v0 = np.random.default_rng(seed).normal(size=surface.theta.size)
    lam, v, n = power_iteration(surface.hvp, v0, tol, max_iter)
    if lam < 0:
        shift = lam
        mu, v, extra = power_iteration(lambda u: surface.hvp(u) - shift * u, v0, tol, max_iter)
        lam, n = mu + shift, n + extra
    return Sharpness(lam, v, n)


def sharpness(net: MLP, X: object, Y: object, tol: float = SHARPNESS_TOL,
              max_iter: int = SHARPNESS_ITERS, seed: int = 0) -> float:  # fmt: skip
    """λ_max of the Hessian of the batch-mean loss on (X, Y) at the net's parameters."""
    return top_eigenvalue(LossSurface(net, X, Y), None, tol, max_iter, seed).value


def sharpness_rows(m: int, seed: int, rows: int = SHARPNESS_ROWS) -> np.ndarray:
    """The training rows a run's sharpness is measured on: all m of them up to ``rows``, else
    ``rows`` of them drawn once from ``seed``."""
    if m <= rows:
        return np.arange(m)
    return np.sort(np.random.default_rng(seed).choice(m, rows, replace=False))


@dataclass
class SharpnessLog:
    """The sharpness measurements of one training (``train(sharpness_every=K)``): every
    ``period`` steps, on fixed training rows (``sharpness_rows``), each warm-started from the
    last eigenvector."""

    period: int  # steps between measurements (0: none)
    lr: float
    surface: LossSurface | None = None  # the loss on the measured rows
    vector: np.ndarray | None = None
    rows: list = field(default_factory=list)

    @classmethod
    def of(cls, net: MLP, X: np.ndarray, Y: np.ndarray, period: int, lr: float,
           seed: int) -> SharpnessLog:  # fmt: skip
        """X, Y as ``train`` checked them (ce: labels in one column)."""
        if not period:
            return cls(0, lr)
        idx = sharpness_rows(X.shape[0], seed)
        return cls(period, lr, LossSurface(net, X[idx], Y[idx] if net.loss != "ce" else Y[idx, 0]))

    @property
    def seconds(self) -> float:
        """Time the measurements took (``train`` leaves it out of ``train_seconds``)."""
        return float(sum(row[-1] for row in self.rows))

    def due(self, step: int) -> bool:
        return bool(self.period) and step % self.period == 0

    def steps_to_next(self, step: int) -> int:
        return self.period - step % self.period if self.period else 2**62

    def measure(self, net: MLP, step: int) -> None:
        """λ_max at the net's parameters after ``step`` updates (the record of that step)."""
        if not np.all(np.isfinite(net.theta)):
            return
        start = time.perf_counter()
        self.surface.theta = net.theta.astype(np.float64)
        self.surface.twin.running = net.running.astype(np.float64)
        found = top_eigenvalue(self.surface, self.vector, seed=step)
        self.vector = found.vector
        self.rows.append((step, found.value, 2.0 / self.lr, found.value * self.lr / 2.0,
                          found.products, time.perf_counter() - start))  # fmt: skip

    def table(self) -> pd.DataFrame:
        """History.sharpness (columns ``schema.SHARPNESS_COLUMNS``)."""
        return pd.DataFrame(self.rows, columns=list(SHARPNESS_COLUMNS)).astype(
            {"step": np.int64, "products": np.int64}
        )


# ---------------------------------------------------------------- the Jacobian at init


def jacobian_inputs_for(norm: str, inputs: int) -> int:
    """The ``jacobian_inputs`` a sweep's run and ``bpdiag train`` pass to ``train``: none for
    a BatchNorm net (``train`` refuses one), else ``inputs``."""
    return 0 if norm == "batchnorm" else inputs


@dataclass(frozen=True)
class JacobianSpectrum:
    """Singular values of J = ∂a_end/∂a_start at a few inputs (a_L: the logits z_L)."""

    start: int
    end: int
    singular_values: np.ndarray  # (inputs, min(n_start, n_end)), each row descending
    n_start: int
    gain_theory: float  # mean-field tr(JᵀJ)/n_start (``theory.jacobian_gain``)

    @property
    def gain(self) -> float:
        """Mean over the inputs of tr(JᵀJ)/n_start = Σσ²/n_start, the mean squared singular
        value over the n_start input directions (χ^(L) of the theory)."""
        return float(np.mean(np.sum(self.singular_values**2, axis=1)) / self.n_start)

    @property
    def spread(self) -> float:
        """Mean over the inputs of Var(σ²)/E[σ²]² over the min(n_start, n_end) singular values:
        0 for an isometry, growing with depth where the spectrum spreads out."""
        s2 = self.singular_values**2
        mean = s2.mean(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            return float(np.mean(s2.var(axis=1) / mean**2))

    @property
    def condition(self) -> float:
        """Median over the inputs of σ_max/σ_min (inf where σ_min = 0)."""
        s = self.singular_values
        with np.errstate(divide="ignore", invalid="ignore"):
            return float(np.median(s[:, 0] / s[:, -1]))


def _layer_tangents(net: MLP, x: np.ndarray, start: int, end: int) -> np.ndarray:
    """J = ∂a_end/∂a_start at the input x (n_0,) in float64: the forward pass of x with the
    identity pushed along (a_l = φ(u_l), u_l = z_l or γ ⊙ norm(z_l) + β, a skip adding a_{l−1})."""
    params = [tuple(np.asarray(p, np.float64) for p in group) for group in net.params]
    lay, L = net.layout, net.depth
    a = x.astype(np.float64)
    J = None
    for l in range(1, end + 1):
        if l == start + 1:
            J = np.eye(a.size)
        W, b = params[l - 1][0], params[l - 1][1]
        z = W @ a + b
        WJ = W @ J if J is not None else None
        if l == L:  # the output layer: z_L, the logits
            a, J = z, WJ
            break
        if len(params[l - 1]) == 4:  # LayerNorm: u = γ (z − μ)/σ + β over the row's units
            gamma, beta = params[l - 1][2], params[l - 1][3]
            mu, var = z.mean(), z.var()
            inv = 1.0 / math.sqrt(var + NORM_LAYER_EPS)
            zhat = (z - mu) * inv
            u = gamma * zhat + beta
            if WJ is not None:  # ∂ẑ/∂z = (I − 11ᵀ/n − ẑẑᵀ/n)/σ
                centred = WJ - WJ.mean(axis=0)
                WJ = (gamma * inv)[:, None] * (centred - np.outer(zhat, zhat @ centred) / z.size)
        else:
            u = z
        h = phi_array(lay.act, u)
        branch = dphi_array(lay.act, u)[:, None] * WJ if WJ is not None else None
        if lay.skip[l - 1]:
            a = a + lay.alpha * h
            J = J + lay.alpha * branch if J is not None else None
        else:
            a, J = h, branch
    return J


def jacobian_spectrum(net: MLP, X: object, inputs: int = 4,
                      layers: tuple[int, int] | str | None = None) -> JacobianSpectrum:  # fmt: skip
    """Singular values of J = ∂a_j/∂a_i at the first ``inputs`` rows of X, at the net's current
    parameters. ``layers``: (i, j) with 0 ≤ i < j ≤ L; None for the whole net, (0, L); "hidden"
    for the block between the first and the last hidden layer, (1, L − 1) (square when the
    hidden widths are equal, while a data set's input and output widths rarely are; the whole
    net below 3 layers). Not for BatchNorm nets, whose Jacobian per sample is not defined in
    training (the batch couples the samples)."""
    if net.layout.norm == BATCHNORM:
        raise ValueError("jacobian_spectrum: a BatchNorm net has no per-sample Jacobian in "
                         "training (the batch statistics couple the samples); use norm "
                         "'none' or 'layernorm'")  # fmt: skip
    L = net.depth
    if layers is None or (layers == "hidden" and L < 3):
        start, end = 0, L
    elif layers == "hidden":
        start, end = 1, L - 1
    elif isinstance(layers, tuple | list) and len(layers) == 2:
        start, end = (int(v) for v in layers)
    else:
        raise ValueError(f"layers must be None, 'hidden' or a pair (i, j), got {layers!r}")
    if not 0 <= start < end <= L:
        raise ValueError(f"layers must satisfy 0 ≤ i < j ≤ {L}, got {(start, end)}")
    if isinstance(inputs, bool) or not isinstance(inputs, int | np.integer) or inputs < 1:
        raise ValueError(f"inputs must be a positive integer, got {inputs!r}")
    X = net.check_X(X)[:inputs]
    values = np.array([np.linalg.svd(_layer_tangents(net, x, start, end), compute_uv=False)
                       for x in X])  # fmt: skip
    q0 = float(np.mean(X.astype(np.float64) ** 2))
    theory = jacobian_gain(net.sizes, net.activation, net.init, q0, net.norm, net.skips,
                           net.layout.alpha, start, end)  # fmt: skip
    return JacobianSpectrum(start, end, values, net.sizes[start], theory)
