"""The record schema: every quantity bpdiag records, declared once, with where it goes.

- **Step series**: one value per record (``History.steps`` columns; MLflow step metrics).
- **Layer series**: one value per record and layer (``History.layers`` columns, every one in
  the ``layers.parquet`` artifact; a few as MLflow metrics ``<key>/layer_NN``, downsampled).
- **Run scalars**: one value per run (``History.summary``; the verdict's evidence is a subset;
  MLflow summary metrics, logged once each under the same name).
- **Timings** and the **sweep's counts**: MLflow metrics of a child and of a parent run.
- **Tags** that bpdiag writes on runs.

The series' names are the kernel's record slots (``bpdiag._core.slots``), so a series is
declared by its slot; everything else about it is declared here and read from here.
"""

from __future__ import annotations

from dataclasses import dataclass

from bpdiag._core import slots


@dataclass(frozen=True)
class Series:
    """A recorded column: ``History.steps`` (per record) or ``History.layers`` (per layer)."""

    column: str  # the kernel's slot name = the History column
    key: str | None  # MLflow metric key (per layer: the prefix of key/layer_NN); None: not logged
    doc: str
    clipped_only: bool = False  # logged only when clipping is on (else it repeats ‖g‖ or 1)

    def layer_key(self, layer: int, depth: int) -> str:
        """'grad_norm/layer_07': zero-padded so that the keys sort by layer."""
        return f"{self.key}/layer_{layer:0{max(2, len(str(depth)))}d}"


def _series(names: tuple[str, ...], *entries: Series) -> tuple[Series, ...]:
    """The entries in slot order; every slot declared exactly once."""
    by_name = {s.column: s for s in entries}
    if sorted(by_name) != sorted(names) or len(by_name) != len(entries):
        raise ValueError(f"the schema must declare each slot once: {names} vs {list(by_name)}")
    return tuple(by_name[n] for n in names)


STEP_SERIES = _series(
    slots.STEP_SLOTS,
    Series("step", None, "optimizer step of the record (0: at init, before any update)"),
    Series("loss", "loss", "batch-mean training loss of the step's minibatch"),
    Series("accuracy", "accuracy", "accuracy on the step's minibatch (NaN for mse)"),
    Series("grad_norm_total", "grad_norm/total", "‖∂L/∂θ‖ over all parameters (W, b; γ, β where normalized), before"
           " clipping"),
    Series("grad_norm_total_clipped", "grad_norm/total_clipped", "the same after clipping",
           clipped_only=True),
    Series("clip_coef", "clip_coef", "clipped norm / norm (1: not clipped)", clipped_only=True),
)  # fmt: skip

LAYER_SERIES = _series(
    slots.LAYER_SLOTS,
    Series("grad_norm_W", "grad_norm", "‖∂L/∂W_l‖, before clipping"),
    Series("grad_norm_b", None, "‖∂L/∂b_l‖, before clipping"),
    Series("grad_norm_W_clipped", None, "‖∂L/∂W_l‖ after clipping"),
    Series("delta_rms", "delta_rms", "RMS over the batch of ‖∂ℓ_i/∂z_l‖, the error signal (z_l:"
           " before the normalization)"),
    Series("weight_norm", None, "‖W_l‖ before the step's update"),
    Series("update_ratio", "update_ratio", "‖ΔW_l‖ / ‖W_l‖ of the step's update"),
    Series("act_mean", None, "mean of a_l over the batch and units"),
    Series("act_std", None, "standard deviation of a_l over the batch and units"),
    Series("frac_saturated", None, "hidden sigmoid h < 0.01 or > 0.99, tanh |h| > 0.99, h = φ(·)"
           " before any skip (else NaN)"),
    Series("frac_dead", None, "hidden ReLU-family units whose input to φ (z, or u after the"
           " normalization) is ≤ 0 on the whole batch (else NaN)"),
    Series("nonfinite", None, "NaN/Inf entries of the layer's gradient"),
    Series("grad_norm_affine", None, "‖(∂L/∂γ_l, ∂L/∂β_l)‖ of a normalized layer, before clipping"),
    Series("delta_rms_normed", None, "RMS over the batch of ‖∂ℓ_i/∂u_l‖ after the normalization"),
)  # fmt: skip
LAYER_POINTS = 12  # records per per-layer MLflow series (every record is in layers.parquet)


