"""bpdiag: backpropagation experiments and gradient-flow diagnostics.

Heavy modules (mlflow, dask, matplotlib, scikit-learn) are imported where they are used.
"""

from bpdiag.diagnose import Diagnosis, Thresholds, diagnose
from bpdiag.model import MLP
from bpdiag.train import History, train

__all__ = ["MLP", "Diagnosis", "History", "Thresholds", "diagnose", "train"]
__version__ = "0.1.0"
