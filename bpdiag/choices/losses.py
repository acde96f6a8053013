"""Loss registry. Semantics match PyTorch's ``BCEWithLogitsLoss``, ``CrossEntropyLoss``, ``MSELoss``.

| name | output activation | targets Y                     | loss (mean)                           | δ_L = ∂L/∂z_L         |
|------|-------------------|-------------------------------|---------------------------------------|-----------------------|
| bce  | sigmoid           | (m, k) floats in [0, 1]       | over m·k elements, stable from logits | (σ(z) − y) / (m k)    |
| ce   | softmax           | (m,) integer labels in [0, k) | over the m samples                    | (softmax(z) − 1_y)/m  |
| mse  | linear (or named) | (m, k) floats                 | over m·k elements                     | 2(ŷ − y) φ'(z) / (m k)|
"""

from __future__ import annotations

from bpdiag._core.codes import BCE, CE, MSE
from bpdiag.choices.registry import lookup

LOSSES: dict[str, int] = {"bce": BCE, "ce": CE, "mse": MSE}
OUTPUT_ACTIVATION: dict[str, str] = {"bce": "sigmoid", "ce": "softmax", "mse": "linear"}


def loss_code(name: str) -> int:
    """Integer code of a loss name."""
    return lookup("loss", name, LOSSES)
