"""The instruments against exact NumPy references, and the published results they reproduce:
the edge of stability (Cohen et al. 2021), dynamical isometry (Saxe et al. 2014; Pennington,
Schoenholz & Ganguli 2017)."""

import math

import numpy as np
import pytest
import reference as ref
from problems import make_problem
from sklearn.datasets import load_digits

from bpdiag import MLP, train
from bpdiag.instruments import (
    LossSurface,
    jacobian_spectrum,
    power_iteration,
    sharpness,
    top_eigenvalue,
)


def _complex_step_hessian(net, X, Y, activation, residual=False):
    """The exact Hessian of the reference's batch-mean loss: column j is Im ∇L(θ + i h e_j)/h
    (complex-step differentiation: no subtraction, so exact to rounding for any tiny h)."""
    params = net.params
    flat = ref.flatten(params)
    h = 1e-30
    columns = []
    for j in range(flat.size):
        theta = flat.astype(complex)
        theta[j] += 1j * h
        grads = ref.loss_and_grads_net(ref.unflatten(theta, params), X, Y, activation, "mse",
                                       residual=residual, alpha=1.0)[1]  # fmt: skip
        columns.append(ref.flatten(grads).imag / h)
    H = np.array(columns)
    return (H + H.T) / 2


@pytest.mark.parametrize(("activation", "residual", "dtype"),
                         [("tanh", False, "float64"), ("sigmoid", True, "float64"),
                          ("tanh", False, "float32")])  # fmt: skip
def test_sharpness_is_the_exact_hessians_top_eigenvalue(activation, residual, dtype):
    X, Y = make_problem("mse", m=12, n_in=4, n_out=2, seed=3)
    net = MLP([4, 5, 5, 2], activation=activation, loss="mse", seed=1, residual=residual,
              dtype=dtype)  # fmt: skip
    # the sharpness of a float32 net is taken in float64, at its parameters and data as they are
    X, Y = (a.astype(dtype).astype(np.float64) for a in (X, Y))
    H = _complex_step_hessian(net, X, Y, activation, residual)
    exact = np.linalg.eigvalsh(H)
    surface = LossSurface(net, X, Y)
    v = np.random.default_rng(0).normal(size=net.theta.size)
    # the central difference's error: measured ≈ 1e-10 of ‖Hv‖ here
    assert np.linalg.norm(surface.hvp(v) - H @ v) <= 1e-8 * np.linalg.norm(H @ v)
    found = top_eigenvalue(surface, tol=1e-13, max_iter=5000)
    assert found.value == pytest.approx(exact[-1], rel=1e-8)
    assert abs(found.vector @ np.linalg.eigh(H)[1][:, -1]) == pytest.approx(1, abs=1e-5)
    assert np.array_equal(net.theta, MLP([4, 5, 5, 2], activation=activation, loss="mse", seed=1,
                                         residual=residual, dtype=dtype).theta)  # fmt: skip


class _Matrix:
    """A stand-in surface with a known symmetric Hessian."""

    def __init__(self, eigenvalues, seed=0):
        q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(len(eigenvalues),) * 2))
        self.H = q @ np.diag(eigenvalues) @ q.T
        self.theta = np.zeros(len(eigenvalues))

    def hvp(self, v):
        return self.H @ v


def test_the_top_eigenvalue_is_the_largest_not_the_largest_in_magnitude():
    found = top_eigenvalue(_Matrix([-9.0, -3.0, 0.5, 2.0]), tol=1e-14, max_iter=10_000)
    assert found.value == pytest.approx(2.0, rel=1e-9)
    lam, _, _ = power_iteration(_Matrix([-9.0, -3.0, 0.5, 2.0]).hvp, np.ones(4), 1e-14, 10_000)
    assert lam == pytest.approx(-9.0, rel=1e-9)


