"""Every process runs the kernels as Numba's on-disk cache holds them, so that one run gives the
same bits in any process.

A process that compiles the training kernel itself can round differently, in the last bits,
from a process that loads the compiled kernel from the cache: with the ``reassoc``/``contract``
flags (``_core.jit``) the code LLVM makes for a helper depends on where it is compiled, and a
compiling process calls the helpers' own copies while a loading one calls the copies inside the
cached kernel. So the first process to need a kernel this cache lacks compiles them all in a
child process, under a lock beside the cache, and then loads them like every process after it.
Where the cache cannot be written every process compiles for itself, and all agree again.
"""

from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import sys
import threading

from bpdiag import blas

_CHILD = "BPDIAG_COMPILING"  # the parent's pid, in the child that compiles: it starts no other
_lock = threading.Lock()
_ready = False


def ready() -> blas.Library:
    """Bind the BLAS (``blas.bind``) and make sure the kernels come from the cache; once per
    process, before its first kernel. Returns the BLAS."""
    global _ready
    library = blas.bind()
    with _lock:
        if not _ready and not os.environ.get(_CHILD):
            _load_from_cache()
            _ready = True
    return library


def compile_kernels() -> None:
    """Compile (or load) every kernel signature bpdiag calls: the training kernel for float32
    and float64, and the theory's elementwise kernels."""
    import numpy as np

    from bpdiag import MLP, train
    from bpdiag._core.elementwise import dphi_array, phi_array

    rng = np.random.default_rng(0)
    X, Y = rng.normal(size=(8, 2)), rng.uniform(size=(8, 1))
    for dtype in ("float32", "float64"):
        net = MLP([2, 3, 1], dtype=dtype, seed=0)
        train(net, X, Y, steps=2, lr=0.01)
        net.forward(X)
    z = np.linspace(-1.0, 1.0, 4)
    phi_array(0, z)
    dphi_array(0, z)


def _child() -> None:
    """The compiling child: it dies with the process that started it (an interrupted sweep's
    worker) instead of compiling on alone, and takes Ctrl-C even where its parent ignores it."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    if str(os.getppid()) != os.environ[_CHILD]:
        return  # the parent died before prctl: nobody waits for this compile
    compile_kernels()


def _load_from_cache() -> None:
    """Compile the kernels in a child process unless the cache holds them already."""
    from bpdiag._core.loop import train_steps

    cache = getattr(train_steps, "_cache", None)
    try:
        os.makedirs(cache.cache_path, exist_ok=True)
        lock = open(os.path.join(cache.cache_path, "bpdiag-compile.lock"), "a")  # noqa: SIM115
    except (AttributeError, TypeError, OSError):
        return  # no cache to write: this process compiles for itself, as all others do
    with lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one compiling child per machine; the others wait
        if _cached_signatures(train_steps) < 2:
            subprocess.run(
                [sys.executable, "-c", "from bpdiag.compiled import _child as c; c()"],
                env={**os.environ, _CHILD: str(os.getpid())}, stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False,
            )  # fmt: skip
            # a child that failed leaves the cache as it was: this process then compiles, and
            # raises whatever error there is itself


def _cached_signatures(dispatcher) -> int:
    """How many compiled signatures of ``dispatcher`` the cache holds for this machine and this
    source (Numba's index keys: signature, target, source hash)."""
    from numba.core.registry import cpu_target

    try:
        cache = dispatcher._cache
        want = cache._index_key(None, cpu_target.target_context.codegen())[1:]
        return sum(1 for key in cache._cache_file._load_index() if key[1:] == want)
    except Exception:  # noqa: BLE001  (another Numba's internals: treat the cache as empty)
        return 0
