"""A verdict per run — healthy, vanishing, exploding, diverged, dead, saturated — with its
timeline, its flags and its evidence.

The rule reads the recorded per-layer error signal δ_l (``delta_rms``) and weight gradients,
first layer against last, at init and over training, and sets them beside mean-field theory.
The primary label (``Diagnosis.label``, MLflow tag ``bpdiag.diagnosis``):

1. ``diverged``  — a non-finite loss or gradient, or the loss grew ``loss_blowup``-fold.
2. ``dead``      — the net did not train (final training loss above ``trained_loss_ratio`` ×
                   the loss at init) and on average ≥ ``dead_fraction`` of the hidden ReLU-family
                   units are inactive for every sample of the batch (at the last record).
3. ``saturated`` — the net did not train and on average ≥ ``saturated_fraction`` of sigmoid/tanh
                   hidden activations sit in their flat tails (at the last record).
4. ``exploding`` — the median over records of RMS‖δ_1‖/RMS‖δ_L‖ is above ``exploding_ratio``.
5. ``vanishing`` — that median is below ``vanishing_ratio``.
6. ``healthy``   — none of the above.

Dead units and saturation of a net that trained are flags, not labels: they do not override a
net that fits its data. The **timeline** (``Diagnosis.phases``, ``Diagnosis.headline``) labels
gradient flow record by record (the same ratio against the same thresholds) and cuts it into
phases: the first phase starts at init; a new one starts where the label changes and holds
for ``min_phase`` consecutive records (5 % of the records, at least 2), so that one noisy
record is not a phase; a divergence ends the timeline. It reads "exploding at init, healthy
from step 480". **Flags** (``Diagnosis.flags``): ``dead``, ``saturated`` (the fractions above,
whatever the training did), ``clipping`` (clipping changed the gradient on ≥
``clipping_fraction`` of the steps) and ``borderline`` (the median ratio lies within a factor
``borderline_factor`` of a threshold: another seed may well get the other label).

The evidence holds the numbers ``bpdiag.schema`` marks as evidence, under the same names as in
``History.summary`` and MLflow.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields

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
    trained_loss_ratio: float = 0.5  # final loss / initial loss at most this: the net trained
    clipping_fraction: float = 0.5  # share of steps clipping changed: flag ``clipping``
    borderline_factor: float = 2.0  # median ratio within this factor of a threshold: borderline

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
class Phase:
    """A stretch of training with one gradient-flow label: records from step ``start`` to step
    ``end`` (both recorded), with the median of RMS‖δ_1‖/RMS‖δ_L‖ over them."""

    label: str  # healthy | vanishing | exploding | diverged
    start: int
    end: int
    delta_ratio_median: float

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


@dataclass(frozen=True)
class Diagnosis:
    label: str
    reason: str  # one sentence a person can read
    evidence: dict[str, float]  # the numbers behind the label (``schema.EVIDENCE_NAMES``)
    thresholds: Thresholds
    phases: tuple[Phase, ...] = ()
    flags: dict[str, str] = field(default_factory=dict)  # flag name → what it says

    @property
    def headline(self) -> str:
        """The timeline in a line: 'exploding at init, healthy from step 480'."""
        return headline(self.phases)

    @property
    def timeline(self) -> str:
        """The phases as 'label@start' pairs (the ``bpdiag.timeline`` tag): 'exploding@0,healthy@480'."""
        return ",".join(f"{p.label}@{p.start}" for p in self.phases)

    def as_dict(self) -> dict[str, object]:
        return {
            "label": self.label,
            "reason": self.reason,
            "headline": self.headline,
            "flags": ",".join(self.flags),
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


def flow_label(ratio: float, th: Thresholds) -> str:
    """healthy / vanishing / exploding of one ratio RMS‖δ_1‖/RMS‖δ_L‖ (NaN: healthy)."""
    if ratio > th.exploding_ratio:
        return "exploding"
    if ratio < th.vanishing_ratio:
        return "vanishing"
    return "healthy"


def min_phase(records: int) -> int:
    """Consecutive records a new label must hold to start a phase."""
    return max(2, math.ceil(0.05 * records))


def phases(steps: np.ndarray, ratios: np.ndarray, th: Thresholds,
           diverged_step: int = -1) -> tuple[Phase, ...]:  # fmt: skip
    """The timeline of gradient flow (module docstring): records' steps and their ratios in,
    phases out; records at and after ``diverged_step`` (≥ 0) make a last ``diverged`` phase."""
    steps = np.asarray(steps, dtype=np.int64)
    ratios = np.asarray(ratios, dtype=np.float64)
    if diverged_step >= 0:
        keep = steps < diverged_step
        steps, ratios = steps[keep], ratios[keep]
    labels = [flow_label(r, th) for r in ratios]
    k = min_phase(len(labels))
    cuts = [0] if labels else []
    for t in range(1, len(labels)):
        current = labels[cuts[-1]]
        if labels[t] != current and t + k <= len(labels) and len(set(labels[t : t + k])) == 1:
            cuts.append(t)
    out = []
    for i, lo in enumerate(cuts):
        hi = cuts[i + 1] if i + 1 < len(cuts) else len(labels)
        span = ratios[lo:hi]
        med = float(np.nanmedian(span)) if np.isfinite(span).any() else math.nan
        out.append(Phase(labels[lo], int(steps[lo]), int(steps[hi - 1]), med))
    if diverged_step >= 0:
        out.append(Phase("diverged", int(diverged_step), int(diverged_step), math.nan))
    return tuple(out)


def headline(phases: tuple[Phase, ...]) -> str:
    """'exploding at init, healthy from step 480'; 'healthy throughout'; 'diverged at step 12'."""
    if not phases:
        return ""
    if len(phases) == 1 and phases[0].label != "diverged":
        return f"{phases[0].label} throughout"
    parts = []
    for i, p in enumerate(phases):
        if p.label == "diverged":
            parts.append(f"diverged at step {p.start}")
        elif i == 0 and p.start == 0:
            parts.append(f"{p.label} at init")
        else:
            parts.append(f"{p.label} from step {p.start}")
    return ", ".join(parts)


def flags(ev: dict[str, float], clip_fraction: float, th: Thresholds) -> dict[str, str]:
    """The flags (module docstring) that hold, each with a phrase a person can read."""
    out = {}
    if ev["dead_fraction"] >= th.dead_fraction:
        out["dead"] = f"{ev['dead_fraction']:.0%} of hidden units inactive on every sample"
    if ev["saturated_fraction"] >= th.saturated_fraction:
        out["saturated"] = f"{ev['saturated_fraction']:.0%} of hidden activations saturated"
    if clip_fraction >= th.clipping_fraction:
        out["clipping"] = f"clipping changed the gradient on {clip_fraction:.0%} of the steps"
    ratio = ev["delta_ratio_median"]
    if ratio > 0 and math.isfinite(ratio):
        for name, limit in (("vanishing", th.vanishing_ratio), ("exploding", th.exploding_ratio)):
            if abs(math.log(ratio / limit)) < math.log(th.borderline_factor):
                out["borderline"] = (f"median δ₁/δ_L {ratio:.3g} is within "
                                     f"{th.borderline_factor:g}× of the {name} threshold "
                                     f"{limit:g}")  # fmt: skip
    return out


def diagnose(history, thresholds: Thresholds | None = None, **overrides: float) -> Diagnosis:
    """Label a ``History`` (from ``bpdiag.train``) and collect the evidence."""
    th = thresholds or Thresholds.of(**overrides)
    ev = evidence(history, th)
    steps = history.steps
    loss0, loss_end, ratio = ev["loss_init"], ev["loss_end"], ev["delta_ratio_median"]
    final = history.final.get("final_loss", loss_end)
    trained = loss0 > 0 and math.isfinite(final) and final <= th.trained_loss_ratio * loss0
    if history.diverged_step >= 0 or not math.isfinite(loss_end):
        label = "diverged"
        reason = f"loss or gradient became non-finite at step {history.diverged_step}"
    elif loss0 > 0 and loss_end > th.loss_blowup * loss0:
        label, reason = "diverged", f"loss grew {loss_end / loss0:.3g}-fold"
        ev["diverged_step"] = float(steps["step"][steps["loss"] > th.loss_blowup * loss0].iloc[0])
    elif ev["dead_fraction"] >= th.dead_fraction and not trained:
        label = "dead"
        reason = (
            f"{ev['dead_fraction']:.0%} of hidden units are inactive on every sample, and"
            f" the loss did not fall below {th.trained_loss_ratio:g}× its start"
        )
    elif ev["saturated_fraction"] >= th.saturated_fraction and not trained:
        label = "saturated"
        reason = (
            f"{ev['saturated_fraction']:.0%} of hidden activations are saturated, and the"
            f" loss did not fall below {th.trained_loss_ratio:g}× its start"
        )
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
    ratios = first_last_ratio(layer_profile(history.layers, "delta_rms"))
    diverged = int(ev["diverged_step"]) if label == "diverged" else -1
    timeline = phases(ratios.index.to_numpy(), ratios.to_numpy(), th, diverged)
    clip_fraction = history.clipped_steps / max(history.steps_done, 1)
    return Diagnosis(label, reason, ev, th, timeline, flags(ev, clip_fraction, th))
