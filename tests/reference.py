"""Slow, obviously-correct references: the seed's equations verbatim (batch in columns, as in the
seed's pseudocode), PyTorch's documented optimizer pseudocode, and the clipping definitions.

Every fast kernel in bpdiag is compared with these. Nothing here imports bpdiag's kernels.
"""

from __future__ import annotations

import numpy as np
from scipy.special import erf

LAMBDA, ALPHA = 1.0507009873554804934193349852946, 1.6732632423543772848170429916717


def phi(name: str, z: np.ndarray) -> np.ndarray:
    if name == "sigmoid":
        return 1.0 / (1.0 + np.exp(-z))
    if name == "tanh":
        return np.tanh(z)
    if name == "relu":
        return np.maximum(z, 0.0)
    if name == "leaky_relu":
        return np.where(z > 0, z, 0.01 * z)
    if name == "elu":
        return np.where(z > 0, z, np.expm1(z))
    if name == "selu":
        return LAMBDA * np.where(z > 0, z, ALPHA * np.expm1(z))
    if name == "gelu":
        return z * 0.5 * (1.0 + erf(z / np.sqrt(2.0)))
    assert name == "linear", name
    return z


def dphi(name: str, z: np.ndarray) -> np.ndarray:
    """φ'(z) from z (the seed's derivative table; ReLU'(0) = 0)."""
    if name == "sigmoid":
        s = phi("sigmoid", z)
        return s * (1 - s)
    if name == "tanh":
        return 1 - np.tanh(z) ** 2
    if name == "relu":
        return (z > 0).astype(z.dtype)
    if name == "leaky_relu":
        return np.where(z > 0, 1.0, 0.01)
    if name == "elu":
        return np.where(z > 0, 1.0, np.exp(z))
    if name == "selu":
        return LAMBDA * np.where(z > 0, 1.0, ALPHA * np.exp(z))
    if name == "gelu":
        return 0.5 * (1.0 + erf(z / np.sqrt(2.0))) + z * np.exp(-0.5 * z * z) / np.sqrt(2 * np.pi)
    return np.ones_like(z)


def loss_and_grads(params, X, Y, activation, loss, output_activation="linear"):
    """Loss and [(dW, db)] by the seed's algorithm. X (m, n_in); Y as bpdiag takes it."""
    L, m = len(params), X.shape[0]
    A, Z = [X.T], [None]
    for l, (W, b) in enumerate(params, start=1):
        Z.append(W @ A[l - 1] + b[:, None])
        A.append(phi(activation, Z[l]) if l < L else Z[l])
    zL = Z[L]  # (k, m)
    k = zL.shape[0]
    if loss == "bce":
        y_hat = 1.0 / (1.0 + np.exp(-zL))
        y = Y.reshape(m, k).T
        # −[y log ŷ + (1 − y) log(1 − ŷ)] with log σ(z) = −log(1 + e^{−z}), safe for large |z|
        value = np.mean(y * np.logaddexp(0, -zL) + (1 - y) * np.logaddexp(0, zL))
        delta = (y_hat - y) / k  # per-sample output error: δ = ŷ − y (averaged over k outputs)
    elif loss == "ce":
        p = np.exp(zL - zL.max(axis=0))
        p /= p.sum(axis=0)
        onehot = np.zeros_like(p)
        onehot[np.asarray(Y, int), np.arange(m)] = 1.0
        value = np.mean(-np.log(p[np.asarray(Y, int), np.arange(m)]))
        delta = p - onehot
    else:
        y_hat = phi(output_activation, zL)
        y = Y.reshape(m, k).T
        value = np.mean((y_hat - y) ** 2)
        delta = 2 * (y_hat - y) / k * dphi(output_activation, zL)
    grads = [None] * L
    for l in range(L, 0, -1):
        W = params[l - 1][0]
        dW = (1 / m) * delta @ A[l - 1].T
        db = (1 / m) * np.sum(delta, axis=1)
        grads[l - 1] = (dW, db)
        if l > 1:
            delta = (W.T @ delta) * dphi(activation, Z[l - 1])
    return value, grads


def logits(params, X, activation):
    """z_L (k, m) by the seed's forward pass (batch in columns)."""
    a = X.T
    for l, (W, b) in enumerate(params, start=1):
        z = W @ a + b[:, None]
        a = phi(activation, z) if l < len(params) else z
    return a


