"""Placeholder until the performance issue: time one bpdiag training step on config S."""

import time

import numpy as np

import bpdiag


def main() -> None:
    rng = np.random.default_rng(0)
    X = rng.normal(size=(64, 32))
    Y = (rng.uniform(size=(64, 1)) > 0.5).astype(float)
    net = bpdiag.MLP([32, *[64] * 9, 1], activation="tanh", loss="bce", dtype="float32")
    bpdiag.train(net, X, Y, steps=5, batch_size=64, clip="norm", clip_value=1.0)
    t = time.perf_counter()
    bpdiag.train(net, X, Y, steps=500, batch_size=64, clip="norm", clip_value=1.0, record_every=1)
    print(f"S tanh float32: {(time.perf_counter() - t) / 500 * 1e3:.3f} ms/step")


if __name__ == "__main__":
    main()
