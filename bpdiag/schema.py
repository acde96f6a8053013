"""The record schema: every quantity bpdiag records, declared once, with where it goes.

- **Step series**: one value per record (``History.steps`` columns; MLflow step metrics).
- **Layer series**: one value per record and layer (``History.layers`` columns, every one in
  the ``layers.parquet`` artifact; a few as MLflow metrics ``layer/<name>/NN`` for a few
  layers, downsampled).
- **Run scalars**: one value per run (``History.summary``; the verdict's evidence is a subset;
  MLflow summary metrics, logged once each under the same name).
- **Timings** and the **sweep's counts**: MLflow metrics of a child and of a parent run.
- **Tags** that bpdiag writes on runs.

The series' names are the kernel's record slots (``bpdiag._core.slots``), so a series is
declared by its slot; everything else about it is declared here and read from here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from bpdiag._core import slots


@dataclass(frozen=True)
class Series:
    """A recorded column: ``History.steps`` (per record) or ``History.layers`` (per layer)."""

    column: str  # the kernel's slot name = the History column
    key: str | None  # MLflow metric key (per layer: the prefix of key/NN); None: not logged
    doc: str
    clipped_only: bool = False  # logged only when clipping is on (else it repeats ‖g‖ or 1)
    also: str | None = None  # a second key: the batch/… copy charts near the top of MLflow's view

    @property
    def keys(self) -> tuple[str, ...]:
        return tuple(k for k in (self.key, self.also) if k)

    def layer_key(self, layer: int, depth: int) -> str:
        """'layer/grad_norm/07': zero-padded so that the keys sort by layer."""
        return f"{self.key}/{layer:0{max(2, len(str(depth)))}d}"


def _series(names: tuple[str, ...], *entries: Series) -> tuple[Series, ...]:
    """The entries in slot order; every slot declared exactly once."""
    by_name = {s.column: s for s in entries}
    if sorted(by_name) != sorted(names) or len(by_name) != len(entries):
        raise ValueError(f"the schema must declare each slot once: {names} vs {list(by_name)}")
    return tuple(by_name[n] for n in names)


STEP_SERIES = _series(
    slots.STEP_SLOTS,
    Series("step", None, "optimizer step of the record (0: at init, before any update)"),
    Series("loss", "loss", "batch-mean training loss of the step's minibatch", also="batch/loss"),
    Series("accuracy", "accuracy", "accuracy on the step's minibatch (NaN for mse)",
           also="batch/accuracy"),
    Series("grad_norm_total", "batch/grad_norm", "‖∂L/∂θ‖ over all parameters (W, b; γ, β where"
           " normalized), before clipping"),
    Series("grad_norm_total_clipped", "batch/grad_norm_clipped", "the same after clipping",
           clipped_only=True),
    Series("clip_coef", "batch/clip_coef", "clipped norm / norm (1: not clipped)",
           clipped_only=True),
    Series("sample_grad_sq_total", "instruments/sample_grad_sq", "E_i‖g_i‖², the mean over the"
           " minibatch of each sample's squared gradient norm, over every layer's W and b"),
    Series("noise_scale_total", "instruments/B_simple", "B_simple = tr Σ / ‖G‖² (McCandlish"
           " et al. 2018) over every layer's W and b: tr Σ = E_i‖g_i‖² − ‖G‖², G the minibatch"
           " gradient"),
    Series("grad_snr_total", "instruments/grad_snr", "the minibatch gradient's signal-to-noise"
           " ratio m ‖G‖² / tr Σ = m / B_simple (m: the step's batch)"),
)  # fmt: skip

LAYER_SERIES = _series(
    slots.LAYER_SLOTS,
    Series("grad_norm_W", "layer/grad_norm", "‖∂L/∂W_l‖, before clipping"),
    Series("grad_norm_b", None, "‖∂L/∂b_l‖, before clipping"),
    Series("grad_norm_W_clipped", None, "‖∂L/∂W_l‖ after clipping"),
    Series("delta_rms", "layer/delta_rms", "RMS over the batch of ‖∂ℓ_i/∂z_l‖, the error signal (z_l:"
           " before the normalization)"),
    Series("weight_norm", None, "‖W_l‖ before the step's update"),
    Series("update_ratio", "layer/update_ratio", "‖ΔW_l‖ / ‖W_l‖ of the step's update"),
    Series("act_mean", None, "mean of a_l over the batch and units"),
    Series("act_std", None, "standard deviation of a_l over the batch and units"),
    Series("frac_saturated", None, "hidden sigmoid h < 0.01 or > 0.99, tanh |h| > 0.99, h = φ(·)"
           " before any skip (else NaN)"),
    Series("frac_dead", None, "hidden ReLU-family units whose input to φ (z, or u after the"
           " normalization) is ≤ 0 on the whole batch (else NaN)"),
    Series("nonfinite", None, "NaN/Inf entries of the layer's gradient"),
    Series("grad_norm_affine", None, "‖(∂L/∂γ_l, ∂L/∂β_l)‖ of a normalized layer, before clipping"),
    Series("delta_rms_normed", None, "RMS over the batch of ‖∂ℓ_i/∂u_l‖ after the normalization"),
    Series("sample_grad_sq", None, "E_i‖g_{l,i}‖² of the per-sample gradients of (W_l, b_l),"
           " ‖g_{l,i}‖ = m ‖δ_{l,i}‖ √(‖a_{l−1,i}‖² + 1) (NaN for BatchNorm nets)"),
    Series("noise_scale", "instruments/B_simple", "B_simple of layer l: tr Σ_l / ‖G_l‖²"),
    Series("grad_snr", None, "m ‖G_l‖² / tr Σ_l, the layer's minibatch-gradient SNR"),
)  # fmt: skip
LAYER_POINTS = 50  # records per per-layer MLflow series (every record is in layers.parquet)
LAYER_CHARTS = 8  # layers with MLflow series: the first, the last, evenly between


def charted_layers(depth: int) -> list[int]:
    """The layers (1..depth) whose series go to MLflow: all of a shallow net's; of a deep
    net's, ``LAYER_CHARTS`` evenly spaced from the input to the output (the depth profiles
    and ``layers.parquet`` have every layer)."""
    picks = [round(1 + i * (depth - 1) / (LAYER_CHARTS - 1)) for i in range(LAYER_CHARTS)]
    return sorted(set(picks)) if depth > LAYER_CHARTS else list(range(1, depth + 1))


@dataclass(frozen=True)
class Profile:
    """A layer series across depth, as an MLflow metric whose step is the layer index (1..L):
    one chart shows how it falls or grows toward the input, and the chart view overlays runs.
    Logged as log10 (a vanishing net spans 18 decades) at a few records (``PROFILE_AT``).

    MLflow's chart view puts a key's part before its last "/" as a section and orders the
    sections alphabetically (metrics without one last): ``batch/…``, ``depth/…``,
    ``layer/…``, ``summary/…``, ``time/…``; keys stay short enough (≤ 28 characters) that the
    chart view's titles keep the part that tells them apart."""

    column: str  # a ``LAYER_SERIES`` column
    name: str  # depth/<name>/<when>

    def key(self, when: str) -> str:
        return f"depth/{self.name}/{when}"