# ---------------------------------------------------------------- normalization and skips

EPS = 1e-5  # torch.nn.BatchNorm1d's and LayerNorm's


def has_skip(params, l, residual):
    """Layer l (1-based) adds its input: residual, hidden, not the first, square W."""
    W = params[l - 1][0]
    return residual and 2 <= l < len(params) and W.shape[0] == W.shape[1]


def forward_net(params, X, activation, norm="none", residual=False, alpha=1.0, running=None,
                output_activation="linear"):  # fmt: skip
    """The forward pass of a net with normalization and skips (batch in columns), and what
    backward needs per layer. ``running``: BatchNorm's [(mean, var)] per hidden layer for
    evaluation mode; None: training mode (the batch's statistics)."""
    L, a = len(params), X.T
    A, cache = [a], []
    for l, p in enumerate(params, start=1):
        W, b = p[0], p[1]
        z = W @ a + b[:, None]
        if l == L:
            cache.append({"z": z})
            A.append(z)
            break
        c = {"z": z, "skip": has_skip(params, l, residual)}
        if len(p) == 4:  # z → ẑ = (z − μ)/√(σ² + ε) → u = γ ẑ + β
            gamma, beta = p[2], p[3]
            if norm == "batchnorm":
                if running is None:
                    mu, var = z.mean(axis=1, keepdims=True), z.var(axis=1, keepdims=True)
                else:
                    mu, var = running[l - 1][0][:, None], running[l - 1][1][:, None]
            else:
                mu, var = z.mean(axis=0, keepdims=True), z.var(axis=0, keepdims=True)
            c.update(zhat=(z - mu) / np.sqrt(var + EPS), istd=1 / np.sqrt(var + EPS), mu=mu,
                     var=var, gamma=gamma)  # fmt: skip
            u = gamma[:, None] * c["zhat"] + beta[:, None]
        else:
            u = z
        h = phi(activation, u)
        c.update(u=u, h=h)
        a = a + alpha * h if c["skip"] else h
        cache.append(c)
        A.append(a)
    return A, cache


def loss_grad(zL, Y, loss, output_activation="linear"):
    """(batch-mean loss, ∂L/∂z_L) of the output logits zL (k, m)."""
    k, m = zL.shape
    if loss == "bce":
        y = Y.reshape(m, k).T
        value = np.mean(y * np.logaddexp(0, -zL) + (1 - y) * np.logaddexp(0, zL))
        return value, (1 / (1 + np.exp(-zL)) - y) / (m * k)
    if loss == "ce":
        p = np.exp(zL - zL.max(axis=0))
        p /= p.sum(axis=0)
        labels = np.asarray(Y, int).ravel()
        value = np.mean(-np.log(p[labels, np.arange(m)]))
        p[labels, np.arange(m)] -= 1
        return value, p / m
    y_hat, y = phi(output_activation, zL), Y.reshape(m, k).T
    return np.mean((y_hat - y) ** 2), 2 * (y_hat - y) / (m * k) * dphi(output_activation, zL)


def loss_and_grads_net(params, X, Y, activation, loss, norm="none", residual=False, alpha=1.0,
                       output_activation="linear"):  # fmt: skip
    """Loss, gradients like params, and per layer (∂L/∂z_l, ∂L/∂u_l), in training mode:
    ∂L/∂u = ∂L/∂h ⊙ φ'(u); ∂L/∂γ = Σ ∂L/∂u ⊙ ẑ, ∂L/∂β = Σ ∂L/∂u; ∂L/∂z = (γ/√(σ² + ε))(g −
    mean(g) − ẑ mean(g ⊙ ẑ)) with g = ∂L/∂u, the means over the batch (BatchNorm) or the
    units (LayerNorm); ∂L/∂a_{l−1} = W_lᵀ ∂L/∂z_l, plus ∂L/∂a_l where layer l has a skip."""
    A, cache = forward_net(params, X, activation, norm, residual, alpha, None, output_activation)
    L = len(params)
    value, dz = loss_grad(A[-1], Y, loss, output_activation)
    grads, deltas = [None] * L, [None] * L
    da = None
    for l in range(L, 0, -1):
        c, W = cache[l - 1], params[l - 1][0]
        du = None
        if l < L:
            dh = alpha * da if c["skip"] else da
            du = dh * dphi(activation, c["u"])
            if "zhat" in c:
                zh, g = c["zhat"], du
                axis = 1 if norm == "batchnorm" else 0
                dz = (
                    (c["gamma"][:, None] * c["istd"])
                    * (
                        g
                        - g.mean(axis=axis, keepdims=True)
                        - zh * (g * zh).mean(axis=axis, keepdims=True)
                    )
                    if norm == "batchnorm"
                    else c["istd"]
                    * (
                        c["gamma"][:, None] * g
                        - (c["gamma"][:, None] * g).mean(axis=0, keepdims=True)
                        - zh * (c["gamma"][:, None] * g * zh).mean(axis=0, keepdims=True)
                    )
                )
            else:
                dz = du
        dW, db = dz @ A[l - 1].T, dz.sum(axis=1)
        if du is not None and "zhat" in c:
            grads[l - 1] = (dW, db, (du * c["zhat"]).sum(axis=1), du.sum(axis=1))
        else:
            grads[l - 1] = (dW, db)
        deltas[l - 1] = (dz, du)
        da_below = W.T @ dz
        if l < L and c["skip"]:
            da_below = da_below + da
        da = da_below
    return value, grads, deltas


