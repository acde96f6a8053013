"""bpdiag: backpropagation experiments and gradient-flow diagnostics.

The public face is ``MLP``, ``train``, ``History``, ``diagnose`` (with ``Diagnosis`` and
``Thresholds``); the modules ``data``, ``hooks``, ``gradcheck``, ``schema`` and the packages
``diagnostics`` and ``sweep`` hold the rest. Names are imported on first use, so that
``import bpdiag`` (and ``bpdiag --help``) loads neither Numba nor pandas, and the console
script starts handling Ctrl-C within milliseconds (``__version__`` is read on first use too).
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING

_HOMES = {
    "MLP": "bpdiag.model",
    "train": "bpdiag.training",
    "History": "bpdiag.history",
    "diagnose": "bpdiag.diagnostics.verdict",
    "Diagnosis": "bpdiag.diagnostics.verdict",
    "Thresholds": "bpdiag.diagnostics.verdict",
}
__all__ = ["MLP", "Diagnosis", "History", "Thresholds", "diagnose", "train"]

if TYPE_CHECKING:
    from bpdiag.diagnostics.verdict import Diagnosis, Thresholds, diagnose
    from bpdiag.history import History
    from bpdiag.model import MLP
    from bpdiag.training import train


def __getattr__(name: str) -> object:
    if name == "__version__":
        from importlib.metadata import version

        globals()[name] = version("bpdiag")
        return globals()[name]
    if name not in _HOMES:
        raise AttributeError(f"module 'bpdiag' has no attribute {name!r}")
    value = getattr(import_module(_HOMES[name]), name)
    globals()[name] = value
    return value
