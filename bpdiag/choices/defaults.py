"""Every default, in one place: ``MLP``, ``train``, ``RunConfig`` (sweep files) and the
``bpdiag train`` command all read these.

A sweep file's ``base`` and axes are deltas over them, as a call's keyword arguments are.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Defaults:
    # data (sweeps and ``bpdiag train``)
    dataset: str = "spirals"
    n_samples: int = 1000  # synthetic data sets only
    # the net
    depth: int = 10  # weight layers
    width: int = 64
    activation: str = "relu"
    loss: str = "bce"
    init: str = "he_normal"
    dtype: str = "float64"
    seed: int = 0
    norm: str = "none"
    residual: bool = False
    residual_scale: float = 1.0
    # training
    optimizer: str = "adam"
    lr: float = 1e-3
    steps: int = 1000
    batch_size: int = 64
    shuffle: bool = True
    clip: str = "none"
    record_every: int = 10
    # instruments (``bpdiag.instruments``), off unless asked for (sweeps/default.yaml asks for
    # the Jacobian; a sweep's run and ``bpdiag train`` skip it for BatchNorm nets)
    sharpness_every: int = 0  # records between sharpness measurements (0: none)
    jacobian_inputs: int = 0  # inputs of the Jacobian spectrum at init (0: none)


DEFAULTS = Defaults()