# ---------------------------------------------------------------- clipping


def clip(mode, c, params, grads):
    """Return clipped copies of grads (lists of (dW, db))."""
    grads = [tuple(g.copy() for g in group) for group in grads]
    if mode == "none":
        return grads
    if mode == "value":
        return [tuple(np.clip(g, -c, c) for g in group) for group in grads]
    if mode == "norm":  # torch.nn.utils.clip_grad_norm_
        total = np.sqrt(sum(np.sum(g**2) for group in grads for g in group))
        coef = min(c / (total + 1e-6), 1.0)
        return [tuple(g * coef for g in group) for group in grads]
    if mode == "layer":  # clip_grad_norm_ on each layer's parameters (W, b[, γ, β]) together
        out = []
        for group in grads:
            norm = np.sqrt(sum(np.sum(g**2) for g in group))
            coef = min(c / (norm + 1e-6), 1.0)
            out.append(tuple(g * coef for g in group))
        return out
    assert mode == "agc"  # optax.adaptive_grad_clip(c, eps=1e-3)

    def unit(g, p):
        g_norm = np.linalg.norm(g, axis=-1, keepdims=True) if g.ndim == 2 else np.linalg.norm(g)
        p_norm = np.linalg.norm(p, axis=-1, keepdims=True) if p.ndim == 2 else np.linalg.norm(p)
        max_norm = c * np.maximum(p_norm, 1e-3)
        clipped = g * (max_norm / np.maximum(g_norm, 1e-6))
        return np.where(g_norm < max_norm, g, clipped)

    return [tuple(unit(g, p) for g, p in zip(group, pgroup, strict=True))
            for group, pgroup in zip(grads, params, strict=True)]  # fmt: skip


# ---------------------------------------------------------------- optimizers (torch docs)


class Optimizer:
    """PyTorch's documented update rules on a flat parameter vector."""

    def __init__(self, name, lr, **o):
        self.name, self.lr, self.t = name, lr, 0
        d = {
            "sgd": dict(momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False),
            "momentum": dict(momentum=0.9, dampening=0.0, weight_decay=0.0, nesterov=False),
            "nesterov": dict(momentum=0.9, dampening=0.0, weight_decay=0.0, nesterov=True),
            "rmsprop": dict(alpha=0.99, eps=1e-8, weight_decay=0.0, momentum=0.0, centered=False),
            "adam": dict(betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0),
            "adamw": dict(betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01),
        }[name]
        d.update(o)
        self.o = d
        self.b = self.m = self.v = self.g_ave = None

    def step(self, theta, g):
        o, lr = self.o, self.lr
        self.t += 1
        t = self.t
        theta = theta.copy()
        if self.name in ("sgd", "momentum", "nesterov"):
            if o["weight_decay"]:
                g = g + o["weight_decay"] * theta
            mu = o["momentum"]
            if mu:
                self.b = g.copy() if t == 1 else mu * self.b + (1 - o["dampening"]) * g
                g = g + mu * self.b if o["nesterov"] else self.b
            return theta - lr * g
        if self.name in ("adam", "adamw"):
            b1, b2 = o["betas"]
            if self.name == "adamw":
                theta = theta - lr * o["weight_decay"] * theta
            elif o["weight_decay"]:
                g = g + o["weight_decay"] * theta
            self.m = (1 - b1) * g if t == 1 else b1 * self.m + (1 - b1) * g
            self.v = (1 - b2) * g**2 if t == 1 else b2 * self.v + (1 - b2) * g**2
            m_hat = self.m / (1 - b1**t)
            v_hat = self.v / (1 - b2**t)
            return theta - lr * m_hat / (np.sqrt(v_hat) + o["eps"])
        # rmsprop
        a = o["alpha"]
        if o["weight_decay"]:
            g = g + o["weight_decay"] * theta
        self.v = (1 - a) * g**2 if t == 1 else a * self.v + (1 - a) * g**2
        v = self.v
        if o["centered"]:
            self.g_ave = (1 - a) * g if t == 1 else a * self.g_ave + (1 - a) * g
            v = v - self.g_ave**2
        if o["momentum"] > 0:
            upd = g / (np.sqrt(v) + o["eps"])
            self.b = upd if t == 1 else o["momentum"] * self.b + upd
            return theta - lr * self.b
        return theta - lr * g / (np.sqrt(v) + o["eps"])


