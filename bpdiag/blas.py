"""Which BLAS computes the kernels' matrix products: chosen and bound before the first kernel
runs, reported as threadpoolctl reads it, held to one thread while the two-core step runs, and
its buffers warmed on each thread that calls it (``warm``).

- ``mkl``: Intel's MKL (a dependency on x86-64 Linux), sequential. The default on Intel CPUs,
  where its GEMMs at these nets' sizes beat OpenBLAS's (``docs/performance.md``), unless
  PyTorch is installed but not imported yet: MKL loads its parts into the process's global
  symbol scope, and a PyTorch imported afterwards binds the MKL linked into it to those parts,
  which leaves PyTorch's own GEMMs on one thread. Import torch before the first training step
  to have both.
- ``openblas``: otherwise, the OpenBLAS SciPy ships (the one Numba's ``np.dot`` calls). MKL on
  other vendors' CPUs has not been measured.

``BPDIAG_BLAS=mkl|openblas`` overrides the choice. The choice is made once per process, by
``bind()``, which ``MLP`` and ``train`` call before their first kernel: importing bpdiag loads
no BLAS.
"""

from __future__ import annotations

import ctypes
import functools
import importlib.util
import os
import platform
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

BACKENDS = ("mkl", "openblas")
_MKL_THREADING_SEQUENTIAL, _MKL_INTERFACE_LP64 = 1, 0


@dataclass(frozen=True)
class Library:
    """The BLAS the kernels' GEMMs run in, as threadpoolctl describes it."""

    backend: str  # "mkl" or "openblas"
    version: str  # the library's own version string
    path: str  # the shared library's file
    architecture: str = ""  # OpenBLAS's kernel family (e.g. "SkylakeX"); "" for MKL

    def __str__(self) -> str:
        arch = f" ({self.architecture})" if self.architecture else ""
        return f"{self.backend} {self.version}{arch}"


_lock = threading.Lock()
_bound: Library | None = None


def bind() -> Library:
    """Bind the kernels' ``bpdiag_sgemm``/``bpdiag_dgemm`` to a BLAS, and their register
    tiles' symbols (``_core.gemm.bind_tiles``), once per process, and return the BLAS. Raises
    ``ValueError`` for a bad ``BPDIAG_BLAS``."""
    global _bound
    with _lock:
        if _bound is None:
            _bound = _bind()
        return _bound


def bound() -> Library | None:
    """The library bound so far in this process (None before the first kernel ran)."""
    return _bound


@contextmanager
def single_threaded() -> Iterator[None]:
    """The bound BLAS on one thread inside the block (its threads would compete with Numba's
    for the same cores); MKL is sequential already."""
    lib = bind()
    if lib.backend == "mkl":
        yield
        return
    with _controller(lib.path).limit(limits=1):
        yield


@functools.cache
def _controller(path: str) -> object:
    """threadpoolctl's controller of the library at ``path``, found once: finding it scans the
    process's libraries (1.6 ms, more than 10 steps of a small net), setting its threads takes
    microseconds."""
    from threadpoolctl import ThreadpoolController

    return ThreadpoolController().select(filepath=path)


WARM_SIZE = 512  # n of the n × n × n sgemm ``warm`` runs on each thread (14 ms on one AVX2 core)
_warm_lock = threading.Lock()
_warmed = 0  # how many of Numba's threads ``warm`` has run a product on


def warm(threads: int) -> None:
    """Run one WARM_SIZE³ sgemm on each of ``threads`` of Numba's threads, the BLAS on one
    thread, once per process (again only for more threads); nothing for MKL.

    Why: OpenBLAS's Haswell sgemm kernel prefetches the next panel of the packed operand, past
    the end of the last one, into pages of the calling thread's buffer that no product has
    touched yet. Where such a prefetch stalls the core (an AMD EPYC with AVX2 under a
    hypervisor: the samples pile up on the instruction after ``prefetcht1``), products of width
    128–320 run at a quarter of their speed (9.5 instead of 35 GFLOP/s on one core) until one
    of width ≥ 400 has touched those pages; dgemm's kernel does not stall so, and one touched
    buffer serves both. A two-core step, whose threads run products of half a batch's rows,
    never gets there by itself: on that host the L float32 step took 148–183 ms in fresh
    processes without this and 97–143 ms with it (``docs/performance.md``).
    """
    global _warmed
    if bind().backend != "openblas" or threads <= _warmed:
        return
    import numba
    import numpy as np

    from bpdiag._core.gemm import touch_buffers

    with _warm_lock:
        if threads <= _warmed:
            return
        A = np.ones((threads, WARM_SIZE, WARM_SIZE), np.float32)
        before = numba.get_num_threads()
        numba.set_num_threads(threads)
        try:
            with single_threaded():
                touch_buffers(A, np.empty_like(A))
        finally:
            numba.set_num_threads(before)
        _warmed = threads


