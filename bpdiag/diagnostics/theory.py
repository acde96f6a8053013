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
        """ξ = 1/|ln χ₁| layers (inf at criticality: |ln χ₁| below the quadrature's 1e-10; NaN
        where the theory has no χ₁, as for BatchNorm with a skip)."""
        if not math.isfinite(self.chi1):
            return math.nan
        log = abs(math.log(self.chi1)) if self.chi1 > 0 else math.inf
        return math.inf if log < 1e-10 else 1.0 / log


def predict(sizes: list[int], activation: str, init: str, q0: float = 1.0, norm: str = "none",
            skips: list[bool] | None = None, alpha: float = 1.0,
            batch: int | None = None) -> Prediction:  # fmt: skip
    """Mean-field profile of an MLP ``sizes`` with hidden ``activation`` and weights from ``init``;
    with ``norm`` ("batchnorm", "layernorm") and skip connections (``skips``: per layer, branch
    scale ``alpha``) see ``predict_cured`` (``batch``: the training batch, for BatchNorm)."""
    if norm != "none" or (skips is not None and any(skips)):
        return predict_cured(sizes, activation, init, q0, norm, skips or [False] * (len(sizes) - 1),
                             alpha, batch)  # fmt: skip
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


# ---------------------------------------------------------------- normalization and skips


def batchnorm_gradient_rate(activation: str, batch: float) -> float:
    """λ_G: the factor by which E‖δ_l‖² (and E‖∂L/∂W_l‖²) grows per layer toward the input in a
    deep BatchNorm net without skips at init (Yang, Pennington, Rao, Sohl-Dickstein &
    Schoenholz 2019, arXiv:1902.08129, Thm 3.10; the finite-batch ReLU form is the submission's
    eq. 25), for batch size B ≥ 4, whatever σ_w:

    - relu: [J′(c) + (B−1) J(1)] / [(B−3)(J(1) − J(c))] − 1/(B−3), c = −1/(B−1), with the
      arccosine kernel J(c) = (√(1−c²) + (π − arccos c) c)/π; π/(π−1) ≈ 1.467 as B → ∞;
    - linear: (B−2)/(B−3), → 1.

    NaN for other activations (the paper gives no closed form) and B < 4.
    """
    B = float(batch)
    if not B >= 4:
        return math.nan
    if activation == "linear":
        return 1.0 if math.isinf(B) else (B - 2) / (B - 3)
    if activation != "relu":
        return math.nan
    if math.isinf(B):
        return math.pi / (math.pi - 1)
    c = -1.0 / (B - 1)

    def J(x: float) -> float:
        return (math.sqrt(1 - x * x) + (math.pi - math.acos(x)) * x) / math.pi

    dJ = (math.pi - math.acos(c)) / math.pi
    return (dJ + (B - 1) * J(1.0)) / ((B - 3) * (J(1.0) - J(c))) - 1 / (B - 3)