def test_edge_of_stability_under_full_batch_gradient_descent():
    """Cohen et al. 2021: with step size η the sharpness rises (progressive sharpening) to
    ≈ 2/η and hovers there while the loss goes on falling, not monotonically. A tanh net on 400
    digits, MSE on one-hot targets, η = 1: measured here λ_max/(2/η) from 0.75 at init to 1.07,
    then within ±1 % of 1 over the last third. Tolerances: the start below 0.85, reaching 0.98,
    the last third's median within 3 % of 1 and every value within 10 %."""
    digits = load_digits()
    X = digits.data[:400] / 16.0
    X -= X.mean(axis=0)
    Y = np.eye(10)[digits.target[:400]]
    net = MLP([64, 64, 64, 10], activation="tanh", loss="mse", init="xavier_normal", seed=0)
    hist = train(net, X, Y, optimizer="sgd", lr=1.0, steps=3000, batch_size=None,
                 record_every=10, sharpness_every=5)  # fmt: skip
    sh = hist.sharpness
    assert list(sh["step"]) == list(range(0, 3000, 50))
    assert (sh["two_over_lr"] == 2.0).all()
    ratio = sh["eos_ratio"].to_numpy()
    assert ratio[0] < 0.85 and ratio.max() >= 0.98
    late = ratio[len(ratio) * 2 // 3 :]
    assert abs(np.median(late) - 1) < 0.03 and np.all(np.abs(late - 1) < 0.1)
    loss = hist.steps.set_index("step")["loss"]
    onset = int(sh["step"][np.argmax(ratio >= 0.98)])
    after = loss[loss.index >= onset].to_numpy()
    assert after[-1] < 0.7 * after[0]  # the loss keeps falling …
    assert np.any(np.diff(after) > 0)  # … but not monotonically


def test_sharpness_of_a_minibatch_run_uses_fixed_rows_and_costs_products():
    X, Y = make_problem("ce", m=40, n_in=5, n_out=3)
    net = MLP([5, 8, 8, 3], loss="ce", activation="tanh", seed=0)
    start = MLP([5, 8, 8, 3], loss="ce", activation="tanh", seed=0)
    hist = train(net, X, Y, steps=30, batch_size=8, record_every=5, sharpness_every=2)
    assert list(hist.sharpness["step"]) == [0, 10, 20]
    assert hist.sharpness["sharpness"].iloc[0] == pytest.approx(sharpness(start, X, Y), rel=1e-3)
    assert (hist.sharpness["products"] >= 1).all() and (hist.sharpness["seconds"] > 0).all()
    assert train(MLP([5, 8, 8, 3], loss="ce"), X, Y, steps=3).sharpness.empty
    with pytest.raises(ValueError, match="sharpness_every"):
        train(net, X, Y, steps=3, sharpness_every=-1)


# ---------------------------------------------------------------- the Jacobian


def _numeric_jacobian(params, x, activation, norm, residual, alpha):
    """∂z_L/∂x of the reference's forward pass by central differences (float64)."""
    h = 1e-6
    cols = []
    for j in range(x.size):
        e = np.zeros_like(x)
        e[j] = h
        up = ref.forward_net(params, (x + e)[None, :], activation, norm, residual, alpha)[0][-1]
        down = ref.forward_net(params, (x - e)[None, :], activation, norm, residual, alpha)[0][-1]
        cols.append((up - down)[:, 0] / (2 * h))
    return np.array(cols).T


@pytest.mark.parametrize(("activation", "norm", "residual"),
                         [("tanh", "none", False), ("gelu", "layernorm", True),
                          ("elu", "none", True)])  # fmt: skip
def test_the_jacobian_spectrum_is_that_of_the_reference_jacobian(activation, norm, residual):
    X, _ = make_problem("mse", m=3, n_in=6, n_out=4, seed=2)
    net = MLP([6, 7, 7, 7, 4], activation=activation, loss="mse", seed=3, norm=norm,
              residual=residual, residual_scale=0.7)  # fmt: skip
    params = [tuple(p + 0.1 * (i > 1) for i, p in enumerate(g)) for g in net.params]
    net.set_params(params)  # γ ≠ 1, β ≠ 0 for LayerNorm
    js = jacobian_spectrum(net, X, inputs=2)
    assert js.singular_values.shape == (2, 4) and (js.start, js.end) == (0, 4)
    for i in range(2):
        J = _numeric_jacobian(net.params, X[i], activation, norm, residual, 0.7)
        s = np.linalg.svd(J, compute_uv=False)
        assert js.singular_values[i] == pytest.approx(s, rel=1e-7, abs=1e-9)
    expected_gain = np.mean([np.sum(_numeric_jacobian(net.params, X[i], activation, norm,
                                                      residual, 0.7) ** 2) / 6 for i in range(2)])  # fmt: skip
    assert js.gain == pytest.approx(expected_gain, rel=1e-7)
    hidden = jacobian_spectrum(net, X, inputs=1, layers="hidden")
    assert (hidden.start, hidden.end) == (1, 3) and hidden.singular_values.shape == (1, 7)


def _product_jacobian(params, x, activation, residual, alpha, start=0, end=None):
    """∂a_end/∂a_start (a_L = z_L) by the chain rule in plain NumPy: Π_l (D_l W_l), D_l =
    diag φ'(z_l) (none for the output layer), a skip adding the identity: (I + α D_l W_l)."""
    L = len(params)
    end = L if end is None else end
    _, cache = ref.forward_net(params, x[None, :], activation, "none", residual, alpha)
    J = np.eye(params[start][0].shape[1])
    for l in range(start + 1, end + 1):
        WJ = params[l - 1][0] @ J
        if l == L:
            return WJ
        branch = ref.dphi(activation, cache[l - 1]["u"][:, 0])[:, None] * WJ
        J = J + alpha * branch if cache[l - 1]["skip"] else branch
    return J


@pytest.mark.parametrize(("activation", "residual"), [("tanh", False), ("selu", True),
                                                      ("sigmoid", False)])  # fmt: skip
def test_the_jacobian_equals_the_chain_rule_product(activation, residual):
    X, _ = make_problem("mse", m=2, n_in=6, n_out=4, seed=5)
    net = MLP([6, 8, 8, 8, 8, 4], activation=activation, loss="mse", seed=1, residual=residual,
              residual_scale=0.5)  # fmt: skip
    js = jacobian_spectrum(net, X, inputs=2)
    for i in range(2):
        J = _product_jacobian(net.params, X[i], activation, residual, 0.5)
        s = np.linalg.svd(J, compute_uv=False)
        assert js.singular_values[i] == pytest.approx(s, rel=1e-12, abs=1e-14)
    hidden = jacobian_spectrum(net, X, inputs=1, layers=(2, 4))
    J = _product_jacobian(net.params, X[0], activation, residual, 0.5, 2, 4)
    assert hidden.singular_values[0] == pytest.approx(np.linalg.svd(J, compute_uv=False),
                                                      rel=1e-12, abs=1e-14)  # fmt: skip


def test_saxe_a_deep_linear_net_with_orthogonal_weights_is_an_isometry():
    """Saxe, McClelland & Ganguli 2014: every singular value of J is exactly 1."""
    X = np.random.default_rng(0).normal(size=(3, 48))
    net = MLP([48] * 31, activation="linear", loss="mse", init="orthogonal", seed=1)
    js = jacobian_spectrum(net, X, inputs=3)
    assert np.abs(js.singular_values - 1).max() < 1e-12
    assert js.gain == pytest.approx(1, abs=1e-12) and js.gain_theory == pytest.approx(1)
    assert js.condition == pytest.approx(1, abs=1e-12)


def _spread(activation, init, depth, width=128, seeds=3):
    X = np.random.default_rng(5).normal(size=(4, width))
    spectra = [jacobian_spectrum(MLP([width] * (depth + 1), activation=activation, loss="mse",
                                     init=init, seed=s), X) for s in range(seeds)]  # fmt: skip
    return np.mean([s.spread for s in spectra]), spectra


def test_pennington_orthogonal_tanh_at_the_edge_of_chaos_stays_well_conditioned():
    """Pennington, Schoenholz & Ganguli 2017: tanh at χ = 1 (σ_w² = 1, zero biases) with
    orthogonal weights keeps the spread of J's squared singular values O(1) as depth grows;
    Gaussian weights do not, nor can ReLU with either. Measured here (width 128, 3 seeds) at
    depths 8 and 48: orthogonal tanh 1.07 → 1.28; Gaussian tanh 10 → 46; ReLU orthogonal
    (gain √2) 7 → 41, He normal 16 → 76. Tolerances: orthogonal tanh below 2 at depth 48 and
    grown less than 1.5×; the others grown more than 3× and 10× above orthogonal tanh."""
    orth_8, _ = _spread("tanh", "orthogonal", 8)
    orth_48, spectra = _spread("tanh", "orthogonal", 48)
    assert orth_48 < 2 and orth_48 / orth_8 < 1.5
    for activation, init in (("tanh", "xavier_normal"), ("relu", f"orthogonal_{math.sqrt(2)}"),
                             ("relu", "he_normal")):  # fmt: skip
        shallow, _ = _spread(activation, init, 8)
        deep, _ = _spread(activation, init, 48)
        assert deep / shallow > 3 and deep > 10 * orth_48, (activation, init, shallow, deep)
    # the mean squared singular value is χ^(L) of mean-field theory (within 15 %)
    for js in spectra:
        assert abs(math.log(js.gain / js.gain_theory)) < 0.15


def test_jacobian_at_init_in_train_and_its_errors():
    X, Y = make_problem("bce", m=16, n_in=5, n_out=1)
    net = MLP([5, 9, 9, 9, 1], activation="tanh", seed=0)
    at_init = jacobian_spectrum(net, X, 3, layers="hidden")
    hist = train(net, X, Y, steps=5, jacobian_inputs=3)
    assert np.array_equal(hist.jacobian.singular_values, at_init.singular_values)
    assert train(net, X, Y, steps=1).jacobian is None
    with pytest.raises(ValueError, match="BatchNorm"):
        train(MLP([5, 9, 9, 1], norm="batchnorm"), X, Y, steps=1, jacobian_inputs=2)
    with pytest.raises(ValueError, match="layers"):
        jacobian_spectrum(net, X, layers=(3, 2))
    with pytest.raises(ValueError, match="inputs"):
        jacobian_spectrum(net, X, inputs=0)
