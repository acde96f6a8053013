"""Weight initializers by name (as ``torch.nn.init`` and the papers define them). Biases start at 0.

W has shape (n_out, n_in); fan_in = n_in, fan_out = n_out.

| name                         | distribution of W                              | σ_w² (square) |
|------------------------------|------------------------------------------------|---------------|
| zeros                        | 0                                              | 0             |
| normal_<s>                   | N(0, s²)                                       | n s²          |
| uniform_<a>                  | U[−a, a]                                       | n a²/3        |
| xavier_normal / _uniform     | Var = 2/(fan_in + fan_out); bound √(6/(fi+fo)) | 1             |
| he_normal / he_uniform       | Var = 2/fan_in; bound √(6/fan_in) (gain √2)    | 2             |
| lecun_normal / lecun_uniform | Var = 1/fan_in; bound √(3/fan_in)              | 1             |
| orthogonal                   | QR of a Gaussian matrix, sign-corrected; gain 1| 1             |
| orthogonal_<g>               | the same times the gain g (√2 for ReLU)        | g²            |

Draws use NumPy's PCG64 generator seeded once per network, layer by layer, in float64, so the
same seed gives the same weights on every machine and in every dtype (up to rounding).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

Init = Callable[[np.random.Generator, int, int], np.ndarray]


def _normal(std: float) -> Init:
    return lambda rng, n_out, n_in: rng.normal(0.0, std, size=(n_out, n_in))


def _uniform(bound: float) -> Init:
    return lambda rng, n_out, n_in: rng.uniform(-bound, bound, size=(n_out, n_in))


def _scaled(kind: str, variance: Callable[[int, int], float]) -> Init:
    """Normal with the given variance, or uniform on [−√(3 var), √(3 var)] (same variance)."""

    def draw(rng: np.random.Generator, n_out: int, n_in: int) -> np.ndarray:
        std = math.sqrt(variance(n_out, n_in))
        if kind == "normal":
            return rng.normal(0.0, std, size=(n_out, n_in))
        return rng.uniform(-math.sqrt(3.0) * std, math.sqrt(3.0) * std, size=(n_out, n_in))

    return draw


def _orthogonal(rng: np.random.Generator, n_out: int, n_in: int) -> np.ndarray:
    """``torch.nn.init.orthogonal_``: Q of a QR of a Gaussian matrix, columns signed by diag(R)."""
    flat = rng.normal(0.0, 1.0, size=(n_out, n_in))
    if n_out < n_in:
        flat = flat.T
    q, r = np.linalg.qr(flat)
    q *= np.sign(np.diag(r))
    return q.T.copy() if n_out < n_in else q


def _xavier(o: int, i: int) -> float:
    return 2.0 / (i + o)


def _he(o: int, i: int) -> float:
    return 2.0 / i


def _lecun(o: int, i: int) -> float:
    return 1.0 / i


def _orthogonal_gain(gain: float) -> Init:
    return lambda rng, n_out, n_in: gain * _orthogonal(rng, n_out, n_in)


INITS: dict[str, Init] = {
    "zeros": lambda rng, n_out, n_in: np.zeros((n_out, n_in)),
    "xavier_normal": _scaled("normal", _xavier),
    "xavier_uniform": _scaled("uniform", _xavier),
    "he_normal": _scaled("normal", _he),
    "he_uniform": _scaled("uniform", _he),
    "lecun_normal": _scaled("normal", _lecun),
    "lecun_uniform": _scaled("uniform", _lecun),
    "orthogonal": _orthogonal,
}
PATTERNS = {"normal_": _normal, "uniform_": _uniform, "orthogonal_": _orthogonal_gain}


def get_init(name: str) -> Init:
    """The initializer called ``name``; ``normal_<std>``, ``uniform_<a>`` and
    ``orthogonal_<gain>`` take a positive number."""
    if not isinstance(name, str):
        raise TypeError(f"init must be a string, got {name!r} ({type(name).__name__})")
    if name in INITS:
        return INITS[name]
    for prefix, make in PATTERNS.items():
        if name.startswith(prefix):
            try:
                value = float(name[len(prefix) :])
            except ValueError:
                value = math.nan
            if not (math.isfinite(value) and value > 0):
                raise ValueError(
                    f"init {name!r}: the number after {prefix!r} must be a positive float, "
                    f"e.g. {prefix}0.01"
                )
            return make(value)
    valid = ", ".join([*sorted(INITS), "normal_<std>", "uniform_<a>", "orthogonal_<gain>"])
    raise ValueError(f"unknown init {name!r}; valid: {valid}")


def weight_variance(init: str, n_out: int, n_in: int) -> float:
    """Var(W_ij) that ``init`` draws for a (n_out, n_in) layer (the σ_w²/n_in of mean-field theory)."""
    get_init(init)  # validates the name
    for prefix, var in (("normal_", lambda v: v * v), ("uniform_", lambda v: v * v / 3.0),
                        ("orthogonal_", lambda g: g * g / max(n_out, n_in))):  # fmt: skip
        if init.startswith(prefix):
            return var(float(init[len(prefix) :]))
    family = init.rsplit("_", 1)[0]
    return {
        "zeros": 0.0,
        "xavier": _xavier(n_out, n_in),
        "he": _he(n_out, n_in),
        "lecun": _lecun(n_out, n_in),
        "orthogonal": 1.0 / max(n_out, n_in),  # orthonormal rows (or columns)
    }[family]


def init_weights(sizes: list[int], init: str, seed: int) -> list[np.ndarray]:
    """Weights W_l of shape (sizes[l], sizes[l-1]) for l = 1..L, float64, drawn from ``seed``."""
    draw = get_init(init)
    rng = np.random.default_rng(seed)
    return [draw(rng, n_out, n_in) for n_in, n_out in zip(sizes[:-1], sizes[1:], strict=True)]