def predict_cured(sizes: list[int], activation: str, init: str, q0: float, norm: str,
                  skips: list[bool], alpha: float, batch: int | None) -> Prediction:  # fmt: skip
    """Mean-field profile of a net with normalized hidden layers and skip connections, at init
    (γ = 1, β = 0, zero biases, inputs of mean 0 and second moment q0).

    Forward, with p_l = E[a_l²] and m_l = E[a_l] per unit: q_l = n_{l−1} v_l p_{l−1} = E[z_l²];
    u_l = z_l, or z_l/√q_l for a normalized layer (unit variance); h = φ(u); then
    p_l = p_{l−1} + 2α m_{l−1} E[h] + α² E[h²] and m_l = m_{l−1} + α E[h] across a skip (its
    branch independent of a_{l−1} at large width), p_l = E[h²], m_l = E[h] otherwise.
    Backward: E‖∂L/∂a_{l−1}‖² = n_{l−1} v_l E‖δ_l‖² (+ E‖∂L/∂a_l‖² across a skip) and
    E‖δ_l‖² = c² E[φ'(u)²] E‖∂L/∂a_l‖² · (1/q_l for a normalized layer, and LayerNorm's
    projection 1 − 2/n_l), c = α across a skip. That is all for skips and LayerNorm; without
    skips, BatchNorm couples the samples of a batch, and each layer below the top multiplies
    E‖δ‖² by ``batchnorm_gradient_rate`` instead (NaN where the paper gives none, and for
    BatchNorm with skips). χ₁ is the geometric mean per-layer factor of E‖δ‖² between the
    first and the top layer.
    """
    L = len(sizes) - 1
    var = [weight_variance(init, sizes[l], sizes[l - 1]) for l in range(1, L + 1)]
    normed = norm != "none"
    q, mean_a2 = np.empty(L), np.empty(L)
    e = np.empty(L)  # E‖δ_l‖² / E‖∂L/∂a_l‖² of hidden layer l
    p, m = q0, 0.0
    code = activation_code(activation)
    for l in range(1, L):
        q[l - 1], mean_a2[l - 1] = sizes[l - 1] * var[l - 1] * p, p
        s = 1.0 if normed else q[l - 1]
        h1 = gaussian_expectation(lambda u: phi_array(code, u), s)
        h2, d2 = second_moments(activation, s)
        c = alpha if skips[l - 1] else 1.0
        e[l - 1] = c * c * d2
        if normed:
            e[l - 1] /= q[l - 1]
            if norm == "layernorm":
                e[l - 1] *= 1 - 2 / sizes[l]
        if skips[l - 1]:
            p, m = p + 2 * alpha * m * h1 + alpha**2 * h2, m + alpha * h1
        else:
            p, m = h2, h1
    q[L - 1], mean_a2[L - 1] = sizes[L - 1] * var[L - 1] * p, p
    rate = batchnorm_gradient_rate(activation, batch if batch is not None else math.inf)
    D = np.empty(L)  # E‖δ_l‖², relative to E‖δ_L‖²
    D[L - 1] = 1.0
    Ga = sizes[L - 1] * var[L - 1]  # E‖∂L/∂a_{L−1}‖²
    for l in range(L - 1, 0, -1):
        D[l - 1] = e[l - 1] * Ga
        if norm == "batchnorm":
            D[l - 1] = D[l] * rate if l < L - 1 else D[l - 1]
        Ga = sizes[l - 1] * var[l - 1] * D[l - 1] + (Ga if skips[l - 1] else 0.0)
    if norm == "batchnorm" and any(skips):
        D[:] = math.nan  # no prediction: the batch coupling across a skip is not in the theory
    chi = D[:-1] / D[1:]
    delta_ratio = np.sqrt(D)
    grad_sq = D * np.array(sizes[:-1]) * mean_a2
    grad_W_ratio = np.sqrt(grad_sq / grad_sq[-1])
    inner = chi[1:-1] if chi.size > 2 else chi  # the first and top layers are edges
    chi1 = float(np.exp(np.mean(np.log(inner)))) if inner.size else math.nan
    decay = float(np.exp(0.5 * np.mean(np.log(chi)))) if chi.size else math.nan
    return Prediction(q, chi, delta_ratio, grad_W_ratio, chi1, decay)


# ---------------------------------------------------------------- the input–output Jacobian


def jacobian_gain(sizes: list[int], activation: str, init: str, q0: float = 1.0,
                  norm: str = "none", skips: list[bool] | None = None, alpha: float = 1.0,
                  start: int = 0, end: int | None = None) -> float:  # fmt: skip
    """Mean-field E‖J u‖² for a unit vector u, J = ∂a_end/∂a_start at init (a_L: the output
    layer's z_L), i.e. the mean squared singular value tr(JᵀJ)/n_start, χ^(L) in the papers.

    A tangent t through layer l: E‖W_l t‖² = n_l v_l ‖t‖², then φ' multiplies by
    E[φ'(u_l)²] (u_l = z_l, or of unit variance after a normalization, whose projection also
    takes 1/q_l and LayerNorm's 1 − 2/n_l); a skip adds the branch: E‖t_l‖² = (1 + α² f_l)
    E‖t_{l−1}‖², else f_l E‖t_{l−1}‖², with f_l the branch's factor. For a square net,
    Π_l σ_w² E[φ'²] = Π χ_l. NaN for BatchNorm (the batch couples the samples)."""
    L = len(sizes) - 1
    end = L if end is None else end
    if not 0 <= start < end <= L:
        raise ValueError(f"the Jacobian's layers must satisfy 0 ≤ start < end ≤ {L}, got "
                         f"start={start}, end={end}")  # fmt: skip
    if norm == "batchnorm":
        return math.nan
    skips = skips or [False] * L
    q = predict(sizes, activation, init, q0, norm, skips, alpha).q  # E[z_l²], l = 1..L
    gain = 1.0
    for l in range(start + 1, end + 1):
        f = sizes[l] * weight_variance(init, sizes[l], sizes[l - 1])
        if l < L:
            f *= second_moments(activation, 1.0 if norm != "none" else q[l - 1])[1]
            if norm != "none":
                f *= (1 - 2 / sizes[l]) / q[l - 1]
        gain *= (1 + alpha**2 * f) if skips[l - 1] else f
    return gain
