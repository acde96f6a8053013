"""A process that finds Numba's cache empty compiles the kernels in a child and then loads them,
so it computes the same bits as every process after it (CI's cold cache once showed otherwise)."""

import os
import subprocess
import sys

import numpy as np
import pytest

pytestmark = pytest.mark.slow  # a cold compile: a minute or more

RUN = """
import sys, numpy as np
from bpdiag import MLP, train
from bpdiag.compiled import _cached_signatures
from bpdiag._core.loop import train_steps
before = _cached_signatures(train_steps)
rng = np.random.default_rng(0)
X, Y = rng.normal(size=(64, 2)), (rng.uniform(size=(64, 1)) > 0.5).astype(float)
net = MLP([2, 16, 16, 16, 1], norm="batchnorm", residual=True, seed=3)
train(net, X, Y, steps=30, lr=0.01, optimizer="adam", clip="norm", clip_value=0.5, batch_size=32)
np.save(sys.argv[1], net.theta)
print(before)
"""


def test_a_cold_process_computes_what_a_warm_one_does(tmp_path):
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path / "cache")}

    def run(name):
        out = subprocess.run([sys.executable, "-c", RUN, str(tmp_path / name)], env=env,
                             capture_output=True, text=True, check=True, cwd=tmp_path)  # fmt: skip
        return int(out.stdout.split()[-1]), np.load(tmp_path / f"{name}.npy")

    cold_before, cold = run("cold")
    warm_before, warm = run("warm")
    assert cold_before == 0 and warm_before == 2  # the cold process's child filled the cache
    assert cold.tobytes() == warm.tobytes()
