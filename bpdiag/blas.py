"""The matrix product the kernels call: ``gemm(A, ta, B, tb, C)``, C = op(A) op(B), on the
calling thread only.

Which library computes it is chosen once per process, at import:

- ``mkl``: Intel's MKL (a dependency on x86-64 Linux), sequential. At these nets' sizes
  (128–1024 wide, one thread) its GEMMs ran 1.1–1.6× faster than OpenBLAS's on an Intel Xeon.
  The default on Intel CPUs, unless PyTorch is installed but not imported yet: MKL loads its
  parts into the global symbol scope, and a PyTorch imported afterwards binds the MKL linked
  into it to them (its GEMMs then ran on one thread). Import torch before bpdiag to have both.
- ``openblas``: otherwise, the OpenBLAS SciPy ships (the one Numba's ``np.dot`` calls; its
  threads as configured). MKL on other vendors' CPUs is not measured here.

``BPDIAG_BLAS=mkl|openblas`` overrides the choice. The kernels call the Fortran-ABI symbols
``bpdiag_sgemm``/``bpdiag_dgemm``, bound here to the chosen library's ``?gemm``; compiled code
names the symbol and not an address, so kernels in Numba's on-disk cache stay valid whichever
library a later process picks.
"""

from __future__ import annotations

import ctypes
import importlib.util
import os
import platform
import sys
from importlib import metadata
from pathlib import Path

import llvmlite.binding as llvm
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

BACKENDS = ("mkl", "openblas")
GEMMS = ("sgemm", "dgemm")
_MKL_THREADING_SEQUENTIAL, _MKL_INTERFACE_LP64 = 1, 0
_N, _T = ord("N"), ord("T")


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


def _capsule_address(capsule: object) -> int:
    """The function pointer in a Cython ``__pyx_capi__`` capsule."""
    api = ctypes.pythonapi
    api.PyCapsule_GetName.restype = ctypes.c_char_p
    api.PyCapsule_GetName.argtypes = [ctypes.py_object]
    api.PyCapsule_GetPointer.restype = ctypes.c_void_p
    api.PyCapsule_GetPointer.argtypes = [ctypes.py_object, ctypes.c_char_p]
    return api.PyCapsule_GetPointer(capsule, api.PyCapsule_GetName(capsule))


def _mkl(path: Path) -> tuple[dict[str, int], str]:
    """Addresses of MKL's Fortran sgemm/dgemm, MKL set to LP64 and sequential; its version."""
    lib = ctypes.CDLL(str(path))
    lib.MKL_Set_Interface_Layer(_MKL_INTERFACE_LP64)  # 32-bit integers, as passed below
    lib.MKL_Set_Threading_Layer(_MKL_THREADING_SEQUENTIAL)
    buf = ctypes.create_string_buffer(256)
    lib.MKL_Get_Version_String(buf, len(buf))
    addresses = {n: ctypes.cast(getattr(lib, f"{n}_"), ctypes.c_void_p).value for n in GEMMS}
    return addresses, buf.value.decode(errors="replace").strip()


def _torch_would_bind_to_it() -> bool:
    """PyTorch is installed but not imported (one imported already is bound to its own MKL)."""
    return "torch" not in sys.modules and importlib.util.find_spec("torch") is not None


def _openblas() -> tuple[dict[str, int], str]:
    """Addresses of the sgemm/dgemm in SciPy's Cython BLAS API (Numba's ``np.dot`` calls them)."""
    from scipy.linalg import cython_blas

    addresses = {n: _capsule_address(cython_blas.__pyx_capi__[n]) for n in GEMMS}
    return addresses, "the OpenBLAS SciPy ships"


def _bind() -> tuple[str, str]:
    """Bind ``bpdiag_sgemm``/``bpdiag_dgemm``; returns (backend, its version)."""
    wanted = os.environ.get("BPDIAG_BLAS", "").strip().lower() or None
    if wanted is not None and wanted not in BACKENDS:
        raise ValueError(f"BPDIAG_BLAS must be one of {', '.join(BACKENDS)}, got {wanted!r}")
    path = _mkl_library() if wanted != "openblas" else None
    backend, found = "openblas", None
    if wanted == "mkl":
        if path is None:
            raise ValueError("BPDIAG_BLAS is 'mkl', but the mkl package is not installed")
        backend, found = "mkl", _mkl(path)
    elif path is not None and _intel_cpu() and not _torch_would_bind_to_it():
        try:
            backend, found = "mkl", _mkl(path)
        except (OSError, AttributeError):  # an MKL too old or broken to use: SciPy's OpenBLAS
            backend = "openblas"
    addresses, version = found if backend == "mkl" else _openblas()
    for name, address in addresses.items():
        llvm.add_symbol(f"bpdiag_{name}", address)
    return backend, version


BACKEND, VERSION = _bind()


@intrinsic
def _fortran_gemm(typingctx, transa, transb, m, n, k, A, lda, B, ldb, C, ldc):
    """Column-major C (m × n) = op(A) op(B) by the bound Fortran ?gemm (alpha 1, beta 0);
    transa/transb are ord('N') or ord('T'). The scalars go by pointer, on the stack."""
    sig = types.void(transa, transb, m, n, k, A, lda, B, ldb, C, ldc)

    def codegen(context, builder, signature, args):
        i8p = ir.IntType(8).as_pointer()
        fnty = ir.FunctionType(ir.VoidType(), [i8p] * 13)
        name = "bpdiag_dgemm" if C.dtype == types.float64 else "bpdiag_sgemm"
        fn = cgutils.get_or_insert_function(builder.module, fnty, name)

        def by_ref(value):
            return builder.bitcast(cgutils.alloca_once_value(builder, value), i8p)

        def int_ref(value, width=32):
            return by_ref(builder.trunc(value, ir.IntType(width)))

        def data(value, aty):
            return builder.bitcast(context.make_array(aty)(context, builder, value).data, i8p)

        ta, tb, m_, n_, k_, a, lda_, b, ldb_, c, ldc_ = args
        one = by_ref(context.get_constant(C.dtype, 1.0))
        zero = by_ref(context.get_constant(C.dtype, 0.0))
        builder.call(fn, [int_ref(ta, 8), int_ref(tb, 8), int_ref(m_), int_ref(n_), int_ref(k_),
                          one, data(a, A), int_ref(lda_), data(b, B), int_ref(ldb_), zero,
                          data(c, C), int_ref(ldc_)])  # fmt: skip
        return context.get_dummy_value()

    return sig, codegen


@njit(cache=True, inline="always")
def gemm(A, ta, B, tb, C):
    """C = op(A) op(B) with op(X) = Xᵀ where the flag is True; A, B, C C-contiguous 2-D of one
    float dtype, C (m, n). Row-major C is column-major Cᵀ = op(B)ᵀ op(A)ᵀ, which is the call."""
    m, n = C.shape
    k = A.shape[0] if ta else A.shape[1]
    _fortran_gemm(_T if tb else _N, _T if ta else _N, n, m, k, B, B.shape[1], A, A.shape[1], C, n)
