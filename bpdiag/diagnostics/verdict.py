"""A verdict per run — healthy, vanishing, exploding, diverged, dead, saturated — with its evidence.

The rule reads the recorded per-layer error signal δ_l (``delta_rms``) and weight gradients,
first layer against last, at init and over training, and sets them beside mean-field theory:

1. ``diverged``  — a non-finite loss or gradient, or the loss grew ``loss_blowup``-fold.
2. ``dead``      — on average ≥ ``dead_fraction`` of the hidden ReLU-family units are inactive for
                   every sample of the batch (at the last record).
3. ``saturated`` — on average ≥ ``saturated_fraction`` of sigmoid/tanh hidden activations sit in
                   their flat tails (at the last record).
4. ``exploding`` — the median over records of RMS‖δ_1‖/RMS‖δ_L‖ is above ``exploding_ratio``.
5. ``vanishing`` — that median is below ``vanishing_ratio``.
6. ``healthy``   — none of the above.

The evidence holds the numbers ``bpdiag.schema`` marks as evidence, under the same names as in
``History.summary`` and MLflow.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

import numpy as np
import pandas as pd

from bpdiag.schema import EVIDENCE_NAMES

LABELS = ("healthy", "vanishing", "exploding", "diverged", "dead", "saturated")


@dataclass(frozen=True)
class Thresholds:
    """Defaults of the diagnosis rule; override any of them by keyword."""

    vanishing_ratio: float = 1e-2  # δ_1/δ_L below this: vanishing (100× weaker at the input)
    exploding_ratio: float = 1e2  # δ_1/δ_L above this: exploding
    loss_blowup: float = 1e3  # final loss / initial loss above this: diverged
    dead_fraction: float = 0.5  # mean share of dead hidden units: dead
    saturated_fraction: float = 0.5  # mean share of saturated hidden activations: saturated

    @classmethod
    def of(cls, **overrides: float) -> Thresholds:
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(overrides) - names)
        if unknown:
            raise ValueError(f"unknown threshold(s) {unknown}; valid: {sorted(names)}")
        for key, value in overrides.items():
            if not (isinstance(value, int | float) and value > 0):
                raise ValueError(f"threshold {key} must be a positive number, got {value!r}")
        return cls(**overrides)


@dataclass(frozen=True)
class Diagnosis:
    label: str
    reason: str  # one sentence a person can read
    evidence: dict[str, float]  # the numbers behind the label (``schema.EVIDENCE_NAMES``)
    thresholds: Thresholds

    def as_dict(self) -> dict[str, object]:
        return {
            "label": self.label,
            "reason": self.reason,
            **self.evidence,
            **asdict(self.thresholds),
        }


def _safe_log(x: np.ndarray) -> np.ndarray:
    return np.log(np.maximum(np.asarray(x, dtype=np.float64), 1e-300))


def layer_profile(layers: pd.DataFrame, column: str) -> pd.DataFrame:
    """Wide table: one row per recorded step, one column per layer (1..L)."""
    return layers.pivot(index="step", columns="layer", values=column)


def first_last_ratio(profile: pd.DataFrame) -> pd.Series:
    """Per recorded step: value at layer 1 / value at layer L (NaN where the last is 0)."""
    last = profile.iloc[:, -1].where(profile.iloc[:, -1] != 0)
    return profile.iloc[:, 0] / last


def decay_per_layer(values: np.ndarray) -> float:
    """Per-layer factor from output to input: exp(−slope) of a least-squares line through log v_l."""
    values = np.asarray(values, dtype=np.float64)
    if values.size < 2 or not np.all(np.isfinite(values)):
        return math.nan
    slope = np.polyfit(np.arange(1, values.size + 1), _safe_log(values), 1)[0]
    return float(np.exp(-slope))


def first_layer_below(ratios: np.ndarray, floor: float) -> int:
    """Walking from the output back, the first layer l with v_l / v_L < floor (−1 if none)."""
    for layer in range(len(ratios), 0, -1):
        if ratios[layer - 1] < floor:
            return layer
    return -1


def _hidden_mean(layers: pd.DataFrame, column: str) -> float:
    last = layers[layers.step == layers.step.max()]
    values = last[column].to_numpy()[:-1]  # hidden layers only
    values = values[np.isfinite(values)]
    return float(values.mean()) if values.size else math.nan


def _median(series: pd.Series) -> float:
    return float(np.nanmedian(series)) if series.notna().any() else math.nan


def evidence(history, thresholds: Thresholds) -> dict[str, float]:
    """The measurements the rule reads, beside the theory's predictions (``EVIDENCE_NAMES``)."""
    layers, steps = history.layers, history.steps
    delta = layer_profile(layers, "delta_rms")
    delta_ratio = first_last_ratio(delta)
    W_ratio = first_last_ratio(layer_profile(layers, "grad_norm_W"))
    init = delta.iloc[0].to_numpy()
    pred = history.theory
    ev = {
        "loss_init": float(steps["loss"].iloc[0]),
        "loss_end": float(steps["loss"].iloc[-1]),
        "diverged_step": float(history.diverged_step),
        "grad_ratio_first_last": float(delta_ratio.iloc[0]),
        "grad_ratio_first_last_W": float(W_ratio.iloc[0]),
        "delta_ratio_median": _median(delta_ratio),
        "delta_ratio_end": float(delta_ratio.iloc[-1]),
        "grad_W_ratio_median": _median(W_ratio),
        "decay_per_layer": decay_per_layer(init),
        "first_layer_below": float(
            first_layer_below(init / init[-1] if init[-1] else init, thresholds.vanishing_ratio)
        ),
        "grad_ratio_first_last_theory": float(pred.delta_ratio[0]) if pred else math.nan,
        "grad_ratio_first_last_W_theory": float(pred.grad_W_ratio[0]) if pred else math.nan,
        "decay_per_layer_theory": pred.decay_per_layer if pred else math.nan,
        "chi1_theory": pred.chi1 if pred else math.nan,
        "depth_scale_theory": pred.depth_scale if pred else math.nan,
        "dead_fraction": _hidden_mean(layers, "frac_dead"),
        "saturated_fraction": _hidden_mean(layers, "frac_saturated"),
    }
    return {name: ev[name] for name in EVIDENCE_NAMES}