def flatten(params):
    """One vector of every array of every layer's tuple, in order (bpdiag's theta layout)."""
    return np.concatenate([np.ravel(a) for group in params for a in group])


def unflatten(flat, like):
    out, p = [], 0
    for group in like:
        arrays = []
        for a in group:
            arrays.append(flat[p : p + a.size].reshape(a.shape))
            p += a.size
        out.append(tuple(arrays))
    return out


def train_full_batch(params, X, Y, activation, loss, optimizer, lr, steps, clip_mode, c, **o):
    """Reference full-batch training: backprop → clip → optimizer, ``steps`` times."""
    opt = Optimizer(optimizer, lr, **o)
    for _ in range(steps):
        _, grads = loss_and_grads(params, X, Y, activation, loss)
        grads = clip(clip_mode, c, params, grads)
        params = unflatten(opt.step(flatten(params), flatten(grads)), params)
    return params


def train_net(params, X, Y, activation, loss, norm, residual, alpha, optimizer, lr, steps,
              clip_mode, c, batches=None, **o):  # fmt: skip
    """Reference training of a net with normalization and skips: backprop → clip → optimizer,
    ``steps`` times, on the row sets of ``batches`` in turn (None: the full batch). Returns the
    parameters and BatchNorm's running statistics [(mean, var)] (torch.nn.BatchNorm1d's update:
    momentum 0.1, the unbiased batch variance)."""
    opt = Optimizer(optimizer, lr, **o)
    running = [(np.zeros(len(p[0])), np.ones(len(p[0]))) for p in params
               if len(p) == 4 and norm == "batchnorm"]  # fmt: skip
    for s in range(steps):
        rows = np.arange(len(X)) if batches is None else batches[s % len(batches)]
        Xb, Yb = X[rows], Y[rows]
        _, grads, _ = loss_and_grads_net(params, Xb, Yb, activation, loss, norm, residual, alpha)
        if norm == "batchnorm":
            _, cache = forward_net(params, Xb, activation, norm, residual, alpha)
            m = len(rows)
            running = [((1 - 0.1) * rm + 0.1 * cc["mu"].ravel(),
                        (1 - 0.1) * rv + 0.1 * cc["var"].ravel() * m / (m - 1))
                       for (rm, rv), cc in zip(running, [layer for layer in cache if "zhat" in layer],
                                               strict=True)]  # fmt: skip
        grads = clip(clip_mode, c, params, grads)
        params = unflatten(opt.step(flatten(params), flatten(grads)), params)
    return params, running


def rel_err(a, b) -> float:
    """max |a − b| / max |b| over a list of (W, b) pairs (or arrays)."""
    fa = flatten(a) if isinstance(a, list) else np.ravel(a)
    fb = flatten(b) if isinstance(b, list) else np.ravel(b)
    return float(np.max(np.abs(fa - fb)) / max(np.max(np.abs(fb)), 1e-300))


# ---------------------------------------------------------------- recorded statistics


def layer_stats(params, next_params, X, Y, activation, loss, clip_mode, c):
    """Every per-layer column bpdiag records for a plain net, recomputed from params on the
    batch (X, Y) (``layer_stats_net`` without normalization or skips)."""
    return layer_stats_net(params, next_params, X, Y, activation, loss, clip_mode, c, "none",
                           False, 1.0)  # fmt: skip


