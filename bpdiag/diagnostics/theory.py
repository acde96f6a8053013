"""Mean-field theory of signal and gradient propagation at initialization.

Poole et al. 2016 and Schoenholz et al. 2017 (arXiv:1611.01232), for a bias-free MLP with
z_l = W_l a_{l−1}, Var(W_l) = v_l, n_l units in layer l and inputs with E[x²] = q_0:

    q_1 = n_0 v_1 q_0,            q_{l+1} = n_l v_{l+1} E[φ(√q_l z)²],          z ~ N(0, 1)
    χ_l = n_l v_{l+1} E[φ'(√q_l z)²],   E‖δ_l‖² = χ_l E‖δ_{l+1}‖²   (l = 1..L−1)
    ‖∂L/∂W_l‖² ≈ ‖δ_l‖² · n_{l−1} E[a_{l−1}²]

so RMS‖δ_l‖ / RMS‖δ_L‖ = Π_{j=l}^{L−1} √χ_j. At the fixed point q* of a deep square net,
χ₁ = σ_w² E[φ'(√q* z)²]: χ₁ < 1 is the ordered phase (vanishing gradients), χ₁ > 1 the chaotic
phase (exploding), and gradients change by e over ξ = 1/|ln χ₁| layers.

Expectations are computed by Gauss–Legendre quadrature on intervals that split at 0 (where ReLU,
leaky ReLU and SELU have kinks) and grow geometrically, so both narrow features of φ (width ~1)
and wide Gaussians (q up to ~1e30) are resolved to near machine precision.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from bpdiag._core.elementwise import dphi_array, phi_array
from bpdiag.choices.activations import activation_code
from bpdiag.choices.inits import weight_variance

_NODES = 48


@lru_cache(maxsize=1)
def _legendre() -> tuple[np.ndarray, np.ndarray]:
    return np.polynomial.legendre.leggauss(_NODES)


def gaussian_expectation(f, q: float) -> float:
    """E[f(√q z)] for z ~ N(0, 1), where f maps a float64 array to an array."""
    if q <= 0:
        return float(f(np.zeros(1))[0])
    s = math.sqrt(q)
    top = 12.0 * s
    edges = [0.0, *[2.0**k for k in range(-8, 200) if 2.0**k < top], top]
    x, w = _legendre()
    lo, hi = np.array(edges[:-1]), np.array(edges[1:])
    half, mid = (hi - lo) / 2, (hi + lo) / 2
    u = (mid[:, None] + half[:, None] * x[None, :]).ravel()  # nodes on (0, top)
    weight = (
        (half[:, None] * w[None, :]).ravel()
        * np.exp(-0.5 * (u / s) ** 2)
        / (s * math.sqrt(2 * math.pi))
    )
    return float(np.sum(weight * (f(u) + f(-u))))


def second_moments(activation: str, q: float) -> tuple[float, float]:
    """(E[φ(√q z)²], E[φ'(√q z)²])."""
    code = activation_code(activation)
    return (
        gaussian_expectation(lambda u: phi_array(code, u) ** 2, q),
        gaussian_expectation(lambda u: dphi_array(code, u) ** 2, q),
    )


@dataclass(frozen=True)
class Prediction:
    """Mean-field predictions for one architecture at init (layers l = 1..L)."""

    q: np.ndarray  # (L,) E[z_l²], pre-activation second moments
    chi: np.ndarray  # (L − 1,) χ_l, the per-layer factor of E‖δ‖² from layer l+1 to l
    delta_ratio: np.ndarray  # (L,) RMS‖δ_l‖ / RMS‖δ_L‖
    grad_W_ratio: np.ndarray  # (L,) ‖∂L/∂W_l‖ / ‖∂L/∂W_L‖
    chi1: float  # χ at the fixed point q* of the last hidden layer's map
    decay_per_layer: float  # geometric mean of √χ_l: δ's factor per layer, output → input

    @property
    def depth_scale(self) -> float:
        """ξ = 1/|ln χ₁| layers (inf at criticality: |ln χ₁| below the quadrature's 1e-10)."""
        log = abs(math.log(self.chi1)) if self.chi1 > 0 else math.inf
        return math.inf if log < 1e-10 else 1.0 / log


def predict(sizes: list[int], activation: str, init: str, q0: float = 1.0) -> Prediction:
    """Mean-field profile of an MLP ``sizes`` with hidden ``activation`` and weights from ``init``."""
    L = len(sizes) - 1
    var = [weight_variance(init, sizes[l], sizes[l - 1]) for l in range(1, L + 1)]  # v_1..v_L
    q = np.empty(L)
    mean_a2 = np.empty(L)  # E[a_{l−1}²] for l = 1..L (a_0 = x)
    chi = np.empty(L - 1)
    q[0], mean_a2[0] = sizes[0] * var[0] * q0, q0
    for l in range(1, L):  # hidden layer l (1-based) feeds layer l + 1
        phi2, dphi2 = second_moments(activation, q[l - 1])
        sigma2 = sizes[l] * var[l]
        chi[l - 1] = sigma2 * dphi2
        q[l], mean_a2[l] = sigma2 * phi2, phi2
    tail = np.concatenate([np.cumprod(chi[::-1])[::-1], [1.0]])  # Π_{j=l}^{L−1} χ_j
    delta_ratio = np.sqrt(tail)
    grad_sq = tail * np.array(sizes[:-1]) * mean_a2
    grad_W_ratio = np.sqrt(grad_sq / grad_sq[-1]) if grad_sq[-1] > 0 else np.full(L, np.nan)
    decay = float(np.exp(0.5 * np.mean(np.log(chi)))) if L > 1 and np.all(chi > 0) else math.nan
    return Prediction(
        q, chi, delta_ratio, grad_W_ratio, _chi_fixed_point(sizes, activation, var, q), decay
    )


def _chi_fixed_point(sizes, activation, var, q) -> float:
    """χ₁ at the fixed point of q ↦ σ_w² E[φ(√q z)²] with the deepest hidden layer's σ_w².

    Iterates to the fixed point, or until q leaves the floats, or until χ(q) stops changing
    while q grows or shrinks geometrically (a positively homogeneous φ such as ReLU, whose χ
    does not depend on q: a few steps instead of hundreds)."""
    L = len(sizes) - 1
    if L < 2:
        return math.nan
    code = activation_code(activation)
    sigma2 = sizes[L - 1] * var[L - 1]
    qs, ratio, chi = float(q[L - 2]), math.nan, math.nan
    for _ in range(500):
        new = sigma2 * gaussian_expectation(lambda u: phi_array(code, u) ** 2, qs)
        if not math.isfinite(new) or new > 1e300 or abs(new - qs) <= 1e-12 * max(qs, 1e-300):
            qs = new if math.isfinite(new) else qs
            break
        step, qs = (new / qs if qs > 0 else math.nan), new
        if abs(step - ratio) <= 1e-10 * step:  # geometric: is χ steady too?
            chi, last = sigma2 * second_moments(activation, qs)[1], chi
            if abs(chi - last) <= 1e-13 * chi:
                return chi
        ratio = step
    return sigma2 * second_moments(activation, qs)[1]
