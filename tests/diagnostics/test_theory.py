"""Mean-field theory against REFERENCE.md's published numbers and against measurement."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bpdiag import MLP, train
from bpdiag.diagnostics.theory import gaussian_expectation, predict, second_moments

N, L = 256, 20


def test_closed_forms():
    assert second_moments("relu", 3.0) == pytest.approx((1.5, 0.5), rel=1e-12)
    assert second_moments("linear", 2.5) == pytest.approx((2.5, 1.0), rel=1e-12)
    leaky = second_moments("leaky_relu", 1.0)
    assert leaky == pytest.approx((0.5 * (1 + 1e-4), 0.5 * (1 + 1e-4)), rel=1e-12)
    assert gaussian_expectation(lambda u: u**4, 2.0) == pytest.approx(3 * 4.0, rel=1e-12)
    # tanh'(√q z)² for huge q is a spike of width 1/√q: E ≈ ∫sech⁴ · pdf(0)/√q = (4/3)/√(2πq)
    assert second_moments("tanh", 1e12)[1] == pytest.approx(
        4 / 3 / math.sqrt(2 * math.pi * 1e12), rel=1e-6
    )


@pytest.mark.parametrize(
    ("activation", "init", "delta_ratio", "w_ratio"),
    [
        ("relu", "he_normal", 1.0, 1.0),
        ("relu", "xavier_normal", 2 ** (-19 / 2), 1.0),
        ("tanh", "xavier_normal", 0.195, 1.2),
        ("sigmoid", "xavier_normal", 1.09e-12, 2.1e-12),
    ],
)
def test_reference_table(activation, init, delta_ratio, w_ratio):
    p = predict([N] * (L + 1), activation, init)
    assert p.delta_ratio[0] == pytest.approx(delta_ratio, rel=0.01)
    assert p.grad_W_ratio[0] == pytest.approx(w_ratio, rel=0.05)


def test_glorot_bengio_2010_five_tanh_layers():
    """δ ratio first/last hidden layer: 0.083 standard init, 0.41 normalized; dW 1.03 and 1.15."""
    standard = predict([1000] * 7, "tanh", f"uniform_{1 / math.sqrt(1000)}")
    xavier = predict([1000] * 7, "tanh", "xavier_uniform")
    assert standard.delta_ratio[0] / standard.delta_ratio[4] == pytest.approx(0.083, abs=0.002)
    assert xavier.delta_ratio[0] / xavier.delta_ratio[4] == pytest.approx(0.41, abs=0.01)
    assert standard.grad_W_ratio[0] / standard.grad_W_ratio[4] == pytest.approx(1.03, abs=0.01)
    assert xavier.grad_W_ratio[0] / xavier.grad_W_ratio[4] == pytest.approx(1.15, abs=0.01)


def test_phases_and_depth_scale():
    assert predict([N] * 11, "relu", "he_normal").chi1 == pytest.approx(1.0, abs=1e-12)
    assert predict([N] * 11, "relu", "he_normal").depth_scale == math.inf
    ordered = predict([N] * 11, "tanh", f"normal_{math.sqrt(0.5 / N)}")
    chaotic = predict([N] * 11, "tanh", f"normal_{math.sqrt(4 / N)}")
    assert ordered.chi1 < 1 < chaotic.chi1
    # ordered tanh: q* = 0, so χ₁ = σ_w² tanh'(0)² = 0.5 and ξ = 1/ln 2
    assert ordered.chi1 == pytest.approx(0.5, rel=1e-9)
    assert ordered.depth_scale == pytest.approx(1 / math.log(2), rel=1e-9)
    # no χ₁ (BatchNorm across skips): no depth scale either, rather than a made-up 0
    bn_skip = predict([N] * 11, "relu", "he_normal", norm="batchnorm", skips=[False] + [True] * 8
                      + [False], batch=32)  # fmt: skip
    assert math.isnan(bn_skip.chi1) and math.isnan(bn_skip.depth_scale)


def test_chaotic_fixed_point_against_gauss_hermite():
    """χ₁ of tanh at σ_w² = 4 from an independent computation: 200-node Gauss–Hermite for the
    expectations, plain fixed-point iteration for q* = σ_w² E[tanh(√q z)²]."""
    x, w = np.polynomial.hermite_e.hermegauss(200)
    w = w / w.sum()
    q = 1.0
    for _ in range(2000):
        q = 4.0 * np.sum(w * np.tanh(np.sqrt(q) * x) ** 2)
    chi = 4.0 * np.sum(w * (1 - np.tanh(np.sqrt(q) * x) ** 2) ** 2)
    assert predict([N] * 11, "tanh", f"normal_{math.sqrt(4 / N)}").chi1 == pytest.approx(
        chi, rel=1e-8
    )


@pytest.mark.parametrize("scale", [0.25, 0.05])
def test_relu_chi_is_half_the_weight_variance_whatever_q_does(scale):
    """ReLU is positively homogeneous: q grows (or shrinks) geometrically for ever, χ = σ_w²/2."""
    assert predict([64] * 11, "relu", f"normal_{scale}").chi1 == pytest.approx(
        64 * scale**2 / 2, rel=1e-12
    )


def measure_delta_ratio(activation, init, seed, depth=L, width=N):
    """REFERENCE.md's setup: square layers, linear output, zero biases, x ~ N(0, I), batch 256,
    dL/df iid Gaussian (mse with targets f(x) − g, so δ_L ∝ g)."""
    net = MLP([width] * (depth + 1), activation=activation, loss="mse", init=init, seed=seed)
    rng = np.random.default_rng(1000 + seed)
    X = rng.normal(size=(256, width))
    Y = net.forward(X) - rng.normal(size=(256, width))
    hist = train(net, X, Y, optimizer="sgd", lr=1e-12, steps=1, batch_size=None)
    delta = hist.layers.query("step == 0")["delta_rms"].to_numpy()
    return delta[0] / delta[-1], hist


@pytest.mark.parametrize(
    ("activation", "init"),
    [
        ("relu", "he_normal"),
        ("relu", "xavier_normal"),
        ("tanh", "xavier_normal"),
        ("sigmoid", "xavier_normal"),
    ],  # fmt: skip
)
def test_measured_profile_agrees_with_theory(activation, init):
    measured, hist = measure_delta_ratio(activation, init, seed=0)
    theory = predict([N] * (L + 1), activation, init).delta_ratio[0]
    tol = 1.5 * math.sqrt(5 * (L - 1) / N) if activation == "relu" else 0.4
    assert abs(math.log(measured / theory)) <= tol
    assert hist.summary["grad_ratio_first_last_theory"] == pytest.approx(
        theory, rel=0.02
    )  # q_0 of X


def test_selu_self_normalizes():
    net = MLP([256] * 21, activation="selu", loss="mse", init="lecun_normal", seed=0)
    X = np.random.default_rng(0).normal(2.0, 3.0, size=(256, 256))  # start away from (0, 1)
    hist = train(net, X, np.zeros((256, 256)), optimizer="sgd", lr=1e-12, steps=1, batch_size=None)
    deep = hist.layers.query("step == 0 and 15 <= layer < 20")
    assert np.all(np.abs(deep["act_mean"]) < 0.1)
    assert np.all(np.abs(deep["act_std"] - 1) < 0.1)


# ---------------------------------------------------------------- exact identities


def _linear_loss_targets(net, X, r):
    """mse targets that make dL/df = r exactly: y = f(x) − r·m·k/2."""
    m, k = r.shape
    return net.forward(X) - r * m * k / 2


@settings(max_examples=25, deadline=None)
@given(act=st.sampled_from(["relu", "leaky_relu", "linear"]), depth=st.integers(2, 6),
       width=st.integers(1, 9), seed=st.integers(0, 10_000))  # fmt: skip
def test_euler_identity(act, depth, width, seed):
    """Zero biases, positively homogeneous φ: ⟨W_l, ∂L/∂W_l⟩ = ⟨∂L/∂f, f⟩ for every layer l."""
    net = MLP([3] + [width] * (depth - 1) + [2], activation=act, loss="mse", seed=seed)
    X = np.random.default_rng(seed).normal(size=(5, 3))
    Y = np.random.default_rng(seed + 1).normal(size=(5, 2))
    _, grads = net.loss_and_grads(X, Y)
    inner = [float(np.sum(W * dW)) for (W, _), (dW, _) in zip(net.params, grads, strict=True)]
    f = net.forward(X)
    expected = float(np.sum(2 * (f - Y) / Y.size * f))
    assert np.allclose(inner, expected, rtol=1e-10, atol=1e-12 * max(1.0, abs(expected)))


@settings(max_examples=25, deadline=None)
@given(act=st.sampled_from(["relu", "leaky_relu", "linear"]), depth=st.integers(2, 6),
       c=st.floats(0.3, 3.0), seed=st.integers(0, 10_000))  # fmt: skip
def test_weight_scaling_identity(act, depth, c, seed):
    """Scaling every W by c (zero biases, dL/df fixed) scales every ∂L/∂W_l by c^(L−1), to
    rounding relative to the matrix's size: an entry that is a near-cancelling sum (0.008 in
    a matrix of entries up to 4300, seed 1604) has rounding far above its own 1e-9."""
    rng = np.random.default_rng(seed)
    X, r = rng.normal(size=(6, 4)), rng.normal(size=(6, 2))
    base = MLP([4] + [7] * (depth - 1) + [2], activation=act, loss="mse", seed=seed)
    scaled = MLP([4] + [7] * (depth - 1) + [2], activation=act, loss="mse", seed=seed)
    scaled.set_params([(W * c, b) for W, b in base.params])
    _, g1 = base.loss_and_grads(X, _linear_loss_targets(base, X, r))
    _, gc = scaled.loss_and_grads(X, _linear_loss_targets(scaled, X, r))
    for (dW1, _), (dWc, _) in zip(g1, gc, strict=True):
        want = c ** (depth - 1) * dW1
        assert np.allclose(dWc, want, rtol=1e-9, atol=1e-12 * np.abs(want).max())


@settings(max_examples=15, deadline=None)
@given(depth=st.integers(2, 8), width=st.integers(2, 16), seed=st.integers(0, 10_000))
def test_orthogonal_linear_net_preserves_delta_norms(depth, width, seed):
    net = MLP([width] * (depth + 1), activation="linear", loss="mse", init="orthogonal", seed=seed)
    X = np.random.default_rng(seed).normal(size=(8, width))
    hist = train(net, X, np.zeros((8, width)), optimizer="sgd", lr=1e-12, steps=1, batch_size=None)
    delta = hist.layers["delta_rms"].to_numpy()
    assert np.allclose(delta, delta[-1], rtol=1e-12)


def test_he_versus_xavier_with_the_same_seed():
    """He et al. 2015: 30 square ReLU layers; Xavier's weight gradients are exactly 2^(−(L−1)/2)
    times He's and SGD's relative updates 2^(−(L−2)/2) times smaller."""
    depth, width = 30, 64
    X = np.random.default_rng(0).normal(size=(32, width))
    r = np.random.default_rng(1).normal(size=(32, width))
    layers = {}
    for init in ("he_normal", "xavier_normal"):
        net = MLP([width] * (depth + 1), activation="relu", loss="mse", init=init, seed=7)
        hist = train(net, X, _linear_loss_targets(net, X, r), optimizer="sgd", lr=1e-3, steps=1,
                     batch_size=None)  # fmt: skip
        layers[init] = hist.layers
    ratio_W = layers["xavier_normal"]["grad_norm_W"] / layers["he_normal"]["grad_norm_W"]
    ratio_u = layers["xavier_normal"]["update_ratio"] / layers["he_normal"]["update_ratio"]
    assert np.allclose(ratio_W, 2 ** (-(depth - 1) / 2), rtol=1e-10)
    assert np.allclose(ratio_u, 2 ** (-(depth - 2) / 2), rtol=1e-10)


# ---------------------------------------------------------------- normalization and skips


def test_batchnorm_rate_is_the_papers():
    """Yang et al. 2019, Thm 3.10 (finite batch: the submission's eq. 25): ReLU's rate at
    B = 4, 8, 32, 64 and its limit π/(π − 1); linear (B − 2)/(B − 3); no closed form for tanh."""
    from bpdiag.diagnostics.theory import batchnorm_gradient_rate as rate

    assert [round(rate("relu", B), 3) for B in (4, 8, 32, 64)] == [3.084, 1.788, 1.522, 1.493]
    assert rate("relu", math.inf) == pytest.approx(math.pi / (math.pi - 1), rel=1e-15)
    assert rate("relu", 10**9) == pytest.approx(math.pi / (math.pi - 1), rel=1e-6)
    assert rate("linear", 8) == pytest.approx(6 / 5) and rate("linear", math.inf) == 1
    assert math.isnan(rate("tanh", 64)) and math.isnan(rate("relu", 3))


def measure_cured(activation, init, norm, residual, alpha, seed, depth=30, width=N, batch=64):
    """REFERENCE.md's setup (square layers, linear output, zero biases, x ~ N(0, I), dL/df iid
    Gaussian) with normalization and skips: the δ profile at init, and the History."""
    import reference as ref

    net = MLP([width] * (depth + 1), activation=activation, loss="mse", init=init, seed=seed,
              norm=norm, residual=residual, residual_scale=alpha)  # fmt: skip
    rng = np.random.default_rng(1000 + seed)
    X = rng.normal(size=(batch, width))
    A, _ = ref.forward_net(net.params, X, activation, norm, residual, net.layout.alpha)
    Y = A[-1].T - rng.normal(size=(batch, width))  # training mode's f(x) − g: δ_L ∝ g
    hist = train(net, X, Y, optimizer="sgd", lr=1e-12, steps=1, batch_size=None)
    return hist.layers.query("step == 0")["delta_rms"].to_numpy(), hist


def _inner_rate(delta, lo=5, hi=25):
    """exp(−slope) of log δ_l over layers lo..hi−1: the per-layer factor toward the input."""
    return math.exp(-np.polyfit(np.arange(lo, hi), np.log(delta[lo:hi]), 1)[0])


@pytest.mark.parametrize(("activation", "init", "batch", "tol"),
                         [("relu", "he_normal", 64, 0.01), ("relu", "xavier_normal", 8, 0.03),
                          ("linear", "lecun_normal", 8, 0.02)])  # fmt: skip
def test_batchnorm_gradients_explode_at_the_papers_rate(activation, init, batch, tol):
    """Without skips RMS‖δ_l‖ grows by √λ_G per layer toward the input, whatever the init
    (measured over layers 5–24 of 30, width 256, the mean of 3 seeds)."""
    from bpdiag.diagnostics.theory import batchnorm_gradient_rate

    rates = [_inner_rate(measure_cured(activation, init, "batchnorm", False, 1.0, seed,
                                       batch=batch)[0]) for seed in range(3)]  # fmt: skip
    expected = math.sqrt(batchnorm_gradient_rate(activation, batch))
    assert np.mean(rates) == pytest.approx(expected, rel=tol)
    hist = measure_cured(activation, init, "batchnorm", False, 1.0, 0, batch=batch)[1]
    assert math.sqrt(hist.theory.chi1) == pytest.approx(expected, rel=1e-12)


def test_a_skip_connection_removes_the_batchnorm_explosion():
    plain = measure_cured("relu", "he_normal", "batchnorm", False, 1.0, 0)[0]
    skip = measure_cured("relu", "he_normal", "batchnorm", True, 1 / math.sqrt(30), 0)[0]
    assert plain[0] / plain[-1] > 100 and skip[0] / skip[-1] < 3


@pytest.mark.parametrize(("activation", "init", "norm", "residual", "alpha"), [
    ("tanh", "xavier_normal", "layernorm", False, 1.0),
    ("relu", "he_normal", "layernorm", False, 1.0),
    ("tanh", "xavier_normal", "none", True, 1.0),
    ("relu", "he_normal", "none", True, 1 / math.sqrt(30)),
    ("sigmoid", "xavier_normal", "layernorm", True, 0.5),
])  # fmt: skip
def test_layernorm_and_residual_profiles_agree_with_theory(activation, init, norm, residual,
                                                           alpha):  # fmt: skip
    """The predicted δ_1/δ_L at init within REFERENCE's tolerances (ReLU: the finite-width
    spread), and the per-layer factor between the edges within 1.5 %."""
    delta, hist = measure_cured(activation, init, norm, residual, alpha, 0)
    pred = hist.theory
    tol = 1.5 * math.sqrt(5 * 29 / N) if activation == "relu" else 0.4
    assert abs(math.log(delta[0] / delta[-1] / pred.delta_ratio[0])) <= tol
    assert _inner_rate(delta) == pytest.approx(math.exp(0.5 * np.mean(np.log(pred.chi[4:24]))),
                                               rel=0.015)  # fmt: skip
