"""One training step — forward, backward, per-layer gradient norms, clip_grad_norm_, Adam — timed
for bpdiag, PyTorch CPU and JAX (jit per step, and lax.scan over a chunk of steps; each if
installed) and plain NumPy, interleaved in one process.

    python benchmarks/bench.py                      # everything (about 20 minutes)
    python benchmarks/bench.py --configs S,M --acts tanh --dtypes float32 --no-compile
    python benchmarks/bench.py --baseline ../old   # and another checkout's bpdiag beside this one
    python benchmarks/bench.py --configs deep,wide,online --no-data --norms ''  # other shapes

Prints the best of 7 interleaved rounds per implementation and the ratios (PyTorch / bpdiag): on
a shared machine slow phases last seconds to minutes, and the best round is the one nearest the
code's own speed (``timeit``'s advice), for every implementation alike. Also GFLOP/s against the
sgemm/dgemm rate measured in the same run, the cost of recording every step, Numba compile
times, the default sweep's runs per minute; writes all as JSON.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

try:  # PyTorch before bpdiag's first kernel, so that bpdiag.blas may use MKL without touching
    import torch  # noqa: F401  (PyTorch's own MKL)
except ImportError:
    pass

import bpdiag
from bpdiag import blas

CONFIGS = {  # depth (weight layers), width, batch, inputs; 1 output, BCE loss
    "XS": (6, 32, 16, 32),
    "S": (10, 64, 64, 32),
    "M": (20, 128, 128, 64),
    "L": (50, 256, 256, 128),
    "XL": (8, 1024, 512, 512),
    # other shapes, not in the default run (``--configs deep,wide,...``): the extremes a user
    # may pick, where a step's fixed costs or the BLAS's small-shape paths dominate
    "deep": (100, 32, 32, 32),  # deep and narrow
    "wide": (3, 1024, 256, 256),  # shallow and wide
    "bigbatch": (10, 64, 1024, 32),
    "smallbatch": (20, 256, 8, 64),
    "odd": (10, 100, 100, 30),  # no power of two
    "mid": (30, 512, 64, 128),
    "online": (8, 64, 1, 16),  # one sample a step
    "mnist": (3, 2048, 128, 784),
}


def sizes_of(cfg: str) -> list[int]:
    depth, width, _, n_in = CONFIGS[cfg]
    return [n_in] + [width] * (depth - 1) + [1]


def flops_per_step(cfg: str) -> float:
    """Multiply-adds of the three GEMMs per layer (forward, ∂W, ∂a), ×2 flops each."""
    sizes, batch = sizes_of(cfg), CONFIGS[cfg][2]
    return 6.0 * batch * sum(a * b for a, b in zip(sizes[:-1], sizes[1:], strict=True))


def problem(cfg: str, dtype: str) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    _, _, batch, n_in = CONFIGS[cfg]
    X = rng.normal(size=(batch, n_in)).astype(dtype)
    Y = (rng.uniform(size=(batch, 1)) > 0.5).astype(dtype)
    return X, Y


# ---------------------------------------------------------------- the three implementations


class Bpdiag:
    name = "bpdiag"

    def __init__(self, cfg, act, dtype, record_every=1, norm="none", init="xavier_normal"):
        self.X, self.Y = problem(cfg, dtype)
        self.net = bpdiag.MLP(sizes_of(cfg), activation=act, loss="bce", init=init,
                              dtype=dtype, norm=norm)  # fmt: skip
        self.record_every = record_every

    def recording(self, record_every: int) -> Bpdiag:
        """The same net and data recording every ``record_every`` steps (one net for both sides
        of an A/B: two nets' arrays land differently in memory, which moved a step by ±15 %)."""
        other = copy.copy(self)
        other.record_every = record_every
        return other

    def run(self, n: int) -> float:
        hist = bpdiag.train(self.net, self.X, self.Y, optimizer="adam", lr=1e-4, steps=n,
                            batch_size=None, clip="norm", clip_value=1.0,
                            record_every=self.record_every)  # fmt: skip
        return hist.train_seconds / n


CHILD_SERVER = """
import sys
try:
    import torch  # as in this script: before bpdiag's first kernel
except ImportError:
    pass
import numpy as np
import bpdiag
cfg, act, dtype = sys.argv[1:4]
sizes = [int(n) for n in sys.argv[4].split(",")]
batch, n_in = int(sys.argv[5]), int(sys.argv[6])
rng = np.random.default_rng(0)
X = rng.normal(size=(batch, n_in)).astype(dtype)
Y = (rng.uniform(size=(batch, 1)) > 0.5).astype(dtype)
net = bpdiag.MLP(sizes, activation=act, loss="bce", init="xavier_normal", dtype=dtype)
for line in sys.stdin:
    n = int(line)
    hist = bpdiag.train(net, X, Y, optimizer="adam", lr=1e-4, steps=n, batch_size=None,
                        clip="norm", clip_value=1.0, record_every=1)
    print(hist.train_seconds / n, flush=True)
"""


class Child:
    """bpdiag's step in a child process that waits on a pipe between runs, so that it
    interleaves with the others like any peer: this checkout's (``root`` None) or another's
    (``--baseline DIR``). The two children of an A/B start alike, neither sharing its process
    with PyTorch's threads."""

    def __init__(self, root, cfg, act, dtype):
        self.name = "baseline" if root else "this"
        _, _, batch, n_in = CONFIGS[cfg]
        args = [cfg, act, dtype, ",".join(map(str, sizes_of(cfg))), str(batch), str(n_in)]
        env = dict(os.environ)
        env.pop("PYTHONPATH", None)
        if root:
            env["PYTHONPATH"] = str(Path(root).resolve())
        self.proc = subprocess.Popen([sys.executable, "-c", CHILD_SERVER, *args], env=env,
                                     cwd=tempfile.gettempdir(), stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True)  # fmt: skip

    def run(self, n: int) -> float:
        self.proc.stdin.write(f"{n}\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("a child's process ended; see its error above")
        return float(line)

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait()


class Torch:
    name = "pytorch"

    def __init__(self, cfg, act, dtype, threads, norm="none"):
        import torch

        self.torch, self.threads = torch, threads
        torch.set_num_threads(threads)
        acts = {"relu": torch.nn.ReLU, "tanh": torch.nn.Tanh, "sigmoid": torch.nn.Sigmoid}
        norms = {"batchnorm": torch.nn.BatchNorm1d, "layernorm": torch.nn.LayerNorm}
        sizes = sizes_of(cfg)
        layers = []
        for k in range(len(sizes) - 1):
            layers.append(torch.nn.Linear(sizes[k], sizes[k + 1]))
            if k < len(sizes) - 2:
                if norm != "none":
                    layers.append(norms[norm](sizes[k + 1]))
                layers.append(acts[act]())
        dt = getattr(torch, dtype)
        self.model = torch.nn.Sequential(*layers).to(dt)
        self.weights = [m.weight for m in self.model if isinstance(m, torch.nn.Linear)]
        self.opt = torch.optim.Adam(self.model.parameters(), lr=1e-4)
        self.loss = torch.nn.BCEWithLogitsLoss()
        X, Y = problem(cfg, dtype)
        self.X, self.Y = torch.from_numpy(X), torch.from_numpy(Y)

    def run(self, n: int) -> float:
        torch = self.torch
        torch.set_num_threads(self.threads)
        start = time.perf_counter()
        for _ in range(n):
            self.opt.zero_grad(set_to_none=True)
            self.loss(self.model(self.X), self.Y).backward()
            norms = [torch.linalg.vector_norm(w.grad) for w in self.weights]  # per-layer record
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
            self.opt.step()
        norms[0].item()
        return (time.perf_counter() - start) / n


class Jax:
    """The same step in JAX: forward, backward (``jax.value_and_grad``), the per-layer weight-
    gradient norms, ``optax.clip_by_global_norm(1.0)`` and ``optax.adam(1e-4)``, compiled whole
    by XLA: one ``jax.jit`` call per step, or with ``scan`` steps fused into one call by
    ``jax.lax.scan`` (no per-step dispatch at all), the norms and losses of every step returned
    (recorded every step, as bpdiag's). The same initial weights and data as bpdiag's."""

    def __init__(self, cfg, act, dtype, scan: int = 0):
        import jax
        import jax.numpy as jnp
        import optax

        jax.config.update("jax_enable_x64", True)  # float64 arrays stay float64 (float32 stay 32)
        self.name = f"jax scan({scan})" if scan else "jax jit"
        self.jax, self.scan = jax, scan
        X, Y = problem(cfg, dtype)
        net = bpdiag.MLP(sizes_of(cfg), activation=act, loss="bce", init="xavier_normal",
                         dtype=dtype)  # fmt: skip
        params = [(jnp.asarray(W), jnp.asarray(b)) for W, b in net.params]
        X, Y = jnp.asarray(X), jnp.asarray(Y)
        phi = {"relu": jax.nn.relu, "tanh": jnp.tanh, "sigmoid": jax.nn.sigmoid}[act]
        opt = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(1e-4))

        def loss_fn(params):
            a = X
            for W, b in params[:-1]:
                a = phi(a @ W.T + b)
            W, b = params[-1]
            return optax.sigmoid_binary_cross_entropy(a @ W.T + b, Y).mean()

        def step(carry, _):
            params, state = carry
            loss, grads = jax.value_and_grad(loss_fn)(params)
            norms = jnp.stack([jnp.linalg.norm(g[0]) for g in grads])  # the per-layer record
            updates, state = opt.update(grads, state, params)
            return (optax.apply_updates(params, updates), state), (loss, norms)

        self.carry = (params, opt.init(params))
        if scan:
            self.call = jax.jit(lambda c: jax.lax.scan(step, c, None, length=scan))
        else:
            self.call = jax.jit(lambda c: step(c, None))

    def run(self, n: int) -> float:
        calls = -(-n // self.scan) if self.scan else n
        start = time.perf_counter()
        for _ in range(calls):
            self.carry, out = self.call(self.carry)
        self.jax.block_until_ready(out)
        return (time.perf_counter() - start) / (calls * (self.scan or 1))


JAX_SCAN = 20  # steps fused per lax.scan call (a chunk, as bpdiag's kernel calls run chunks)


def have_jax() -> bool:
    try:
        import jax  # noqa: F401
        import optax  # noqa: F401
    except ImportError:
        return False
    return True


class Numpy:
    """The same step in plain NumPy (array expressions, BLAS through ``@``)."""

    name = "numpy"

    def __init__(self, cfg, act, dtype):
        self.X, self.Y = problem(cfg, dtype)
        net = bpdiag.MLP(sizes_of(cfg), activation=act, init="xavier_normal", dtype=dtype)
        self.params = [p for pair in net.params for p in pair]
        self.m = [np.zeros_like(p) for p in self.params]
        self.v = [np.zeros_like(p) for p in self.params]
        self.act, self.t = act, 0

    def _phi(self, z):
        if self.act == "relu":
            return np.maximum(z, 0)
        if self.act == "tanh":
            return np.tanh(z)
        return 1 / (1 + np.exp(-z))

    def _dphi(self, a):
        if self.act == "relu":
            return a > 0
        if self.act == "tanh":
            return 1 - a * a
        return a * (1 - a)

    def step(self):
        P, L = self.params, len(self.params) // 2
        acts = [self.X]
        for k in range(L):
            z = acts[-1] @ P[2 * k].T + P[2 * k + 1]
            acts.append(self._phi(z) if k < L - 1 else z)
        z = acts[-1]
        delta = (1 / (1 + np.exp(-z)) - self.Y) / z.size
        grads = [None] * (2 * L)
        for k in range(L - 1, -1, -1):
            grads[2 * k], grads[2 * k + 1] = delta.T @ acts[k], delta.sum(axis=0)
            if k:
                delta = (delta @ P[2 * k]) * self._dphi(acts[k])
        [np.linalg.norm(g) for g in grads[::2]]
        total = np.sqrt(sum(float(np.sum(g * g)) for g in grads))
        coef = min(1.0 / (total + 1e-6), 1.0)
        self.t += 1
        bc1, bc2 = 1 - 0.9**self.t, 1 - 0.999**self.t
        for p, g, m, v in zip(P, grads, self.m, self.v, strict=True):
            g = g * coef
            m += 0.1 * (g - m)
            v *= 0.999
            v += 0.001 * g * g
            p -= (1e-4 / bc1) * m / (np.sqrt(v) / np.sqrt(bc2) + 1e-8)

    def run(self, n: int) -> float:
        start = time.perf_counter()
        for _ in range(n):
            self.step()
        return (time.perf_counter() - start) / n


def have_torch() -> bool:
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


# ---------------------------------------------------------------- measurements


QUIESCE_S = 0.3  # OpenBLAS and OpenMP threads spin after work; let them park before timing another


def interleaved(impls, seconds: float, rounds: int = 7, best: bool = False) -> dict[str, float]:
    """Median (or with ``best``, minimum) per-step time of each implementation over ``rounds``
    interleaved rounds."""
    n = {}
    for impl in impls:
        impl.run(2)  # warm up (compile, allocate, thread pools)
        n[impl] = max(2, int(seconds / rounds / max(impl.run(2), 1e-6)))
    times = {impl: [] for impl in impls}
    for _ in range(rounds):
        for impl in impls:
            time.sleep(QUIESCE_S)
            times[impl].append(impl.run(n[impl]))
    return {impl: (min(t) if best else statistics.median(t)) for impl, t in times.items()}


def paired_ratio(a, b, seconds: float, rounds: int = 31) -> float:
    """Median over ``rounds`` pairs of a's per-step time over b's, the two of a pair run back to
    back in alternating order: a slow phase of this shared machine then moves both alike, where
    it skews the best (or median) of each side taken apart by ±15 %."""
    for impl in (a, b):
        impl.run(2)  # warm up
    n = max(2, int(seconds / rounds / max(a.run(2), 1e-6)))
    ratios = []
    for r in range(rounds):
        first, second = (a, b) if r % 2 == 0 else (b, a)
        t_first, t_second = first.run(n), second.run(n)
        ratios.append(t_first / t_second if first is a else t_second / t_first)
    return statistics.median(ratios)


def gemm_rate(dtype: str, seconds: float = 1.0, m: int = 512, k: int = 1024,
              n: int = 1024) -> float:  # fmt: skip
    """GFLOP/s of numpy's (m × k) @ (k × n), on NumPy's BLAS threads (the best of ``seconds``);
    by default the XL layer's forward GEMM, the rate the "of GEMM" column divides by."""
    rng = np.random.default_rng(0)
    a = rng.normal(size=(m, k)).astype(dtype)
    b = rng.normal(size=(k, n)).astype(dtype)
    out = np.empty((m, n), dtype)
    np.matmul(a, b, out=out)
    best, start = 0.0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        t = time.perf_counter()
        np.matmul(a, b, out=out)
        best = max(best, 2 * m * k * n / (time.perf_counter() - t) / 1e9)
    return best


def layer_gemm_rate(cfg: str, dtype: str) -> float:
    """GFLOP/s of NumPy's GEMM at the config's own hidden layer, (batch × width) @ (width ×
    width): what the BLAS does at the shapes the step multiplies."""
    _, width, batch, _ = CONFIGS[cfg]
    return gemm_rate(dtype, 0.5, batch, width, width)


COMPILE_SNIPPET = """
import time; t0 = time.perf_counter()
import numpy as np, numba, bpdiag
t1 = time.perf_counter()
for dtype in ("float32", "float64"):
    net = bpdiag.MLP([4, 8, 8, 1], activation="tanh", dtype=dtype)
    X = np.zeros((8, 4)); Y = np.zeros((8, 1))
    bpdiag.train(net, X, Y, steps=1, clip="norm", clip_value=1.0)
    if dtype == "float32": t_first = time.perf_counter()
    bpdiag.train(net, X, Y, steps=1, clip="norm", clip_value=1.0,
                 threads=min(2, numba.config.NUMBA_NUM_THREADS))  # the two-core step
net.loss_and_grads(X, Y); net.forward(X)
from bpdiag.diagnostics.theory import predict; predict([4, 8, 8, 1], "tanh", "he_normal")
print(t1 - t0, t_first - t0, time.perf_counter() - t0)
"""


def compile_times() -> dict[str, float]:
    """Cold: empty Numba cache, everything compiled (one and two threads, both dtypes). Warm:
    import to the first training step."""
    with tempfile.TemporaryDirectory() as cache:
        env = {**os.environ, "NUMBA_CACHE_DIR": cache}
        out = {}
        for label in ("cold", "warm"):
            start = time.perf_counter()
            res = subprocess.run([sys.executable, "-c", COMPILE_SNIPPET], env=env, check=True,
                                 capture_output=True, text=True)  # fmt: skip
            imp, first, total = map(float, res.stdout.split())
            out[f"{label}_import_s"] = imp
            out[f"{label}_first_step_s"] = first
            out[f"{label}_total_s"] = total
            out[f"{label}_process_s"] = time.perf_counter() - start
        return out


SUBNORMAL = ([64] + [192] * 35 + [1], 128)  # sizes, batch: a ReLU/Xavier net that goes subnormal
DATA_TRAIN = 400  # steps each net trains before it is timed (the slowdown came after ~40)


class Trained(Bpdiag):
    """bpdiag's step on the ``SUBNORMAL`` shape (Adam + clip_grad_norm_, one thread), after the
    net has trained ``DATA_TRAIN`` steps: where its numbers have gone (tiny gradients, Adam's
    moments decaying toward the subnormal range) is what the timing sees."""

    def __init__(self, act, init, dtype):
        sizes, batch = SUBNORMAL
        rng = np.random.default_rng(0)
        self.X = rng.normal(size=(batch, sizes[0])).astype(dtype)
        self.Y = (rng.uniform(size=(batch, 1)) > 0.5).astype(dtype)
        self.net = bpdiag.MLP(sizes, activation=act, loss="bce", init=init, dtype=dtype)
        self.record_every, self.name = 1, f"{act} {init}"
        self.run(DATA_TRAIN)

    def run(self, n: int) -> float:
        hist = bpdiag.train(self.net, self.X, self.Y, optimizer="adam", lr=1e-4, steps=n,
                            batch_size=None, clip="norm", clip_value=1.0, record_every=1,
                            threads=1)  # fmt: skip
        return hist.train_seconds / n


def data_dependence(dtypes: list[str], seconds: float) -> list[dict]:
    """The step of a net whose numbers go subnormal (ReLU, Xavier, 36 × 192, batch 128, Adam
    and clipping) against the same shape with tanh and He init, each after ``DATA_TRAIN``
    steps, interleaved: a slowdown of the data alone shows as a ratio above 1; also the share
    of subnormal values in Adam's second moment and in the gradient."""
    rows = []
    print(f"\n{'data-dependent, one thread':34s} {'ms':>8s} {'vs tanh he':>11s} "
          f"{'subnormal v':>12s} {'subnormal g':>12s}")  # fmt: skip
    for dtype in dtypes:
        impls = [Trained("tanh", "he_normal", dtype), Trained("relu", "xavier_normal", dtype),
                 Trained("relu", "he_normal", dtype)]  # fmt: skip
        med = interleaved(impls, 2 * seconds, best=True)
        ref = med[impls[0]]
        tiny = np.finfo(dtype).tiny
        from bpdiag import training

        for impl in impls:
            hist = bpdiag.train(impl.net, impl.X, impl.Y, optimizer="adam", lr=1e-4, steps=1,
                                batch_size=None, clip="norm", clip_value=1.0, threads=1)  # fmt: skip
            ws = next(iter(training._spare.values()))
            sub = {k: float(np.mean((np.abs(a) > 0) & (np.abs(a) < tiny)))
                   for k, a in (("v", ws.state[1]), ("g", ws.buffers.grads))}  # fmt: skip
            row = {"case": f"{impl.name} {dtype}", "ms": med[impl] * 1e3,
                   "vs_reference": med[impl] / ref, "subnormal_v": sub["v"],
                   "subnormal_g": sub["g"]}  # fmt: skip
            del hist
            rows.append(row)
            print(f"{row['case']:34s} {row['ms']:8.3f} {row['vs_reference']:11.2f} "
                  f"{sub['v']:12.2%} {sub['g']:12.2%}", flush=True)  # fmt: skip
    return rows


def instrument_costs(seconds: float) -> dict[str, dict[str, float]]:
    """What each instrument costs on M tanh (float32 and float64), in ms and in training steps
    (the step timed here alone, recording every step): the per-sample gradient statistics of
    one record (their pass over every layer's δ and a, timed inside a jitted loop), one
    sharpness measurement from a random start and one warm-started after a step (power
    iteration to ``SHARPNESS_TOL``; two gradient passes over the net's 128 rows per product),
    and the Jacobian spectrum of the hidden block at 4 inputs."""
    from numba import njit

    from bpdiag._core.stats import sample_sq_sum
    from bpdiag.instruments import LossSurface, jacobian_spectrum, top_eigenvalue

    @njit(cache=False)
    def per_sample_pass(D, A, reps):
        s = 0.0
        for _ in range(reps):
            for k in range(D.shape[0]):
                s += sample_sq_sum(D[k], A[k])
        return s

    out = {}
    depth, width, batch, n_in = CONFIGS["M"]
    for dtype in ("float32", "float64"):
        impl = Bpdiag("M", "tanh", dtype, 1)
        step = min(impl.run(200) for _ in range(3))
        rng = np.random.default_rng(0)
        D = rng.normal(size=(depth, batch, width)).astype(dtype)
        A = rng.normal(size=(depth, batch, width)).astype(dtype)
        per_sample_pass(D, A, 1)
        reps = 2000
        t = time.perf_counter()
        per_sample_pass(D, A, reps)
        samples = (time.perf_counter() - t) / reps
        surface = LossSurface(impl.net, impl.X, impl.Y)
        t = time.perf_counter()
        cold = top_eigenvalue(surface)
        cold_s = time.perf_counter() - t
        impl.run(1)
        surface.theta = impl.net.theta.astype(np.float64)
        t = time.perf_counter()
        warm = top_eigenvalue(surface, cold.vector)
        warm_s = time.perf_counter() - t
        t = time.perf_counter()
        jacobian_spectrum(impl.net, impl.X, 4, layers="hidden")
        jac_s = time.perf_counter() - t
        out[dtype] = {
            "step_ms": step * 1e3, "per_sample_ms": samples * 1e3, "per_sample_of_step": samples / step,
            "sharpness_cold_ms": cold_s * 1e3, "sharpness_cold_products": cold.products,
            "sharpness_warm_ms": warm_s * 1e3, "sharpness_warm_products": warm.products,
            "jacobian_ms": jac_s * 1e3,
        }  # fmt: skip
    return out


def sweep_throughput(spec: str = "sweeps/default.yaml") -> dict[str, float]:
    """Runs per minute of a whole sweep (Dask LocalCluster, SQLite store in a temp dir)."""
    from bpdiag.sweep import run_sweep

    with tempfile.TemporaryDirectory() as tmp:
        out = run_sweep(spec, tracking_uri=f"sqlite:///{tmp}/bench.db")
    wall = out.timings["wall_s"]
    return {"runs": out.finished, "wall_s": wall, "runs_per_minute": 60 * out.finished / wall,
            "train_s": out.timings["train_s"]}  # fmt: skip


def machine() -> dict[str, object]:
    from threadpoolctl import threadpool_info

    cpu = ""
    # the name, and the family and model: a VM's name may be only "AMD EPYC"
    if Path("/proc/cpuinfo").exists():
        info = {}
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            info.setdefault(key.strip(), value.strip())
        cpu = info.get("model name", "")
        if "cpu family" in info and "model" in info:
            cpu += f", family {info['cpu family']} model {info['model']}"
    torch_version = None
    if have_torch():
        import torch

        torch_version = torch.__version__
    return {
        "cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(),
        "numpy": np.__version__, "numba": __import__("numba").__version__, "torch": torch_version,
        "blas": [(i["internal_api"], i.get("architecture"), i["num_threads"]) for i in threadpool_info()],
        "kernel_gemm": str(blas.bind()), "jax": _version("jax"),
        "openblas_env": {k: os.environ.get(k) for k in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")},
    }  # fmt: skip


def _version(dist: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _pin(m: dict) -> str:
    env = {k: v for k, v in m.get("openblas_env", {}).items() if v is not None}
    if not env:
        return " (no OPENBLAS_CORETYPE pin)" if "openblas_env" in m else ""
    return " (pinned: " + ", ".join(f"{k}={v}" for k, v in env.items()) + ")"


def markdown(result: dict) -> str:
    """A saved run as the Markdown of docs/performance.md: the machine, the table, the rest."""
    m, g = result["machine"], result["gemm_gflops"]
    lines = [
        f"Run of {result['date']} on {m['cpu']} ({m['cores']} cores), Python {m['python']}, "
        f"NumPy {m['numpy']}, Numba {m['numba']}, PyTorch {m['torch']}, JAX {m.get('jax')}; "
        f"bpdiag's GEMMs in {m['kernel_gemm']}{_pin(m)}; NumPy's GEMM in the same run: sgemm "
        f"{g['float32']:.0f} GFLOP/s, dgemm {g['float64']:.0f} GFLOP/s.",
        "",
    ]
    base = all("baseline_ms" in r for r in result["steps"])
    lines.append("| case | bpdiag ms | PyTorch ms | NumPy ms | JAX jit ms | JAX scan ms | "
                 "PyTorch / bpdiag | JAX scan / bpdiag | GFLOP/s | of GEMM | of layer GEMM |"
                 + (" this, alone ms | baseline, alone ms | this / baseline |" if base else ""))  # fmt: skip
    lines.append(
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
        + (" ---: | ---: | ---: |" if base else "")
    )
    for r in result["steps"]:
        lines.append(f"| {r['config']} {r['activation']} {r['dtype']} | {r['bpdiag_ms']:.3f} | "
                     f"{r['torch_ms']:.3f} | {r['numpy_ms']:.3f} | "
                     f"{r.get('jax_jit_ms', float('nan')):.3f} | "
                     f"{r.get('jax_scan_ms', float('nan')):.3f} | {r['speedup_vs_torch']:.2f}× | "
                     f"{r.get('speedup_vs_jax_scan', float('nan')):.2f}× | "
                     f"{r['gflops']:.0f} | {r['fraction_of_gemm']:.0%} | "
                     f"{r.get('fraction_of_layer_gemm', float('nan')):.0%} |"
                     + (f" {r['this_ms']:.3f} | {r['baseline_ms']:.3f} | {r['vs_baseline']:.3f} |"
                        if base else ""))  # fmt: skip
    if result.get("data_steps"):
        lines += ["", f"Data-dependent speed (sizes {SUBNORMAL[0][0]} → {SUBNORMAL[0][1]} × "
                  f"{len(SUBNORMAL[0]) - 2} → 1, batch {SUBNORMAL[1]}, Adam + clip_grad_norm_, "
                  f"one thread, after {DATA_TRAIN} steps):", "",
                  "| case | ms | vs tanh he_normal | subnormal in Adam's v | subnormal in g |",
                  "| --- | ---: | ---: | ---: | ---: |"]  # fmt: skip
        for r in result["data_steps"]:
            lines.append(f"| {r['case']} | {r['ms']:.3f} | {r['vs_reference']:.2f} | "
                         f"{r['subnormal_v']:.2%} | {r['subnormal_g']:.2%} |")  # fmt: skip
    if result.get("norm_steps"):
        lines += ["", "Normalized nets (BatchNorm or LayerNorm on every hidden layer) against the plain "
                  "net and PyTorch's Linear → norm → φ model:", "",
                  "| case | bpdiag ms | plain ms | PyTorch ms | bpdiag / plain | PyTorch / bpdiag |",
                  "| --- | ---: | ---: | ---: | ---: | ---: |"]  # fmt: skip
        for r in result["norm_steps"]:
            lines.append(f"| {r['config']} {r['activation']} {r['dtype']} {r['norm']} | "
                         f"{r['bpdiag_ms']:.3f} | {r['plain_ms']:.3f} | {r['torch_ms']:.3f} | "
                         f"{r['vs_plain']:.2f} | {r['speedup_vs_torch']:.2f}× |")  # fmt: skip
    lines.append("")
    for dtype, cost in result.get("recording_overhead", {}).items():
        lines.append(f"- Recording every step (per-sample statistics included), M tanh {dtype}: "
                     f"{cost:+.1%} a step.")  # fmt: skip
    for dtype, c in result.get("instruments", {}).items():
        step = c["step_ms"]
        lines.append(
            f"- Instruments on M tanh {dtype} (a step: {step:.2f} ms): per-sample statistics "
            f"{c['per_sample_ms'] * 1e3:.0f} µs a record ({c['per_sample_of_step']:.1%} of a "
            f"step); one sharpness measurement {c['sharpness_cold_ms']:.0f} ms from a random "
            f"start ({c['sharpness_cold_products']} products, {c['sharpness_cold_ms'] / step:.0f} "
            f"steps), {c['sharpness_warm_ms']:.0f} ms warm-started "
            f"({c['sharpness_warm_products']} products, {c['sharpness_warm_ms'] / step:.0f} "
            f"steps); the Jacobian spectrum at init {c['jacobian_ms']:.0f} ms "
            f"({c['jacobian_ms'] / step:.0f} steps)."
        )  # fmt: skip
    if "compile" in result:
        c = result["compile"]
        lines.append(f"- Compiling everything into an empty cache: {c['cold_total_s']:.1f} s; "
                     f"from import to the first step with the cache warm: "
                     f"{c['warm_first_step_s']:.2f} s.")  # fmt: skip
    if "sweep" in result:
        sw = result["sweep"]
        lines.append(f"- The default sweep: {sw['runs']} runs in {sw['wall_s']:.0f} s "
                     f"({sw['runs_per_minute']:.1f} runs a minute).")  # fmt: skip
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--configs", default="XS,S,M,L,XL")
    ap.add_argument("--acts", default="relu,tanh,sigmoid")
    ap.add_argument("--dtypes", default="float32,float64")
    ap.add_argument("--seconds", type=float, default=1.5, help="per implementation and case")
    ap.add_argument("--no-numpy", action="store_true", help="skip the plain-NumPy peer")
    ap.add_argument("--no-jax", action="store_true", help="skip the JAX peers (jit, lax.scan)")
    ap.add_argument(
        "--no-data",
        action="store_true",
        help="skip the data-dependent rows (a net that goes subnormal)",
    )
    ap.add_argument("--norms", default="batchnorm,layernorm",
                    help="normalized nets against the plain one and PyTorch's ('' skips)")  # fmt: skip
    ap.add_argument("--norm-configs", default="M,L")
    ap.add_argument("--no-compile", action="store_true", help="skip the compile-time runs")
    ap.add_argument("--no-sweep", action="store_true", help="skip timing sweeps/default.yaml")
    ap.add_argument("--out", default="bench-results/bench.json")
    ap.add_argument("--markdown", metavar="JSON", help="print a saved run as Markdown and exit")
    ap.add_argument("--baseline", metavar="DIR", help="also time this checkout's bpdiag and the "
                    "one in DIR (e.g. a git worktree of an older commit), each in a child process, "
                    "interleaved with the rest")  # fmt: skip
    args = ap.parse_args()
    if args.markdown:
        print(markdown(json.loads(Path(args.markdown).read_text())))
        return
    torch_ok = have_torch()
    if not torch_ok:
        print("note: PyTorch not installed (pip install -e '.[bench]'); its column is skipped")
    jax_ok = have_jax() and not args.no_jax
    if not jax_ok and not args.no_jax:
        print("note: JAX not installed (pip install jax jaxlib optax); its columns are skipped")
    result = {"machine": machine(), "steps": [], "date": time.strftime("%Y-%m-%d %H:%M")}
    result["gemm_gflops"] = {dt: gemm_rate(dt) for dt in ("float32", "float64")}
    print(f"bpdiag's GEMM: {result['machine']['kernel_gemm']}{_pin(result['machine'])}")
    print(f"numpy GEMM (512×1024 @ 1024×1024): sgemm {result['gemm_gflops']['float32']:.0f} "
          f"GFLOP/s, dgemm {result['gemm_gflops']['float64']:.0f} GFLOP/s")  # fmt: skip
    header = (f"{'case':24s} {'bpdiag ms':>10s} {'torch ms':>10s} {'numpy ms':>10s} "
              f"{'jit ms':>9s} {'scan ms':>9s} {'torch/bp':>9s} {'np/bp':>7s} {'scan/bp':>8s} "
              f"{'GFLOP/s':>8s} {'of gemm':>8s} {'of layer':>8s}")  # fmt: skip
    print(header + (f" {'this ms':>9s} {'base ms':>9s} {'this/base':>9s}" if args.baseline else ""))
    for cfg in args.configs.split(","):
        for act in args.acts.split(","):
            for dtype in args.dtypes.split(","):
                impls = [Bpdiag(cfg, act, dtype)]
                impls += [Torch(cfg, act, dtype, th) for th in (1, 2)] if torch_ok else []
                impls += [] if args.no_numpy else [Numpy(cfg, act, dtype)]
                impls += [Jax(cfg, act, dtype), Jax(cfg, act, dtype, JAX_SCAN)] if jax_ok else []
                if args.baseline:  # the A/B: this checkout and the other, each in a child
                    impls += [Child(None, cfg, act, dtype), Child(args.baseline, cfg, act, dtype)]
                med = interleaved(impls, args.seconds, best=True)
                for impl in impls:
                    if isinstance(impl, Child):
                        impl.close()
                bp = med[impls[0]]
                th = min((t for i, t in med.items() if i.name == "pytorch"), default=float("nan"))
                npy = next((t for i, t in med.items() if i.name == "numpy"), float("nan"))
                jit = next((t for i, t in med.items() if i.name == "jax jit"), float("nan"))
                scan = next((t for i, t in med.items() if i.name.startswith("jax scan")),
                            float("nan"))  # fmt: skip
                gflops = flops_per_step(cfg) / bp / 1e9
                layer_rate = layer_gemm_rate(cfg, dtype)
                row = {"config": cfg, "activation": act, "dtype": dtype, "bpdiag_ms": bp * 1e3,
                       "torch_ms": th * 1e3, "numpy_ms": npy * 1e3, "speedup_vs_torch": th / bp,
                       "speedup_vs_numpy": npy / bp, "jax_jit_ms": jit * 1e3,
                       "jax_scan_ms": scan * 1e3, "speedup_vs_jax_jit": jit / bp,
                       "speedup_vs_jax_scan": scan / bp, "gflops": gflops,
                       "fraction_of_gemm": gflops / result["gemm_gflops"][dtype],
                       "layer_gemm_gflops": layer_rate,
                       "fraction_of_layer_gemm": gflops / layer_rate}  # fmt: skip
                base = next((t for i, t in med.items() if i.name == "baseline"), None)
                this = next((t for i, t in med.items() if i.name == "this"), None)
                extra = ""
                if base is not None:
                    row.update(this_ms=this * 1e3, baseline_ms=base * 1e3, vs_baseline=this / base)
                    extra = f" {this * 1e3:9.3f} {base * 1e3:9.3f} {this / base:8.3f}"
                result["steps"].append(row)
                print(f"{cfg + ' ' + act + ' ' + dtype:24s} {bp * 1e3:10.3f} {th * 1e3:10.3f} "
                      f"{npy * 1e3:10.3f} {jit * 1e3:9.3f} {scan * 1e3:9.3f} {th / bp:9.2f} "
                      f"{npy / bp:7.2f} {scan / bp:8.2f} {gflops:8.1f} "
                      f"{row['fraction_of_gemm']:8.0%} {row['fraction_of_layer_gemm']:8.0%}{extra}",
                      flush=True)  # fmt: skip
    if args.norms:
        print(f"\n{'case':34s} {'bpdiag ms':>10s} {'plain ms':>10s} {'torch ms':>10s} "
              f"{'bp/plain':>9s} {'torch/bp':>9s}")  # fmt: skip
    result["norm_steps"] = []
    for cfg in args.norm_configs.split(",") if args.norms else []:
        for act in args.acts.split(","):
            for dtype in args.dtypes.split(","):
                for norm in args.norms.split(","):
                    impls = [Bpdiag(cfg, act, dtype, norm=norm), Bpdiag(cfg, act, dtype)]
                    impls += [Torch(cfg, act, dtype, th, norm) for th in (1, 2)] if torch_ok else []
                    med = interleaved(impls, args.seconds, best=True)
                    bp, plain = med[impls[0]], med[impls[1]]
                    th = min((t for i, t in med.items() if i.name == "pytorch"),
                             default=float("nan"))  # fmt: skip
                    row = {"config": cfg, "activation": act, "dtype": dtype, "norm": norm,
                           "bpdiag_ms": bp * 1e3, "plain_ms": plain * 1e3, "torch_ms": th * 1e3,
                           "vs_plain": bp / plain, "speedup_vs_torch": th / bp}  # fmt: skip
                    result["norm_steps"].append(row)
                    print(f"{' '.join((cfg, act, dtype, norm)):34s} {bp * 1e3:10.3f} "
                          f"{plain * 1e3:10.3f} {th * 1e3:10.3f} {bp / plain:9.2f} "
                          f"{th / bp:9.2f}", flush=True)  # fmt: skip
    result["data_steps"] = [] if args.no_data else data_dependence(args.dtypes.split(","),
                                                                      args.seconds)  # fmt: skip
    overhead = {}
    for dtype in args.dtypes.split(","):
        on = Bpdiag("M", "tanh", dtype, 1)
        off = on.recording(10**9)  # the same net: the same arrays in memory
        overhead[dtype] = paired_ratio(on, off, 4 * args.seconds) - 1
        print(f"recording every step on M tanh {dtype}: {overhead[dtype]:+.1%} per step (median "
              f"of 31 back-to-back pairs)")  # fmt: skip
    result["recording_overhead"] = overhead
    result["instruments"] = costs = instrument_costs(args.seconds)
    for dtype, c in costs.items():
        print(f"instruments on M tanh {dtype}: per-sample statistics {c['per_sample_ms'] * 1e3:.1f} "
              f"µs a record ({c['per_sample_of_step']:.2%} of a {c['step_ms']:.2f} ms step); "
              f"sharpness {c['sharpness_cold_ms']:.0f} ms cold ({c['sharpness_cold_products']} "
              f"HVPs), {c['sharpness_warm_ms']:.0f} ms warm ({c['sharpness_warm_products']}); "
              f"Jacobian {c['jacobian_ms']:.0f} ms", flush=True)  # fmt: skip
    if not args.no_compile:
        result["compile"] = compile_times()
        c = result["compile"]
        print(f"compile: cold (empty cache) {c['cold_total_s']:.1f} s for everything; warm "
              f"import → first step {c['warm_first_step_s']:.2f} s")  # fmt: skip
    if not args.no_sweep:
        result["sweep"] = sw = sweep_throughput()
        print(f"default sweep: {sw['runs']} runs in {sw['wall_s']:.1f} s = "
              f"{sw['runs_per_minute']:.1f} runs/minute")  # fmt: skip
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
