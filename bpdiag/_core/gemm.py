"""The matrix products the kernels call: ``gemm(A, ta, B, tb, C)``, C = op(A) op(B), and
``gemm_add``, C += op(A) op(B), on the calling thread.

Compiled code calls the Fortran-ABI symbols ``bpdiag_sgemm``/``bpdiag_dgemm`` by name, not by
address, so kernels in Numba's on-disk cache stay valid whichever BLAS a later process binds to
those names (``bpdiag.blas`` chooses and binds one before the first kernel runs).
"""

from __future__ import annotations

from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic

SYMBOLS = {"sgemm": "bpdiag_sgemm", "dgemm": "bpdiag_dgemm"}
_N, _T = ord("N"), ord("T")


@intrinsic
def _fortran_gemm(typingctx, transa, transb, m, n, k, A, lda, B, ldb, beta, C, ldc):
    """Column-major C (m × n) = op(A) op(B) + beta C by the bound Fortran ?gemm (alpha 1);
    transa/transb are ord('N') or ord('T'). The scalars go by pointer, on the stack."""
    sig = types.void(transa, transb, m, n, k, A, lda, B, ldb, beta, C, ldc)

    def codegen(context, builder, signature, args):
        i8p = ir.IntType(8).as_pointer()
        fnty = ir.FunctionType(ir.VoidType(), [i8p] * 13)
        name = SYMBOLS["dgemm" if C.dtype == types.float64 else "sgemm"]
        fn = cgutils.get_or_insert_function(builder.module, fnty, name)

        def by_ref(value):
            return builder.bitcast(cgutils.alloca_once_value(builder, value), i8p)

        def int_ref(value, width=32):
            return by_ref(builder.trunc(value, ir.IntType(width)))

        def data(value, aty):
            return builder.bitcast(context.make_array(aty)(context, builder, value).data, i8p)

        ta, tb, m_, n_, k_, a, lda_, b, ldb_, beta_, c, ldc_ = args
        one = by_ref(context.get_constant(C.dtype, 1.0))
        beta_c = by_ref(context.cast(builder, beta_, beta, C.dtype))
        builder.call(fn, [int_ref(ta, 8), int_ref(tb, 8), int_ref(m_), int_ref(n_), int_ref(k_),
                          one, data(a, A), int_ref(lda_), data(b, B), int_ref(ldb_), beta_c,
                          data(c, C), int_ref(ldc_)])  # fmt: skip
        return context.get_dummy_value()

    return sig, codegen


@njit(cache=True, inline="always")
def _ld(X):
    """The leading dimension of a 2-D array whose rows are contiguous (elements between rows)."""
    return max(X.strides[0] // X.itemsize, 1)


@njit(cache=True, inline="always")
def gemm(A, ta, B, tb, C):
    """C = op(A) op(B) with op(X) = Xᵀ where the flag is True; A, B, C 2-D of one float dtype,
    each row contiguous (C-contiguous, or a block of columns of such an array), C (m, n).
    Row-major C is column-major Cᵀ = op(B)ᵀ op(A)ᵀ, which is the call."""
    m, n = C.shape
    k = A.shape[0] if ta else A.shape[1]
    _fortran_gemm(_T if tb else _N, _T if ta else _N, n, m, k, B, _ld(B), A, _ld(A), 0.0, C,
                  _ld(C))  # fmt: skip


@njit(cache=True, inline="always")
def gemm_add(A, ta, B, tb, C):
    """C += op(A) op(B), as ``gemm``."""
    m, n = C.shape
    k = A.shape[0] if ta else A.shape[1]
    _fortran_gemm(_T if tb else _N, _T if ta else _N, n, m, k, B, _ld(B), A, _ld(A), 1.0, C,
                  _ld(C))  # fmt: skip


@njit(parallel=True, cache=True)
def touch_buffers(A, C):
    """C[t] = A[t] A[t] for t < T, each on a thread of its own (A, C: (T, n, n)): with T equal
    to Numba's thread count and the BLAS on one thread, a product on each thread (``blas.warm``
    says why)."""
    for t in prange(A.shape[0]):
        gemm(A[t], False, A[t], False, C[t])
