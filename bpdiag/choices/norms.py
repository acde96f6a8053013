"""Normalization layers and residual connections by name.

| norm      | what each hidden layer normalizes its pre-activation z with (then γ z + β)         |
|-----------|------------------------------------------------------------------------------------|
| none      | nothing                                                                            |
| batchnorm | ``torch.nn.BatchNorm1d``: each unit over the batch (the running statistics in eval) |
| layernorm | ``torch.nn.LayerNorm(n)``: each row over its units                                 |

``residual=True`` gives every hidden layer but the first whose input and output widths match a
skip connection, a_l = a_{l−1} + α·φ(norm(z_l)); ``residual_scale`` is α: a positive number or
``"inv_sqrt_depth"`` for 1/√L (L weight layers).
"""

from __future__ import annotations

import math

from bpdiag._core.codes import BATCHNORM, LAYERNORM, NO_NORM
from bpdiag.choices.registry import lookup

NORMS: dict[str, int] = {"none": NO_NORM, "batchnorm": BATCHNORM, "layernorm": LAYERNORM}
RESIDUAL_SCALES = ("inv_sqrt_depth",)  # α by name


def norm_code(name: str) -> int:
    """Integer code of a normalization name."""
    return lookup("norm", name, NORMS)


def residual_scale(value: object, depth: int) -> float:
    """α of the residual branch: a positive finite number, or by name (``RESIDUAL_SCALES``)."""
    if isinstance(value, str):
        if value == "inv_sqrt_depth":
            return 1.0 / math.sqrt(depth)
        raise ValueError(
            f"unknown residual_scale {value!r}; valid: a positive number or "
            f"{', '.join(RESIDUAL_SCALES)}"
        )
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"residual_scale must be a number or a name, got {value!r}")
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"residual_scale must be a positive finite number, got {value!r}")
    return float(value)
