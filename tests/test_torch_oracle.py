"""The same nets, losses, optimizers and clipping in PyTorch itself (needs the ``bench`` extra)."""

import numpy as np
import pytest
import reference as ref
from problems import ACTIVATION_NAMES, LOSS_NAMES, make_problem

from bpdiag import MLP, train
from bpdiag.choices.optim import OPTIMIZERS

torch = pytest.importorskip("torch")
F = torch.nn.functional

TORCH_ACT = {
    "sigmoid": torch.sigmoid,
    "tanh": torch.tanh,
    "relu": F.relu,
    "leaky_relu": lambda z: F.leaky_relu(z, 0.01),
    "elu": F.elu,
    "selu": F.selu,
    "gelu": F.gelu,
    "linear": lambda z: z,
}
TORCH_OPT = {
    "sgd": lambda p, lr: torch.optim.SGD(p, lr=lr),
    "momentum": lambda p, lr: torch.optim.SGD(p, lr=lr, momentum=0.9),
    "nesterov": lambda p, lr: torch.optim.SGD(p, lr=lr, momentum=0.9, nesterov=True),
    "rmsprop": lambda p, lr: torch.optim.RMSprop(p, lr=lr),
    "adam": lambda p, lr: torch.optim.Adam(p, lr=lr),
    "adamw": lambda p, lr: torch.optim.AdamW(p, lr=lr),
}


def _torch_params(net):
    return [(torch.tensor(W, requires_grad=True), torch.tensor(b, requires_grad=True))
            for W, b in net.params]  # fmt: skip


def _torch_loss(params, X, Y, activation, loss, out_act="linear"):
    a = torch.tensor(X)
    for k, (W, b) in enumerate(params):
        a = a @ W.T + b
        if k < len(params) - 1:
            a = TORCH_ACT[activation](a)
    if loss == "bce":
        return torch.nn.BCEWithLogitsLoss()(a, torch.tensor(Y))
    if loss == "ce":
        return torch.nn.CrossEntropyLoss()(a, torch.tensor(Y, dtype=torch.long))
    return torch.nn.MSELoss()(TORCH_ACT[out_act](a), torch.tensor(Y))


def _numpy(params):
    return [(W.detach().numpy(), b.detach().numpy()) for W, b in params]


@pytest.mark.parametrize("loss", LOSS_NAMES)
@pytest.mark.parametrize("activation", ACTIVATION_NAMES)
def test_loss_and_grads_match_pytorch(activation, loss):
    net = MLP([5, 8, 6, 3], activation=activation, loss=loss, init="he_uniform", seed=5)
    X, Y = make_problem(loss)
    value, grads = net.loss_and_grads(X, Y)
    params = _torch_params(net)
    t_loss = _torch_loss(params, X, Y, activation, loss)
    t_loss.backward()
    assert value == pytest.approx(t_loss.item(), rel=1e-12)
    assert ref.rel_err(grads, [(W.grad.numpy(), b.grad.numpy()) for W, b in params]) < 1e-10


@pytest.mark.parametrize("clip", ["none", "value", "norm", "layer"])
@pytest.mark.parametrize("optimizer", list(OPTIMIZERS))  # every registered one
def test_training_matches_pytorch(optimizer, clip):
    c = {"none": None, "value": 0.02, "norm": 0.1, "layer": 0.08}[clip]
    lr = 0.1 if optimizer == "sgd" else 0.01
    net = MLP([5, 8, 6, 3], activation="tanh", loss="bce", init="xavier_normal", seed=2)
    X, Y = make_problem("bce", m=16)
    params = _torch_params(net)
    opt = TORCH_OPT[optimizer]([p for pair in params for p in pair], lr)
    for _ in range(6):
        opt.zero_grad()
        _torch_loss(params, X, Y, "tanh", "bce").backward()
        if clip == "value":
            torch.nn.utils.clip_grad_value_([p for pair in params for p in pair], c)
        elif clip == "norm":
            torch.nn.utils.clip_grad_norm_([p for pair in params for p in pair], c)
        elif clip == "layer":
            for pair in params:
                torch.nn.utils.clip_grad_norm_(list(pair), c)
        opt.step()
    train(net, X, Y, optimizer=optimizer, lr=lr, steps=6, batch_size=None, clip=clip, clip_value=c)
    assert ref.rel_err(net.params, _numpy(params)) < 1e-10


def test_float32_matches_pytorch_float32():
    net = MLP([5, 16, 16, 1], activation="sigmoid", loss="bce", seed=1, dtype="float32")
    X, Y = make_problem("bce", m=32, n_out=1)
    params = [(torch.tensor(W), torch.tensor(b)) for W, b in net.params]
    for W, b in params:
        W.requires_grad_(), b.requires_grad_()
    t_loss = _torch_loss(params, X.astype(np.float32), Y.astype(np.float32), "sigmoid", "bce")
    t_loss.backward()
    value, grads = net.loss_and_grads(X, Y)
    assert value == pytest.approx(t_loss.item(), rel=1e-5)
    assert ref.rel_err(grads, [(W.grad.numpy(), b.grad.numpy()) for W, b in params]) < 1e-4


# ---------------------------------------------------------------- normalization and skips