PROFILES = (
    Profile("delta_rms", "log10_delta"),
    Profile("grad_norm_W", "log10_grad"),
)
# Where the profiles are taken: the first record, fractions of the way, the last record
# (numbered, so that MLflow's alphabetical order of charts is the order in time).
PROFILE_AT = (("0_init", 0.0), ("1_quarter", 0.25), ("2_half", 0.5), ("3_end", 1.0))


@dataclass(frozen=True)
class Scalar:
    """One number per run: a ``History.summary`` key, logged to MLflow once as
    ``summary/<group>/<name>`` (sections of MLflow's charts after the step series)."""

    name: str
    group: str  # outcome | verdict | flow | theory | cost
    doc: str
    evidence: bool = True  # part of the verdict's evidence (``Diagnosis.evidence``)
    scale: str = "linear"  # "log10": also as <group>/log10_<name>; "inverse": as inv_<name> only
    after_divergence: bool = True  # meaningful for a diverged run (else not logged for one)

    @property
    def key(self) -> str:
        return f"summary/{self.group}/{self.name}"

    @property
    def log10_key(self) -> str:
        return f"summary/{self.group}/log10_{self.name}"

    def mlflow(self, value: float, diverged: bool = False) -> dict[str, float]:
        """MLflow key → value: finite values only (MLflow keeps no NaN and stores ±inf as
        ±1.8e308, which charts and means take for numbers)."""
        if diverged and not self.after_divergence:
            return {}
        if self.scale == "inverse":
            values = (1.0 / value if value else math.inf,)
        else:
            values = (value, log10_logged(value)) if self.scale == "log10" else (value,)
        pairs = dict(zip(self.keys, values, strict=True))
        return {k: float(v) for k, v in pairs.items() if v is not None and math.isfinite(v)}

    @property
    def keys(self) -> tuple[str, ...]:
        """Every MLflow key this number may be logged under."""
        if self.scale == "inverse":
            return (self._inverse_key,)
        log = (self.log10_key,) if self.scale == "log10" else ()
        return (self.key, *log)

    def from_mlflow(self, metrics: dict[str, float]) -> float | None:
        """The value back from a run's metrics (None where it was not logged)."""
        if self.scale == "inverse":
            inv = metrics.get(self._inverse_key)
            return None if inv is None else (1.0 / inv if inv else math.inf)
        return metrics.get(self.key)

    @property
    def _inverse_key(self) -> str:
        return f"summary/{self.group}/inv_{self.name}"


