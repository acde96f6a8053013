"""Activations by name → the kernels' codes (φ and φ' are tabled in ``bpdiag._core.elementwise``).

sigmoid, tanh, relu, leaky_relu (slope 0.01), elu (α = 1), selu (PyTorch's λ, α), gelu (exact,
erf form) and linear, with PyTorch's definitions.
"""

from __future__ import annotations

from bpdiag._core.codes import ELU, GELU, LEAKY_RELU, LINEAR, RELU, SELU, SIGMOID, TANH
from bpdiag.choices.registry import lookup

ACTIVATIONS: dict[str, int] = {
    "sigmoid": SIGMOID,
    "tanh": TANH,
    "relu": RELU,
    "leaky_relu": LEAKY_RELU,
    "elu": ELU,
    "selu": SELU,
    "gelu": GELU,
    "linear": LINEAR,
}


def activation_code(name: str, field: str = "activation") -> int:
    """Integer code of a hidden/output activation name."""
    return lookup(field, name, ACTIVATIONS)
