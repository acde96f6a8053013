"""bpdiag: backpropagation experiments and gradient-flow diagnostics.

Heavy modules (mlflow, dask, matplotlib, scikit-learn) are imported where they are used.
"""

from bpdiag.model import MLP
from bpdiag.train import History, train

__all__ = ["MLP", "History", "train"]
__version__ = "0.1.0"