def sample_stats(params, X, Y, activation, loss, norm="none", residual=False, alpha=1.0):
    """Per-sample gradient statistics by brute force: each sample's gradient of every layer's
    (W, b) from its own one-row pass, g_i = ∂ℓ_i/∂(W_l, b_l). Returns per layer and in total
    (E_i‖g_i‖², B = tr Σ / ‖G‖², SNR = m ‖G‖² / tr Σ) with G = mean_i g_i, tr Σ = E‖g_i‖² − ‖G‖²;
    all NaN for BatchNorm (its samples are coupled)."""
    L, m = len(params), X.shape[0]
    if norm == "batchnorm":
        return [(np.nan,) * 3] * L, (np.nan,) * 3
    rows = [loss_and_grads_net(params, X[i : i + 1], Y[i : i + 1], activation, loss, norm,
                               residual, alpha)[1] for i in range(m)]  # fmt: skip
    per_layer = []
    for l in range(L):
        g = np.array([np.concatenate([r[l][0].ravel(), r[l][1]]) for r in rows])  # (m, n_l)
        per_layer.append((np.mean(np.sum(g**2, axis=1)), np.sum(g.mean(axis=0) ** 2)))

    def stats(mean_sq, grad_sq):
        trace = mean_sq - grad_sq
        with np.errstate(divide="ignore", invalid="ignore"):  # a dead layer's 0/0 is NaN
            return mean_sq, trace / grad_sq, m * grad_sq / trace

    total = stats(sum(a for a, _ in per_layer), sum(b for _, b in per_layer))
    return [stats(a, b) for a, b in per_layer], total


def layer_stats_net(params, next_params, X, Y, activation, loss, clip_mode, c, norm, residual,
                    alpha):  # fmt: skip
    """``layer_stats`` for a net with normalization and skips: δ_l = ∂L/∂z_l (before the
    norm), the error after it ∂L/∂u_l, the affine gradients; saturation and dead units from φ's
    input u_l and output h_l, the activation statistics from the layer's output a_l."""
    L, m = len(params), X.shape[0]
    A, cache = forward_net(params, X, activation, norm, residual, alpha)
    _, grads, deltas = loss_and_grads_net(params, X, Y, activation, loss, norm, residual, alpha)
    clipped = clip(clip_mode, c, params, grads)
    relu_family = activation in ("relu", "leaky_relu", "elu", "selu", "gelu")
    samples, _ = sample_stats(params, X, Y, activation, loss, norm, residual, alpha)
    rows = []
    for l in range(1, L + 1):
        W, a, hidden, cl = params[l - 1][0], A[l], l < L, cache[l - 1]
        h = cl["h"] if hidden else a
        if hidden and activation == "sigmoid":
            sat = np.mean((h < 0.01) | (h > 0.99))
        elif hidden and activation == "tanh":
            sat = np.mean(np.abs(h) > 0.99)
        else:
            sat = np.nan
        dead = np.mean(np.all(cl["u"] <= 0, axis=1)) if hidden and relu_family else np.nan
        g = grads[l - 1]
        dz, du = deltas[l - 1]
        normed = len(g) == 4
        rows.append({
            "grad_norm_W": np.linalg.norm(g[0]),
            "grad_norm_b": np.linalg.norm(g[1]),
            "grad_norm_W_clipped": np.linalg.norm(clipped[l - 1][0]),
            "delta_rms": np.sqrt(np.mean(np.sum((m * dz) ** 2, axis=0))),
            "weight_norm": np.linalg.norm(W),
            "update_ratio": np.linalg.norm(next_params[l - 1][0] - W) / np.linalg.norm(W),
            "act_mean": a.mean(),
            "act_std": a.std(),
            "frac_saturated": sat,
            "frac_dead": dead,
            "nonfinite": int(sum(np.sum(~np.isfinite(x)) for x in g)),
            "grad_norm_affine": np.sqrt(np.sum(g[2] ** 2) + np.sum(g[3] ** 2)) if normed else np.nan,
            "delta_rms_normed": np.sqrt(np.mean(np.sum((m * du) ** 2, axis=0))) if normed else np.nan,
            **dict(zip(("sample_grad_sq", "noise_scale", "grad_snr"), samples[l - 1], strict=True)),
        })  # fmt: skip
    return rows
