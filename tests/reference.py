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


def deltas(params, X, Y, activation, loss):
    """Per-sample errors δ_l = ∂ℓ_i/∂z_l, l = 1..L, each (n_l, m)."""
    L = len(params)
    A, Z = [X.T], [None]
    for l, (W, b) in enumerate(params, start=1):
        Z.append(W @ A[l - 1] + b[:, None])
        A.append(phi(activation, Z[l]) if l < L else Z[l])
    assert loss == "bce"
    k = Z[L].shape[0]
    out = [None] * L
    out[L - 1] = (1.0 / (1.0 + np.exp(-Z[L])) - Y.reshape(-1, k).T) / k
    for l in range(L - 1, 0, -1):
        out[l - 1] = (params[l][0].T @ out[l]) * dphi(activation, Z[l])
    return out, A


# ---------------------------------------------------------------- clipping


def clip(mode, c, params, grads):
    """Return clipped copies of grads (lists of (dW, db))."""
    grads = [(dW.copy(), db.copy()) for dW, db in grads]
    if mode == "none":
        return grads
    if mode == "value":
        return [(np.clip(dW, -c, c), np.clip(db, -c, c)) for dW, db in grads]
    if mode == "norm":  # torch.nn.utils.clip_grad_norm_
        total = np.sqrt(sum(np.sum(dW**2) + np.sum(db**2) for dW, db in grads))
        coef = min(c / (total + 1e-6), 1.0)
        return [(dW * coef, db * coef) for dW, db in grads]
    if mode == "layer":
        out = []
        for dW, db in grads:
            norm = np.sqrt(np.sum(dW**2) + np.sum(db**2))
            coef = min(c / (norm + 1e-6), 1.0)
            out.append((dW * coef, db * coef))
        return out
    assert mode == "agc"  # optax.adaptive_grad_clip(c, eps=1e-3)

    def unit(g, p):
        g_norm = np.linalg.norm(g, axis=-1, keepdims=True) if g.ndim == 2 else np.linalg.norm(g)
        p_norm = np.linalg.norm(p, axis=-1, keepdims=True) if p.ndim == 2 else np.linalg.norm(p)
        max_norm = c * np.maximum(p_norm, 1e-3)
        clipped = g * (max_norm / np.maximum(g_norm, 1e-6))
        return np.where(g_norm < max_norm, g, clipped)

    return [(unit(dW, W), unit(db, b)) for (dW, db), (W, b) in zip(grads, params, strict=True)]


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
    return np.concatenate([np.concatenate([W.ravel(), b]) for W, b in params])


def unflatten(flat, like):
    out, p = [], 0
    for W, b in like:
        dW = flat[p : p + W.size].reshape(W.shape)
        p += W.size
        out.append((dW, flat[p : p + b.size]))
        p += b.size
    return out


def train_full_batch(params, X, Y, activation, loss, optimizer, lr, steps, clip_mode, c, **o):
    """Reference full-batch training: backprop → clip → optimizer, ``steps`` times."""
    opt = Optimizer(optimizer, lr, **o)
    for _ in range(steps):
        _, grads = loss_and_grads(params, X, Y, activation, loss)
        grads = clip(clip_mode, c, params, grads)
        params = unflatten(opt.step(flatten(params), flatten(grads)), params)
    return params


def rel_err(a, b) -> float:
    """max |a − b| / max |b| over a list of (W, b) pairs (or arrays)."""
    fa = flatten(a) if isinstance(a, list) else np.ravel(a)
    fb = flatten(b) if isinstance(b, list) else np.ravel(b)
    return float(np.max(np.abs(fa - fb)) / max(np.max(np.abs(fb)), 1e-300))


# ---------------------------------------------------------------- recorded statistics


def layer_stats(params, next_params, X, Y, activation, loss, clip_mode, c):
    """Every per-layer column bpdiag records, recomputed from params on the batch (X, Y)."""
    L, m = len(params), X.shape[0]
    A, Z = [X.T], [None]
    for l, (W, b) in enumerate(params, start=1):
        Z.append(W @ A[l - 1] + b[:, None])
        A.append(phi(activation, Z[l]) if l < L else Z[l])
    _, grads = loss_and_grads(params, X, Y, activation, loss)
    clipped = clip(clip_mode, c, params, grads)
    # per-sample errors δ_l = m ∂L/∂z_l, from the seed's recursion
    k = Z[L].shape[0]
    if loss == "bce":
        d = (1.0 / (1.0 + np.exp(-Z[L])) - Y.reshape(m, k).T) / k
    else:
        raise NotImplementedError(loss)
    delta = [None] * L
    delta[L - 1] = d
    for l in range(L - 1, 0, -1):
        delta[l - 1] = (params[l][0].T @ delta[l]) * dphi(activation, Z[l])
    rows = []
    for l in range(1, L + 1):
        W, a, hidden = params[l - 1][0], A[l], l < L
        if hidden and activation == "sigmoid":
            sat = np.mean((a < 0.01) | (a > 0.99))
        elif hidden and activation == "tanh":
            sat = np.mean(np.abs(a) > 0.99)
        else:
            sat = np.nan
        relu_family = activation in ("relu", "leaky_relu", "elu", "selu", "gelu")
        dead = np.mean(np.all(Z[l] <= 0, axis=1)) if hidden and relu_family else np.nan
        dW, db = grads[l - 1]
        rows.append({
            "grad_norm_W": np.linalg.norm(dW),
            "grad_norm_b": np.linalg.norm(db),
            "grad_norm_W_clipped": np.linalg.norm(clipped[l - 1][0]),
            "delta_rms": np.sqrt(np.mean(np.sum(delta[l - 1] ** 2, axis=0))),
            "weight_norm": np.linalg.norm(W),
            "update_ratio": np.linalg.norm(next_params[l - 1][0] - W) / np.linalg.norm(W),
            "act_mean": a.mean(),
            "act_std": a.std(),
            "frac_saturated": sat,
            "frac_dead": dead,
            "nonfinite": int(np.sum(~np.isfinite(dW)) + np.sum(~np.isfinite(db))),
        })  # fmt: skip
    return rows