def log10(value: float) -> float:
    """log10 of a positive number; NaN otherwise (a NaN is not logged)."""
    return math.log10(value) if value > 0 else math.nan


LOG10_OF_ZERO = -324.0  # below log10 of the smallest positive double (4.9e-324 ≈ 10^-323.3)


def log10_logged(value: float) -> float:
    """The ``summary/…/log10_…`` metric of ``value``: its log10, and ``LOG10_OF_ZERO`` for an
    exact 0 (an error signal that died out before layer 1 still gets the number the verdict
    reads, below every finite ratio); NaN (not logged) for a negative or NaN value."""
    return LOG10_OF_ZERO if value == 0 else log10(value)


SUMMARY = (
    Scalar("final_loss", "outcome", "loss on the whole training set after training", False,
           "log10", after_divergence=False),
    Scalar("final_accuracy", "outcome", "accuracy on the training set after training", False),
    Scalar("test_loss", "outcome", "loss on the test set (when there is one)", False, "log10",
           after_divergence=False),
    Scalar("test_accuracy", "outcome", "accuracy on the test set (when there is one)", False),
    Scalar("loss_init", "outcome", "the first record's minibatch loss", scale="log10"),
    Scalar("loss_end", "outcome", "the last record's minibatch loss", scale="log10",
           after_divergence=False),
    Scalar("diverged_step", "outcome", "first step with a non-finite loss or gradient, or whose"
           " loss grew past the blow-up threshold (−1: none)"),
    Scalar("delta_ratio_median", "verdict", "median over records of RMS‖δ_1‖ / RMS‖δ_L‖: the"
           " number the vanishing/exploding verdict compares with its thresholds",
           scale="log10"),
    Scalar("dead_fraction", "verdict", "mean share of dead hidden units at the last record"),
    Scalar("saturated_fraction", "verdict", "mean share of saturated hidden units at the last"
           " record"),
    Scalar("grad_ratio_first_last", "flow", "RMS‖δ_1‖ / RMS‖δ_L‖ at init", scale="log10"),
    Scalar("grad_ratio_first_last_W", "flow", "‖∂L/∂W_1‖ / ‖∂L/∂W_L‖ at init", scale="log10"),
    Scalar("delta_ratio_end", "flow", "RMS‖δ_1‖ / RMS‖δ_L‖ at the last record", scale="log10",
           after_divergence=False),
    Scalar("grad_W_ratio_median", "flow", "median over records of ‖∂L/∂W_1‖ / ‖∂L/∂W_L‖",
           scale="log10"),
    Scalar("decay_per_layer", "flow", "factor of RMS‖δ_l‖ per layer toward the input at init"),
    Scalar("first_layer_below", "flow",
           "from the output back, the first layer whose δ at init is below the vanishing "
           "threshold times the last layer's (−1: none)"),
    Scalar("grad_ratio_first_last_theory", "theory", "mean-field RMS‖δ_1‖ / RMS‖δ_L‖ at init",
           scale="log10"),
    Scalar("grad_ratio_first_last_W_theory", "theory", "mean-field ‖∂L/∂W_1‖ / ‖∂L/∂W_L‖ at"
           " init", scale="log10"),
    Scalar("decay_per_layer_theory", "theory", "mean-field factor of δ per layer"),
    Scalar("chi1_theory", "theory", "χ₁ at the fixed point: < 1 ordered (vanishing), > 1 chaotic"),
    Scalar("depth_scale_theory", "theory", "ξ = 1/|ln χ₁| layers (inf at criticality; MLflow"
           " gets 1/ξ = |ln χ₁|, 0 at criticality)", scale="inverse"),
    Scalar("noise_scale_init", "instruments", "B_simple over every W and b at the first record",
           False, "log10"),
    Scalar("noise_scale_end", "instruments", "B_simple over every W and b at the last record",
           False, "log10", after_divergence=False),
    Scalar("grad_snr_end", "instruments", "the minibatch gradient's SNR m/B_simple at the last"
           " record", False, "log10", after_divergence=False),
    Scalar("sharpness_max", "instruments", "largest λ_max of the Hessian measured (with"
           " sharpness_every)", False),
    Scalar("sharpness_end", "instruments", "the last λ_max measured", False,
           after_divergence=False),
    Scalar("eos_ratio_max", "instruments", "sharpness_max · lr/2: 1 is the edge of stability of"
           " gradient descent", False),
    Scalar("jacobian_gain", "instruments", "mean squared singular value of the hidden block's"
           " Jacobian ∂a_{L−1}/∂a_1 at init (with jacobian_inputs)", False, "log10"),
    Scalar("jacobian_gain_theory", "instruments", "mean-field χ^(L) of the same block", False,
           "log10"),
    Scalar("jacobian_spread", "instruments", "Var(σ²)/E[σ²]² of its singular values σ: 0 for"
           " an isometry", False),
    Scalar("jacobian_condition", "instruments", "σ_max/σ_min of the same Jacobian (median over"
           " the inputs)", False, "log10"),
    Scalar("clip_fraction", "outcome", "share of steps whose gradient clipping changed", False),
    Scalar("train_seconds", "cost", "wall time of the training steps (the sharpness"
           " measurements' own time is left out)", False),
    Scalar("steps_per_second", "cost", "optimizer steps per second of training", False),
)  # fmt: skip
SUMMARY_NAMES = tuple(s.name for s in SUMMARY)
EVIDENCE_NAMES = tuple(s.name for s in SUMMARY if s.evidence)

