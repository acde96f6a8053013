"""Backprop against central finite differences: the check a person runs before trusting a net."""

from __future__ import annotations

import numpy as np
import pandas as pd

from bpdiag.model import MLP


def gradcheck(net: MLP, X: np.ndarray, Y: np.ndarray, h: float = 1e-6, per_layer: int = 20,
              seed: int = 0, rtol: float = 1e-6) -> pd.DataFrame:  # fmt: skip
    """Compare ``net.loss_and_grads`` with (L(θ + h e_p) − L(θ − h e_p)) / 2h on up to
    ``per_layer`` parameters of every layer (weights, biases, and a normalized layer's γ and β;
    drawn from ``seed``), in float64.

    Returns one row per layer: layer, checked, max_abs_error, rel_error (‖analytic − numeric‖ /
    ‖numeric‖ over the checked entries), fd_floor (the rounding noise of the difference quotient,
    10·ε·|L|/h: vanishing gradients can sit below it) and ok (rel_error < ``rtol`` or every
    error below fd_floor). The net is left unchanged.
    """
    if net.dtype != np.float64:
        raise ValueError(
            f"gradcheck needs a float64 net (finite differences), got {net.dtype.name}"
        )
    if not (isinstance(h, float) and 0 < h < 1):
        raise ValueError(f"h must be a float in (0, 1), got {h!r}")
    original = net.params
    loss, grads = net.loss_and_grads(X, Y)
    floor = 10 * np.finfo(np.float64).eps * max(abs(loss), 1.0) / h
    rng = np.random.default_rng(seed)
    rows = []
    try:
        for k, (group, grad) in enumerate(zip(original, grads, strict=True)):
            flat = np.concatenate([np.ravel(a) for a in group])  # W, b (and γ, β)
            analytic = np.concatenate([np.ravel(g) for g in grad])
            picks = rng.choice(flat.size, size=min(per_layer, flat.size), replace=False)
            numeric = np.empty(picks.size)
            cuts = np.cumsum([a.size for a in group])[:-1]
            for i, p in enumerate(picks):
                losses = []
                for sign in (1.0, -1.0):
                    trial = flat.copy()
                    trial[p] += sign * h
                    params = list(original)
                    params[k] = tuple(part.reshape(a.shape)
                                      for part, a in zip(np.split(trial, cuts), group, strict=True))  # fmt: skip
                    net.set_params(params)
                    losses.append(net.loss_and_grads(X, Y)[0])
                numeric[i] = (losses[0] - losses[1]) / (2 * h)
            diff = analytic[picks] - numeric
            scale = max(np.linalg.norm(numeric), np.linalg.norm(analytic[picks]), 1e-300)
            rel, worst = float(np.linalg.norm(diff) / scale), float(np.abs(diff).max())
            rows.append({"layer": k + 1, "checked": int(picks.size), "max_abs_error": worst,
                         "rel_error": rel, "fd_floor": floor, "ok": rel < rtol or worst < floor})  # fmt: skip
    finally:
        net.set_params(original)
    return pd.DataFrame(rows)