@dataclass(frozen=True)
class Scalar:
    """One number per run: a ``History.summary`` key and MLflow summary metric of that name."""

    name: str
    group: str  # outcome | flow | theory | units | cost
    doc: str
    evidence: bool = True  # part of the verdict's evidence (``Diagnosis.evidence``)


SUMMARY = (
    Scalar("final_loss", "outcome", "loss on the whole training set after training", False),
    Scalar("final_accuracy", "outcome", "accuracy on the training set after training", False),
    Scalar("test_loss", "outcome", "loss on the test set (when there is one)", False),
    Scalar("test_accuracy", "outcome", "accuracy on the test set (when there is one)", False),
    Scalar("loss_init", "outcome", "the first record's minibatch loss"),
    Scalar("loss_end", "outcome", "the last record's minibatch loss"),
    Scalar("diverged_step", "outcome", "first step with a non-finite loss or gradient (−1: none)"),
    Scalar("grad_ratio_first_last", "flow", "RMS‖δ_1‖ / RMS‖δ_L‖ at init"),
    Scalar("grad_ratio_first_last_W", "flow", "‖∂L/∂W_1‖ / ‖∂L/∂W_L‖ at init"),
    Scalar("delta_ratio_median", "flow", "median over records of RMS‖δ_1‖ / RMS‖δ_L‖"),
    Scalar("delta_ratio_end", "flow", "RMS‖δ_1‖ / RMS‖δ_L‖ at the last record"),
    Scalar("grad_W_ratio_median", "flow", "median over records of ‖∂L/∂W_1‖ / ‖∂L/∂W_L‖"),
    Scalar("decay_per_layer", "flow", "factor of RMS‖δ_l‖ per layer toward the input at init"),
    Scalar("first_layer_below", "flow",
           "from the output back, the first layer whose δ at init is below the vanishing "
           "threshold times the last layer's (−1: none)"),
    Scalar("grad_ratio_first_last_theory", "theory", "mean-field RMS‖δ_1‖ / RMS‖δ_L‖ at init"),
    Scalar("grad_ratio_first_last_W_theory", "theory", "mean-field ‖∂L/∂W_1‖ / ‖∂L/∂W_L‖ at init"),
    Scalar("decay_per_layer_theory", "theory", "mean-field factor of δ per layer"),
    Scalar("chi1_theory", "theory", "χ₁ at the fixed point: < 1 ordered (vanishing), > 1 chaotic"),
    Scalar("depth_scale_theory", "theory", "ξ = 1/|ln χ₁| layers (inf at criticality)"),
    Scalar("dead_fraction", "units", "mean share of dead hidden units at the last record"),
    Scalar("saturated_fraction", "units", "mean share of saturated hidden units at the last record"),
    Scalar("clip_fraction", "units", "share of steps whose gradient clipping changed", False),
    Scalar("train_seconds", "cost", "wall time of training", False),
    Scalar("steps_per_second", "cost", "optimizer steps per second of training", False),
)  # fmt: skip
SUMMARY_NAMES = tuple(s.name for s in SUMMARY)
EVIDENCE_NAMES = tuple(s.name for s in SUMMARY if s.evidence)

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
    VERSION = "bpdiag.version"
    WORKER = "bpdiag.worker"  # host:pid of the worker that trained the run
    BLAS = "bpdiag.blas"  # the library the kernels' GEMMs ran in (``bpdiag.blas``)
    ERROR = "bpdiag.error"  # a failed run's traceback (its end)
    DRIVER = "bpdiag.driver"  # host:pid of the sweep's driver process (on a parent)
    HEARTBEAT = "bpdiag.heartbeat"  # unix seconds, renewed while the sweep runs (on a parent)
    PARENT = "mlflow.parentRunId"