# ---------------------------------------------------------------- finding and binding


def _bind() -> Library:
    import llvmlite.binding as llvm

    from bpdiag._core.gemm import SYMBOLS, bind_tiles

    wanted = os.environ.get("BPDIAG_BLAS", "").strip().lower() or None
    if wanted is not None and wanted not in BACKENDS:
        raise ValueError(f"BPDIAG_BLAS must be one of {', '.join(BACKENDS)}, got {wanted!r}")
    mkl = _mkl_library() if wanted != "openblas" else None
    found = None
    if wanted == "mkl":
        if mkl is None:
            raise ValueError("BPDIAG_BLAS is 'mkl', but the mkl package is not installed")
        found = _mkl(mkl)
    elif mkl is not None and _intel_cpu() and not _torch_would_bind_to_it():
        try:
            found = _mkl(mkl)
        except (OSError, AttributeError):  # an MKL too old or broken to use: SciPy's OpenBLAS
            found = None
    addresses, lib = found if found is not None else _openblas()
    for name, address in addresses.items():
        llvm.add_symbol(SYMBOLS[name], address)
    bind_tiles()  # bpdiag's own products, which the kernels call by name too
    return lib


def _mkl_library() -> Path | None:
    """Path of MKL's single dynamic library from the ``mkl`` distribution, if installed."""
    try:
        files = metadata.files("mkl") or []
    except metadata.PackageNotFoundError:
        return None
    for f in files:
        name = Path(str(f)).name
        if name.startswith(("libmkl_rt.so", "mkl_rt")) and not name.endswith(".lib"):
            path = Path(str(f.locate())).resolve()
            if path.exists():
                return path
    return None


def _intel_cpu() -> bool:
    try:
        return "GenuineIntel" in Path("/proc/cpuinfo").read_text()
    except OSError:
        return "Intel" in platform.processor()


def _torch_would_bind_to_it() -> bool:
    """PyTorch is installed but not imported (one imported already is bound to its own MKL)."""
    return "torch" not in sys.modules and importlib.util.find_spec("torch") is not None


def _describe(backend: str, path: Path) -> Library:
    """The threadpoolctl record of the library at ``path``."""
    from threadpoolctl import threadpool_info

    real = path.resolve()
    for info in threadpool_info():
        if Path(info["filepath"]).resolve() == real:
            return Library(backend, str(info.get("version") or "unknown"), str(real),
                           str(info.get("architecture") or ""))  # fmt: skip
    return Library(backend, "unknown", str(real))


def _mkl(path: Path) -> tuple[dict[str, int], Library]:
    """Addresses of MKL's Fortran sgemm/dgemm, MKL set to LP64 and sequential."""
    lib = ctypes.CDLL(str(path))
    lib.MKL_Set_Interface_Layer(_MKL_INTERFACE_LP64)  # 32-bit integers, as the kernels pass
    lib.MKL_Set_Threading_Layer(_MKL_THREADING_SEQUENTIAL)
    addresses = {n: ctypes.cast(getattr(lib, f"{n}_"), ctypes.c_void_p).value
                 for n in ("sgemm", "dgemm")}  # fmt: skip
    return addresses, _describe("mkl", path)


def _capsule_address(capsule: object) -> int:
    """The function pointer in a Cython ``__pyx_capi__`` capsule."""
    api = ctypes.pythonapi
    api.PyCapsule_GetName.restype = ctypes.c_char_p
    api.PyCapsule_GetName.argtypes = [ctypes.py_object]
    api.PyCapsule_GetPointer.restype = ctypes.c_void_p
    api.PyCapsule_GetPointer.argtypes = [ctypes.py_object, ctypes.c_char_p]
    return api.PyCapsule_GetPointer(capsule, api.PyCapsule_GetName(capsule))


def _openblas() -> tuple[dict[str, int], Library]:
    """Addresses of sgemm/dgemm in SciPy's Cython BLAS API, which calls the OpenBLAS that SciPy
    ships (the library file of the scipy distribution that threadpoolctl finds loaded)."""
    from scipy.linalg import cython_blas
    from threadpoolctl import threadpool_info

    addresses = {n: _capsule_address(cython_blas.__pyx_capi__[n]) for n in ("sgemm", "dgemm")}
    shipped = {Path(str(f)).name: f for f in metadata.files("scipy") or []}
    for info in threadpool_info():
        path = Path(info["filepath"]).resolve()
        own = shipped.get(Path(info["filepath"]).name)
        if info["internal_api"] == "openblas" and own and Path(str(own.locate())).resolve() == path:
            return addresses, _describe("openblas", path)
    return addresses, Library("openblas", "unknown", str(Path(cython_blas.__file__).resolve()))
