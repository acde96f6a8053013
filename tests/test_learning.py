"""It learns: real and synthetic data sets reach the accuracies the core must deliver."""

import pytest

from bpdiag import MLP, data, train


def _fit(name, steps, lr, seed=0):
    ds = data.load(name, seed=seed)
    net = MLP([ds.n_features, 64, 64, 64, ds.n_outputs], activation="relu", loss=ds.loss,
              init="he_normal", seed=seed)  # fmt: skip
    hist = train(net, ds.X_train, ds.Y_train, optimizer="adam", lr=lr, steps=steps, batch_size=64,
                 seed=seed)  # fmt: skip
    return net, ds, hist


def test_spirals_train_accuracy_at_least_99_percent():
    net, ds, hist = _fit("spirals", 3000, 1e-2)
    assert net.evaluate(ds.X_train, ds.Y_train)[1] >= 0.99
    assert hist.steps["loss"].iloc[-1] < hist.steps["loss"].iloc[0]


@pytest.mark.parametrize("name", ["digits", "breast_cancer"])
def test_real_data_test_accuracy_at_least_95_percent(name):
    net, ds, _ = _fit(name, 1500, 1e-3)
    assert net.evaluate(ds.X_test, ds.Y_test)[1] >= 0.95
