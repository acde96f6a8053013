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