class Mirror(torch.nn.Module):
    """The same net in PyTorch: Linear → BatchNorm1d/LayerNorm → φ, plus the skip."""

    def __init__(self, net, activation):
        super().__init__()
        self.act, self.alpha, self.skips = TORCH_ACT[activation], net.layout.alpha, net.skips
        self.linears, self.norms = torch.nn.ModuleList(), torch.nn.ModuleList()
        for group in net.params:
            W, b = group[0], group[1]
            lin = torch.nn.Linear(W.shape[1], W.shape[0], dtype=torch.float64)
            lin.weight.data[:], lin.bias.data[:] = torch.tensor(W), torch.tensor(b)
            self.linears.append(lin)
            if len(group) == 4:
                n = W.shape[0]
                layer = (torch.nn.BatchNorm1d(n, eps=1e-5, momentum=0.1, dtype=torch.float64)
                         if net.norm == "batchnorm" else
                         torch.nn.LayerNorm(n, eps=1e-5, dtype=torch.float64))  # fmt: skip
                layer.weight.data[:], layer.bias.data[:] = (
                    torch.tensor(group[2]),
                    torch.tensor(group[3]),
                )
                self.norms.append(layer)
            else:
                self.norms.append(torch.nn.Identity())

    def forward(self, x):
        a = x
        for l, (lin, norm) in enumerate(zip(self.linears, self.norms, strict=True)):
            z = lin(a)
            if l == len(self.linears) - 1:
                return z
            h = self.act(norm(z))
            a = a + self.alpha * h if self.skips[l] else h

    def groups(self):
        return [[p for p in (*lin.parameters(), *norm.parameters())]
                for lin, norm in zip(self.linears, self.norms, strict=True)]  # fmt: skip

    def numpy_params(self):
        return [tuple(p.detach().numpy() for p in group) for group in self.groups()]


def _torch_loss_of(out, Y, loss):
    if loss == "bce":
        return torch.nn.BCEWithLogitsLoss()(out, torch.tensor(Y))
    if loss == "ce":
        return torch.nn.CrossEntropyLoss()(out, torch.tensor(Y, dtype=torch.long))
    return torch.nn.MSELoss()(out, torch.tensor(Y))


def _normed_net(activation, loss, norm, residual):
    net = MLP([5, 8, 8, 8, 3], activation=activation, loss=loss, norm=norm, residual=residual,
              residual_scale=0.7, init="he_uniform", seed=5)  # fmt: skip
    rng = np.random.default_rng(2)
    net.set_params([tuple(a if i == 0 else rng.normal(1.0 if i == 2 else 0.0, 0.3, size=a.shape)
                          for i, a in enumerate(group)) for group in net.params])  # fmt: skip
    return net


@pytest.mark.parametrize("residual", [False, True])
@pytest.mark.parametrize("norm", ["batchnorm", "layernorm"])
@pytest.mark.parametrize("loss", LOSS_NAMES)
@pytest.mark.parametrize("activation", ACTIVATION_NAMES)
def test_normalized_grads_match_pytorch(activation, loss, norm, residual):
    net = _normed_net(activation, loss, norm, residual)
    X, Y = make_problem(loss)
    value, grads = net.loss_and_grads(X, Y)
    model = Mirror(net, activation).train()
    t_loss = _torch_loss_of(model(torch.tensor(X)), Y, loss)
    t_loss.backward()
    assert value == pytest.approx(t_loss.item(), rel=1e-12)
    want = [tuple(p.grad.numpy() for p in group) for group in model.groups()]
    assert ref.rel_err(grads, want) < 1e-10


@pytest.mark.parametrize("clip", ["none", "value", "norm", "layer"])
@pytest.mark.parametrize("optimizer", list(OPTIMIZERS))
@pytest.mark.parametrize(("norm", "residual"), [("batchnorm", False), ("batchnorm", True),
                                                ("layernorm", True)])  # fmt: skip
def test_normalized_training_matches_pytorch(norm, residual, optimizer, clip):
    """Minibatches of 8 rows in order, 8 steps: parameters, running statistics and the
    evaluation-mode output all equal PyTorch's."""
    c = {"none": None, "value": 0.02, "norm": 0.1, "layer": 0.08}[clip]
    lr = 0.1 if optimizer == "sgd" else 0.01
    net = _normed_net("tanh", "bce", norm, residual)
    X, Y = make_problem("bce", m=32)
    model = Mirror(net, "tanh").train()
    params = [p for group in model.groups() for p in group]
    opt = TORCH_OPT[optimizer](params, lr)
    for s in range(8):
        rows = slice(8 * (s % 4), 8 * (s % 4) + 8)
        opt.zero_grad()
        _torch_loss_of(model(torch.tensor(X[rows])), Y[rows], "bce").backward()
        if clip == "value":
            torch.nn.utils.clip_grad_value_(params, c)
        elif clip == "norm":
            torch.nn.utils.clip_grad_norm_(params, c)
        elif clip == "layer":
            for group in model.groups():
                torch.nn.utils.clip_grad_norm_(group, c)
        opt.step()
    train(net, X, Y, optimizer=optimizer, lr=lr, steps=8, batch_size=8, shuffle=False, clip=clip,
          clip_value=c)  # fmt: skip
    assert ref.rel_err(net.params, model.numpy_params()) < 1e-10
    torch_running = [(n.running_mean.numpy(), n.running_var.numpy()) for n in model.norms
                     if isinstance(n, torch.nn.BatchNorm1d)]  # fmt: skip
    assert len(net.running_stats) == len(torch_running)
    # The bias before a BatchNorm has a gradient that is 0 but for rounding (the normalization
    # subtracts the batch mean); Adam and RMSprop divide that noise by √v + ε and step on it, in
    # each implementation differently. The outputs do not see b; the running mean does, ~1e-11.
    tol = 1e-9 if optimizer in ("adam", "adamw", "rmsprop") else 1e-10
    for (m, v), (tm, tv) in zip(net.running_stats, torch_running, strict=True):
        assert ref.rel_err(m, tm) < tol and ref.rel_err(v, tv) < 1e-10
    with torch.no_grad():
        expected = torch.sigmoid(model.eval()(torch.tensor(X))).numpy()
    assert ref.rel_err(net.forward(X), expected) < 1e-10
