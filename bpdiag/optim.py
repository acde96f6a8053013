"""Optimizer registry with PyTorch's documented update rules, defaults and keyword names.

g is the (clipped) gradient, t the 1-based step count, λ = ``weight_decay``.

- ``sgd``/``momentum``/``nesterov`` (``torch.optim.SGD``): g ← g + λθ; with momentum μ:
  b_1 = g, b_t = μ b_{t−1} + (1 − dampening) g; g ← g + μ b_t (Nesterov) or g ← b_t; θ ← θ − lr g.
- ``rmsprop`` (``torch.optim.RMSprop``): g ← g + λθ; v ← αv + (1 − α)g²; optionally centered
  (ḡ ← αḡ + (1 − α)g, v − ḡ²); d = √v + ε; with momentum: b ← μb + g/d, θ ← θ − lr b;
  else θ ← θ − lr g/d.
- ``adam`` (``torch.optim.Adam``, coupled L2): g ← g + λθ; m ← β₁m + (1 − β₁)g;
  v ← β₂v + (1 − β₂)g²; θ ← θ − (lr / (1 − β₁ᵗ)) · m / (√v / √(1 − β₂ᵗ) + ε).
- ``adamw`` (``torch.optim.AdamW``): θ ← θ(1 − lr λ), then the Adam step without λ in g.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from bpdiag.registry import lookup

SGD, RMSPROP, ADAM, ADAMW = range(4)

# Slots of the float64 hyper-parameter vector the kernels read.
LR, MOMENTUM, DAMPENING, NESTEROV, BETA1, BETA2, EPS, ALPHA, WEIGHT_DECAY, CENTERED = range(10)
N_SLOTS = 10


@dataclass(frozen=True)
class OptimizerSpec:
    code: int
    defaults: dict[str, object]


OPTIMIZERS: dict[str, OptimizerSpec] = {
    "sgd": OptimizerSpec(
        SGD, {"momentum": 0.0, "dampening": 0.0, "weight_decay": 0.0, "nesterov": False}
    ),
    "momentum": OptimizerSpec(SGD, {"momentum": 0.9, "dampening": 0.0, "weight_decay": 0.0}),
    "nesterov": OptimizerSpec(SGD, {"momentum": 0.9, "weight_decay": 0.0, "nesterov": True}),
    "rmsprop": OptimizerSpec(
        RMSPROP,
        {"alpha": 0.99, "eps": 1e-8, "weight_decay": 0.0, "momentum": 0.0, "centered": False},
    ),
    "adam": OptimizerSpec(ADAM, {"betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.0}),
    "adamw": OptimizerSpec(ADAMW, {"betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.01}),
}


def _number(name: str, value: object, low: float, high: float = math.inf) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | np.floating | np.integer):
        raise TypeError(f"{name} must be a number, got {value!r}")
    value = float(value)
    if not (math.isfinite(value) and low <= value <= high):
        raise ValueError(f"{name} must be in [{low}, {high}], got {value!r}")
    return value


def resolve_optimizer(name: str, lr: float, options: dict[str, object]) -> tuple[int, np.ndarray]:
    """Validate ``name``, ``lr`` and PyTorch-named options; return ``(code, hp)`` for the kernel."""
    spec = lookup("optimizer", name, OPTIMIZERS)
    unknown = sorted(set(options) - set(spec.defaults))
    if unknown:
        raise ValueError(
            f"unknown option(s) {unknown} for optimizer {name!r}; valid: {sorted(spec.defaults)}"
        )
    opts = {**spec.defaults, **options}
    lr = _number("lr", lr, 0.0)
    if lr <= 0:
        raise ValueError(f"lr must be a positive number, got {lr!r}")
    hp = np.zeros(N_SLOTS, dtype=np.float64)
    hp[LR] = lr
    hp[WEIGHT_DECAY] = _number("weight_decay", opts["weight_decay"], 0.0)
    if "momentum" in opts:
        hp[MOMENTUM] = _number("momentum", opts["momentum"], 0.0)
    if "dampening" in opts:
        hp[DAMPENING] = _number("dampening", opts["dampening"], 0.0, 1.0)
    for flag, slot in (("nesterov", NESTEROV), ("centered", CENTERED)):
        if flag in opts:
            if not isinstance(opts[flag], bool | np.bool_):
                raise TypeError(f"{flag} must be True or False, got {opts[flag]!r}")
            hp[slot] = float(opts[flag])
    if hp[NESTEROV] and (hp[MOMENTUM] <= 0 or hp[DAMPENING] != 0):
        raise ValueError("nesterov needs momentum > 0 and dampening = 0 (as in torch.optim.SGD)")
    if "betas" in opts:
        betas = opts["betas"]
        if not isinstance(betas, tuple | list) or len(betas) != 2:
            raise TypeError(f"betas must be a pair (beta1, beta2), got {betas!r}")
        hp[BETA1] = _number("betas[0]", betas[0], 0.0, 1.0)
        hp[BETA2] = _number("betas[1]", betas[1], 0.0, 1.0)
        if hp[BETA1] >= 1 or hp[BETA2] >= 1:
            raise ValueError(f"betas must be in [0, 1), got {betas!r}")
    if "eps" in opts:
        hp[EPS] = _number("eps", opts["eps"], 0.0)
    if "alpha" in opts:
        hp[ALPHA] = _number("alpha", opts["alpha"], 0.0, 1.0)
    return spec.code, hp
