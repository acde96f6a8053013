"""``History``: what one ``train()`` call recorded, with its theory, diagnosis and summary."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
import pandas as pd

from bpdiag._core.slots import LAYER_SLOTS, STEP_SLOTS
from bpdiag.diagnostics.theory import Prediction, predict
from bpdiag.diagnostics.verdict import Diagnosis, diagnose
from bpdiag.schema import SHARPNESS_COLUMNS, SUMMARY, SUMMARY_NAMES


def steps_table(rec_step: np.ndarray) -> pd.DataFrame:
    """History.steps from the kernel's (records, STEP_SLOTS) array."""
    table = pd.DataFrame(rec_step, columns=list(STEP_SLOTS))
    table["step"] = table["step"].astype(np.int64)
    return table


def layers_table(rec_layer: np.ndarray, steps: pd.Series) -> pd.DataFrame:
    """History.layers (long form: one row per record and layer) from the kernel's
    (records, L, LAYER_SLOTS) array."""
    n, L, n_cols = rec_layer.shape
    layers = pd.DataFrame(rec_layer.reshape(n * L, n_cols), columns=list(LAYER_SLOTS))
    layers.insert(0, "layer", np.tile(np.arange(1, L + 1), n))
    layers.insert(0, "step", np.repeat(steps.to_numpy(), L))
    layers["nonfinite"] = layers["nonfinite"].astype(np.int64)
    return layers


@dataclass
class History:
    """Everything recorded by one ``train()`` call (columns: ``bpdiag.schema``)."""

    steps: pd.DataFrame  # one row per record: step, loss, accuracy, grad_norm_total, ...
    layers: pd.DataFrame  # long form: step, layer (1-based), grad_norm_W, delta_rms, ...
    steps_done: int
    diverged_step: int  # first step with a non-finite loss or gradient, −1 if none
    stopped_by: str | None  # None, "nonfinite" or the class name of the hook that stopped
    train_seconds: float  # the steps' wall time (sharpness measurements left out)
    clipped_steps: int  # steps whose gradient the clipping changed
    model: dict  # sizes, activation, init, loss, dtype of the net
    input_second_moment: float  # q_0 = E[x²] of the training inputs (for the theory)
    final: dict = field(default_factory=dict)  # loss/accuracy on the training (and test) set
    config: dict = field(default_factory=dict)  # the training call's arguments
    blas: str = ""  # the library the kernels' GEMMs ran in (``bpdiag.blas``)
    sharpness: pd.DataFrame = field(  # λ_max every sharpness_every records (SHARPNESS_COLUMNS)
        default_factory=lambda: pd.DataFrame(columns=list(SHARPNESS_COLUMNS))
    )
    jacobian: object = None  # instruments.JacobianSpectrum at init (jacobian_inputs > 0)

    @cached_property
    def theory(self) -> Prediction | None:
        """Mean-field prediction at init (None for a one-layer net)."""
        m = self.model
        if len(m["sizes"]) < 3:
            return None
        return predict(m["sizes"], m["activation"], m["init"], self.input_second_moment,
                       m.get("norm", "none"), m.get("skips"), m.get("alpha", 1.0),
                       m.get("batch"))  # fmt: skip

    @cached_property
    def diagnosis(self) -> Diagnosis:
        """The verdict with default thresholds; ``bpdiag.diagnose(hist, ...)`` to override them."""
        return diagnose(self)

    @cached_property
    def summary(self) -> dict[str, float]:
        """One float per ``schema.SUMMARY`` name (test_* only with eval data): the outcome,
        the verdict's evidence and the cost of training; the run's MLflow summary metrics."""
        values = {
            **self.final,
            **self.diagnosis.evidence,
            **self._instruments(),
            "clip_fraction": self.clipped_steps / max(self.steps_done, 1),
            "train_seconds": self.train_seconds,
            "steps_per_second": self.steps_done / self.train_seconds
            if self.train_seconds > 0
            else math.nan,
        }
        return {name: float(values[name]) for name in SUMMARY_NAMES if name in values}

    def _instruments(self) -> dict[str, float]:
        """The instruments' summary numbers (``schema.SUMMARY``, group "instruments"); NaN for
        an instrument that was off."""
        out = {s.name: math.nan for s in SUMMARY if s.group == "instruments"}
        noise = self.steps["noise_scale_total"].to_numpy()
        if noise.size:
            out["noise_scale_init"], out["noise_scale_end"] = noise[0], noise[-1]
            out["grad_snr_end"] = self.steps["grad_snr_total"].iloc[-1]
        sh = self.sharpness
        if len(sh):
            out["sharpness_max"] = sh["sharpness"].max()
            out["sharpness_end"] = sh["sharpness"].iloc[-1]
            out["eos_ratio_max"] = sh["eos_ratio"].max()
        if self.jacobian is not None:
            js = self.jacobian
            out.update(jacobian_gain=js.gain, jacobian_gain_theory=js.gain_theory,
                       jacobian_spread=js.spread, jacobian_condition=js.condition)  # fmt: skip
        return out
