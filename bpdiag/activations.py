"""Activation registry: names → integer codes used by the kernels.

| name         | φ(z)                              | φ'(z)                         |
|--------------|-----------------------------------|-------------------------------|
| sigmoid      | 1 / (1 + e^(−z))                  | a(1 − a)                      |
| tanh         | tanh z                            | 1 − a²                        |
| relu         | max(0, z)                         | 1 if z > 0 else 0             |
| leaky_relu   | z if z > 0 else 0.01 z            | 1 if z > 0 else 0.01          |
| elu          | z if z > 0 else α(e^z − 1), α = 1 | 1 if z > 0 else a + α         |
| selu         | λ·elu_α(z) (PyTorch's λ, α)       | λ if z > 0 else a + λα        |
| gelu         | z Φ(z) (exact, erf form)          | Φ(z) + z φ(z)                 |
| linear       | z                                 | 1                             |
"""

from __future__ import annotations

from bpdiag.registry import lookup

SIGMOID, TANH, RELU, LEAKY_RELU, ELU, SELU, GELU, LINEAR = range(8)

LEAKY_SLOPE = 0.01
ELU_ALPHA = 1.0
SELU_LAMBDA = 1.0507009873554804934193349852946
SELU_ALPHA = 1.6732632423543772848170429916717

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
