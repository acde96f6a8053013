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

from bpdiag._core.codes import ADAM, ADAMW, RMSPROP, SGD
from bpdiag._core.structs import Hyper
from bpdiag.choices.registry import lookup


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


def resolve_optimizer(name: str, lr: float, options: dict[str, object]) -> tuple[int, Hyper]:
    """Validate ``name``, ``lr`` and PyTorch-named options; return the kernel's code and
    hyper-parameters."""
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
    hp = {"lr": lr, "weight_decay": _number("weight_decay", opts["weight_decay"], 0.0)}
    if "momentum" in opts:
        hp["momentum"] = _number("momentum", opts["momentum"], 0.0)
    if "dampening" in opts:
        hp["dampening"] = _number("dampening", opts["dampening"], 0.0, 1.0)
    for flag in ("nesterov", "centered"):
        if flag in opts:
            if not isinstance(opts[flag], bool | np.bool_):
                raise TypeError(f"{flag} must be True or False, got {opts[flag]!r}")
            hp[flag] = bool(opts[flag])
    if hp.get("nesterov") and (hp.get("momentum", 0.0) <= 0 or hp.get("dampening", 0.0) != 0):
        raise ValueError("nesterov needs momentum > 0 and dampening = 0 (as in torch.optim.SGD)")
    if "betas" in opts:
        betas = opts["betas"]
        if not isinstance(betas, tuple | list) or len(betas) != 2:
            raise TypeError(f"betas must be a pair (beta1, beta2), got {betas!r}")
        hp["beta1"] = _number("betas[0]", betas[0], 0.0, 1.0)
        hp["beta2"] = _number("betas[1]", betas[1], 0.0, 1.0)
        if hp["beta1"] >= 1 or hp["beta2"] >= 1:
            raise ValueError(f"betas must be in [0, 1), got {betas!r}")
    if "eps" in opts:
        hp["eps"] = _number("eps", opts["eps"], 0.0)
    if "alpha" in opts:
        hp["alpha"] = _number("alpha", opts["alpha"], 0.0, 1.0)
    return spec.code, Hyper(**hp)
