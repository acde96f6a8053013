"""Gradient clipping registry: transformations applied between backprop and the optimizer.

| name  | what it does (c = ``clip_value``)                                                    |
|-------|--------------------------------------------------------------------------------------|
| none  | nothing                                                                              |
| value | ``torch.nn.utils.clip_grad_value_``: every entry clamped to [−c, c]                  |
| norm  | ``clip_grad_norm_`` over all parameters: g ← g · min(1, c / (‖g‖ + 1e−6))            |
| layer | the same per layer (its W, b and, where normalized, γ and β together)                |
| agc   | ``optax.adaptive_grad_clip(c, eps=1e-3)``: per output unit i (row of W; a bias       |
|       | vector, γ and β each count as one unit), if ‖G_i‖ ≥ c·max(‖W_i‖, 1e−3):              |
|       | G_i ← G_i · c·max(‖W_i‖, 1e−3) / max(‖G_i‖, 1e−6)                                    |
"""

from __future__ import annotations

import math

from bpdiag._core.codes import CLIP_AGC, CLIP_LAYER, CLIP_NORM, CLIP_VALUE, NO_CLIP
from bpdiag.choices.registry import lookup

CLIPPING: dict[str, int] = {"none": NO_CLIP, "value": CLIP_VALUE, "norm": CLIP_NORM,
                            "layer": CLIP_LAYER, "agc": CLIP_AGC}  # fmt: skip


def clip_code(clip: str, clip_value: float | None) -> tuple[int, float]:
    """Validate ``clip``/``clip_value`` and return ``(code, value)`` (value 0.0 for ``none``)."""
    code = lookup("clip", clip, CLIPPING)
    if code == NO_CLIP:
        return code, 0.0
    if clip_value is None:
        raise ValueError(f"clip={clip!r} needs clip_value (a positive number); got None")
    if isinstance(clip_value, bool) or not isinstance(clip_value, int | float):
        raise TypeError(f"clip_value must be a number, got {clip_value!r}")
    if not (math.isfinite(clip_value) and clip_value > 0):
        raise ValueError(f"clip_value must be a positive finite number, got {clip_value!r}")
    return code, float(clip_value)