# History.sharpness: the step, λ_max, 2/lr, λ_max·lr/2 (1 at the edge of stability), the
# Hessian-vector products the power iteration took and the measurement's seconds
SHARPNESS_COLUMNS = ("step", "sharpness", "two_over_lr", "eos_ratio", "products", "seconds")
# those of its columns logged as MLflow step metrics (step = the record's optimizer step)
SHARPNESS_SERIES = (
    Series("sharpness", "instruments/sharpness", "λ_max of the loss's Hessian on fixed training"
           " rows (every sharpness_every records)"),
    Series("eos_ratio", "instruments/eos_ratio", "λ_max · lr/2: 1 at the edge of stability"),
)  # fmt: skip

# Seconds a sweep's worker spent on one run, logged as MLflow metrics "time/<name>".
TIMINGS = ("data_s", "train_call_s", "diagnose_s", "plots_s", "total_s")


def timing_key(name: str) -> str:
    return f"time/{name}"


def verdict_count_key(label: str) -> str:
    """The parent run's metric counting its children with verdict ``label``."""
    return f"runs/{label}"


class Tag:
    """The MLflow tags bpdiag writes."""

    ROLE = "bpdiag.role"  # "sweep" on a parent run, "run" on a child
    RUN_KEY = "bpdiag.run_key"  # 16 hex digits of the resolved config's hash
    SWEEP = "bpdiag.sweep"  # the sweep's name
    DIAGNOSIS = "bpdiag.diagnosis"  # the verdict's label
    REASON = "bpdiag.reason"  # the verdict in one sentence
    HEADLINE = "bpdiag.headline"  # the verdict's timeline in a line ("exploding at init, …")
    TIMELINE = "bpdiag.timeline"  # its phases as label@step pairs ("exploding@0,healthy@480")
    FLAGS = "bpdiag.flags"  # comma-separated flags: dead, saturated, clipping, borderline
    VERSION = "bpdiag.version"
    WORKER = "bpdiag.worker"  # host:pid of the worker that trained the run
    BLAS = "bpdiag.blas"  # the library the kernels' GEMMs ran in (``bpdiag.blas``)
    ERROR = "bpdiag.error"  # a failed run's traceback (its end)
    DRIVER = "bpdiag.driver"  # host:pid of the sweep's driver process (on a parent)
    HEARTBEAT = "bpdiag.heartbeat"  # unix seconds, renewed while the sweep runs (on a parent)
    PARENT = "mlflow.parentRunId"
