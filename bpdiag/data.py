"""Data sets: synthetic (seeded) and real (shipped inside scikit-learn), split and standardized.

Every loader returns a ``Dataset`` whose inputs are standardized with the training split's mean
and standard deviation. Binary tasks have targets of shape (m, 1) in {0, 1} (loss ``bce``);
multi-class tasks have integer labels of shape (m,) (loss ``ce``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from bpdiag.choices.registry import lookup


@dataclass(frozen=True)
class Dataset:
    name: str
    X_train: np.ndarray  # (m_train, n_features), standardized
    Y_train: np.ndarray  # (m_train, 1) floats for binary, (m_train,) int labels for multi-class
    X_test: np.ndarray
    Y_test: np.ndarray
    n_classes: int

    @property
    def n_features(self) -> int:
        return self.X_train.shape[1]

    @property
    def loss(self) -> str:
        """The loss that fits the targets: ``bce`` (binary) or ``ce``."""
        return "bce" if self.n_classes == 2 else "ce"

    @property
    def n_outputs(self) -> int:
        return 1 if self.n_classes == 2 else self.n_classes


def _spirals(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Two interleaved spirals of two turns each (radius ≤ 1), Gaussian noise σ = 0.03."""
    y = (np.arange(n) >= n // 2).astype(np.int64)
    t = np.sqrt(rng.uniform(0.02, 1, size=n)) * 4 * np.pi
    sign = np.where(y == 0, 1.0, -1.0)
    X = np.c_[sign * t * np.cos(t), sign * t * np.sin(t)] / (4 * np.pi)
    return X + rng.normal(0, 0.03, size=X.shape), y


def _xor(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    X = rng.uniform(-1, 1, size=(n, 2))
    return X, ((X[:, 0] > 0) ^ (X[:, 1] > 0)).astype(np.int64)


def _circles(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import make_circles

    return make_circles(n, noise=0.08, factor=0.5, random_state=int(rng.integers(2**31)))


def _blobs(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import make_blobs

    return make_blobs(
        n, n_features=8, centers=4, cluster_std=2.0, random_state=int(rng.integers(2**31))
    )


def _digits(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    return load_digits(return_X_y=True)


def _breast_cancer(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_breast_cancer

    return load_breast_cancer(return_X_y=True)


DATASETS: dict[str, Callable[[int, np.random.Generator], tuple[np.ndarray, np.ndarray]]] = {
    "spirals": _spirals,
    "xor": _xor,
    "circles": _circles,
    "blobs": _blobs,
    "digits": _digits,
    "breast_cancer": _breast_cancer,
}
REAL = {"digits", "breast_cancer"}  # fixed size; n_samples does not apply
# name → (n_features, n_outputs, rows or None for n_samples): what a run needs, known unloaded
SHAPES = {"spirals": (2, 1, None), "xor": (2, 1, None), "circles": (2, 1, None),
          "blobs": (8, 4, None), "digits": (64, 10, 1797), "breast_cancer": (30, 1, 569)}  # fmt: skip


TEST_FRACTION = 0.25


def train_rows(name: str, n_samples: int, test_fraction: float = TEST_FRACTION) -> int:
    """Rows of ``load(name, n_samples)``'s training split, without loading it (scikit-learn
    holds out ⌈test_fraction · n⌉ rows)."""
    rows = SHAPES[name][2] or n_samples
    return rows - math.ceil(test_fraction * rows)


def load(
    name: str, n_samples: int = 1000, test_fraction: float = TEST_FRACTION, seed: int = 0
) -> Dataset:
    """Load data set ``name``: ``n_samples`` points (synthetic only), a seeded stratified split."""
    from sklearn.model_selection import train_test_split

    make = lookup("dataset", name, DATASETS)
    if isinstance(n_samples, bool) or not isinstance(n_samples, int) or n_samples < 8:
        raise ValueError(f"n_samples must be an integer >= 8, got {n_samples!r}")
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction!r}")
    rng = np.random.default_rng(seed)
    X, y = make(n_samples, rng)
    X, y = np.asarray(X, np.float64), np.asarray(y, np.int64)
    X_tr, X_te, y_tr, y_te = train_test_split(
        X, y, test_size=test_fraction, random_state=seed, stratify=y
    )
    mean, std = X_tr.mean(axis=0), X_tr.std(axis=0)
    std[std == 0] = 1.0  # constant features (digits' blank pixels) stay 0
    X_tr, X_te = (X_tr - mean) / std, (X_te - mean) / std
    n_classes = int(y.max()) + 1
    if n_classes == 2:
        y_tr, y_te = y_tr.astype(np.float64).reshape(-1, 1), y_te.astype(np.float64).reshape(-1, 1)
    return Dataset(name, X_tr, y_tr, X_te, y_te, n_classes)
