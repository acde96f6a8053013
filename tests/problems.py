"""Random problems for the tests, and the names they are parametrized over (from the registries)."""

import numpy as np

from bpdiag.choices.activations import ACTIVATIONS
from bpdiag.choices.losses import LOSSES

ACTIVATION_NAMES = list(ACTIVATIONS)
LOSS_NAMES = list(LOSSES)


def make_problem(loss: str, m: int = 7, n_in: int = 5, n_out: int = 3, seed: int = 0):
    """Random inputs and targets of the right kind for ``loss``."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(m, n_in))
    if loss == "ce":
        Y = rng.integers(0, n_out, size=m)
    elif loss == "bce":
        Y = rng.uniform(0, 1, size=(m, n_out))
    else:
        Y = rng.normal(size=(m, n_out))
    return X, Y
