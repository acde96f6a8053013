"""Data sets: shapes, targets, standardization, seeded splits."""

import numpy as np
import pytest

from bpdiag import data


@pytest.mark.parametrize("name", list(data.DATASETS))
def test_shapes_targets_and_standardization(name):
    ds = data.load(name, n_samples=400, seed=1)
    assert ds.X_train.shape[1] == ds.X_test.shape[1] == ds.n_features
    assert len(ds.X_train) == len(ds.Y_train) and len(ds.X_test) == len(ds.Y_test)
    assert np.allclose(ds.X_train.mean(axis=0), 0, atol=1e-12)
    std = ds.X_train.std(axis=0)
    assert np.allclose(std[std > 0], 1)
    if ds.n_classes == 2:
        assert ds.loss == "bce" and ds.Y_train.shape == (len(ds.X_train), 1)
        assert set(np.unique(ds.Y_train)) == {0.0, 1.0}
    else:
        assert ds.loss == "ce" and ds.Y_train.ndim == 1
        assert set(np.unique(ds.Y_train)) == set(range(ds.n_classes))


@pytest.mark.parametrize("name", ["spirals", "xor", "circles", "blobs"])
def test_synthetic_sets_are_seeded(name):
    a, b, c = data.load(name, seed=3), data.load(name, seed=3), data.load(name, seed=4)
    assert np.array_equal(a.X_train, b.X_train) and np.array_equal(a.Y_test, b.Y_test)
    assert not np.array_equal(a.X_train, c.X_train)


def test_real_sets_have_their_known_sizes():
    assert sum(len(s) for s in (data.load("digits").X_train, data.load("digits").X_test)) == 1797
    bc = data.load("breast_cancer")
    assert len(bc.X_train) + len(bc.X_test) == 569 and bc.n_features == 30


@pytest.mark.parametrize("kwargs", [{"name": "mnist"}, {"name": "spirals", "n_samples": 2},
                                    {"name": "spirals", "test_fraction": 1.0}])  # fmt: skip
def test_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        data.load(**kwargs)
