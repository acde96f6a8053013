"""Every default lives in one place: MLP, train, RunConfig and `bpdiag train` read the same."""

import inspect

from bpdiag import MLP, train
from bpdiag.choices.defaults import DEFAULTS
from bpdiag.cli import main
from bpdiag.sweep.config import RunConfig


def _defaults(fn) -> dict:
    return {k: p.default for k, p in inspect.signature(fn).parameters.items()
            if p.default is not inspect.Parameter.empty}  # fmt: skip


def test_train_and_mlp_read_the_defaults():
    for fn in (train, MLP.__init__):
        for name, value in _defaults(fn).items():
            if hasattr(DEFAULTS, name):
                assert value == getattr(DEFAULTS, name), (fn.__qualname__, name)
    assert {"optimizer", "lr", "steps", "batch_size", "record_every", "seed"} <= set(
        _defaults(train)
    )


def test_run_config_reads_the_defaults():
    cfg = RunConfig()
    for name, value in cfg.model_dump().items():
        if hasattr(DEFAULTS, name):
            assert value == getattr(DEFAULTS, name), name


def test_the_train_command_reads_the_defaults():
    params = {p.name: p.default for p in main.commands["train"].params}
    shared = [name for name in params if hasattr(DEFAULTS, name)]
    assert {"depth", "width", "optimizer", "lr", "activation", "init"} <= set(shared)
    for name in shared:
        assert params[name] == getattr(DEFAULTS, name), name