def diagnose(history, thresholds: Thresholds | None = None, **overrides: float) -> Diagnosis:
    """Label a ``History`` (from ``bpdiag.train``) and collect the evidence."""
    th = thresholds or Thresholds.of(**overrides)
    ev = evidence(history, th)
    steps = history.steps
    loss0, loss_end, ratio = ev["loss_init"], ev["loss_end"], ev["delta_ratio_median"]
    if history.diverged_step >= 0 or not math.isfinite(loss_end):
        label = "diverged"
        reason = f"loss or gradient became non-finite at step {history.diverged_step}"
    elif loss0 > 0 and loss_end > th.loss_blowup * loss0:
        label, reason = "diverged", f"loss grew {loss_end / loss0:.3g}-fold"
        ev["diverged_step"] = float(steps["step"][steps["loss"] > th.loss_blowup * loss0].iloc[0])
    elif ev["dead_fraction"] >= th.dead_fraction:
        label = "dead"
        reason = f"{ev['dead_fraction']:.0%} of hidden units are inactive on every sample"
    elif ev["saturated_fraction"] >= th.saturated_fraction:
        label = "saturated"
        reason = f"{ev['saturated_fraction']:.0%} of hidden activations are saturated"
    else:
        median = (
            f"the error signal at layer 1 is {ratio:.3g}× that at layer L (median over training)"
            if ratio != 0
            else "no error signal reaches layer 1 (RMS‖δ₁‖ is exactly 0 over most of training)"
        )
        if ratio > th.exploding_ratio:
            label, reason = "exploding", f"{median}, above {th.exploding_ratio:g}"
        elif ratio < th.vanishing_ratio:
            label, reason = "vanishing", f"{median}, below {th.vanishing_ratio:g}"
        else:
            label = "healthy"
            reason = f"{median}, within {th.vanishing_ratio:g} … {th.exploding_ratio:g}"
    return Diagnosis(label, reason, ev, th)
