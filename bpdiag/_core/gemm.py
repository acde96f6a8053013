"""The matrix products the kernels call: ``gemm(A, ta, B, tb, C)``, C = op(A) op(B), and
``gemm_add``, C += op(A) op(B), on the calling thread.

Two engines, one result to rounding:

- ``tiled``, C (+)= op(A) op(B) on C's whole strips of columns (the forward pass's a_{l−1}
  W_lᵀ, the backward pass's δ_l W_l and δ_lᵀ a_{l−1}): register tiles of ``MR`` rows (a
  strip's last tile may have fewer) by ``NV`` vectors of C (AVX2's or AVX-512's), one
  multiply-add of a broadcast element of A and a vector of op(B) at a time, each strip of
  op(B) copied into a contiguous block on the stack while its first tile reads it (gathering
  Wᵀ's columns one element at a time). At the step's shapes (C up to a few hundred rows) it
  skips what a BLAS call spends on packing both operands and clearing C: on the AVX2 EPYC
  host 35–38 GFLOP/s on one core where OpenBLAS's sgemm runs 22–35, dgemm 17–19 against
  11–17, and for a Wᵀ 19–37 against 16–35 (sgemm), 13–19 against 12–15 (dgemm); on the
  AVX-512 EPYC host 1.1–1.5× OpenBLAS's rate from 64 × 128 × 128 to 128 × 256 × 256 in
  float32, 1.1–1.3× in float64 (``docs/performance.md``).
- The BLAS: the columns of C past its last whole strip (a width of 200), small products
  OpenBLAS runs without packing, or B's rows (or a transposed A's) far apart (more than 1 KiB
  on AVX2 hosts; on AVX-512 hosts 4 KiB in float64, never in float32); and every product on
  hosts without AVX2 and FMA (``_tiles``).

Compiled code calls both by name, not by address: the Fortran-ABI ``bpdiag_sgemm``/
``bpdiag_dgemm`` and the tiles' C-ABI ``bpdiag_tiles_f32``/``bpdiag_tiles_f64``, so kernels in
Numba's on-disk cache stay valid whichever BLAS a later process binds to those names
(``bpdiag.blas`` chooses and binds one, and the tiles, before the first kernel runs), and the
tiles are compiled once per dtype instead of inlined into every kernel that multiplies.
"""

from __future__ import annotations

import functools

from llvmlite import binding as llvm
from llvmlite import ir
from numba import cfunc, njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic

SYMBOLS = {"sgemm": "bpdiag_sgemm", "dgemm": "bpdiag_dgemm"}
_N, _T = ord("N"), ord("T")


def _host_features() -> set[str]:
    """The CPU features LLVM compiles for on this host (empty where it cannot tell). Numba's
    on-disk cache keys its kernels by them, so a cached kernel made its choices below on the
    kind of machine that runs it."""
    try:
        features = llvm.get_host_cpu_features()
    except RuntimeError:  # features unknown
        return set()
    return {name for name, on in features.items() if on}


_HOST = _host_features()
AVX512 = "avx512f" in _HOST
# The tiles need AVX2 and FMA (without FMA a tile's ``llvm.fma`` would be a library call);
# they were measured to beat OpenBLAS on the AVX2 EPYC host (Haswell kernels) and, with
# AVX-512's registers, on the AVX-512 EPYC host (SkylakeX kernels) (``docs/performance.md``).
TILES = {"avx2", "fma"} <= _HOST  # ``gemm`` takes the tiles where they pay; ``tiled`` runs anywhere
VECTOR_BYTES = 64 if AVX512 else 32  # a vector of the tiles: a zmm or a ymm register
MR, NV = (8, 2) if AVX512 else (4, 2)  # a tile: MR rows by NV vectors of C, MR·NV accumulators
# in registers (16 of AVX-512's 32, 8 of AVX2's 16)
KC_BYTES, MC = 1024, 128  # a block: KC_BYTES / itemsize of the sum's terms (a packed strip
# stays in L1) by MC rows of C
ROW_BYTES = 1024  # rows further apart go to the BLAS (``_tiles``), but on AVX-512 hosts;
# ``tiled`` packs such a gathered Wᵀ's strips apart, along W's rows
ANY_ROWS_F32 = AVX512  # float32 takes the tiles whatever its rows' distance, and
ROW_BYTES_F64 = 4096 if AVX512 else ROW_BYTES  # float64 up to 4 KiB (width 512)
C_AHEAD = 32  # a tile that adds into C prefetches C's lines this many terms before its end:
# C comes back from L3 (XL float32 steps 0.95–0.98 of the time without in six A/Bs of seven,
# wide 0.97–1.00, on the Zen 4 host; AVX2 hosts unmeasured)
READ_AHEAD_BYTES = 2**17  # a block of B (as it is) larger than this is read through in order
# before its strips' tiles (``_read_ahead``): L's 256 KiB blocks (steps 0.90–0.97 of the time
# without on the Zen 4 host), not M's 64 KiB (1.04: they come from L3, not memory)
# Below these m·n·k the BLAS is faster (see ``_tiles``): for B as it is, and for B transposed.
MIN_WORK, MIN_WORK_T = (2**20, 2**17) if AVX512 else (0, 0)


def _make_tile(gather: bool):
    """``_tile``: one tile, B's rows contiguous (a row of the strip is NV vector loads); with
    ``gather``, ``_tile_gather``: B's columns contiguous (B = Wᵀ read from W), each element
    of the strip loaded alone, so it only pays in the tile that packs the strip."""

    @intrinsic(prefer_literal=True)
    def tile(typingctx, A, a_off, a_rs, a_ks, B, b_off, ldb, C, c_off, ldc, K, add, P, pack,
             rows):  # fmt: skip
        """C[c_off + r·ldc + j] (+ if add)= Σ_{k<K} A[a_off + r·a_rs + k·a_ks] · B_kj for
        r < rows ≤ MR, j < NV·VW (VW elements a vector), with B_kj = B[b_off + k·ldb + j], or
        B[b_off + k + j·ldb] if gathering; flat element offsets into the data of A, B, C and P
        (each an array or a pointer). With ``pack`` each row of the strip read is also stored at
        P[k·NV·VW], so later tiles read it contiguously (P as B, ldb = NV·VW). ``rows`` is the
        constant MR for a whole tile; a tile of fewer rows (a strip's last) computes its last
        row in the MR − rows others too and stores none of them (a code of its own: the whole
        tile's row offsets stay constant multiples of a_rs, which x86 addresses take as they
        are, where a row count known only at run time cost L and M steps 4 %)."""
        whole = isinstance(rows, types.IntegerLiteral) and rows.literal_value == MR
        args = [types.unliteral(a) for a in (A, a_off, a_rs, a_ks, B, b_off, ldb, C, c_off, ldc,
                                             K, add, P, pack)]  # fmt: skip
        sig = types.void(*args, rows if whole else types.unliteral(rows))
        return sig, functools.partial(_tile_code, gather, A, B, C, P)

    return tile


def _tile_code(gather, A, B, C, P, context, builder, signature, args):
    """LLVM IR of a tile: MR·NV vector accumulators, an FMA of a broadcast element of A and a
    vector of B's strip each, added to (or stored in) C at the end. A tile that adds prefetches
    its C lines ``C_AHEAD`` terms before the end: a block of terms comes back to a tile of C
    only after all of C (a megabyte a thread at XL), whose lines are by then in L3, and the
    adds waited on them."""
    A_, a0, a_rs_, a_ks_, B_, b0, ldb_, C_, c0, ldc_, K_, add_, P_, pack_, rows_ = args
    dt = context.get_data_type(C.dtype)
    size = context.get_abi_sizeof(dt)
    vw = VECTOR_BYTES // size
    vt, vp = ir.VectorType(dt, vw), ir.VectorType(dt, vw).as_pointer()
    i32, i64 = ir.IntType(32), ir.IntType(64)
    fma = cgutils.get_or_insert_function(builder.module, ir.FunctionType(vt, [vt] * 3),
                                         f"llvm.fma.v{vw}f{8 * size}")  # fmt: skip

    def data(value, aty):
        if isinstance(aty, types.CPointer):
            return value
        return context.make_array(aty)(context, builder, value).data

    def const(value):
        return ir.Constant(i64, value)

    def nonzero(flag):
        return builder.icmp_unsigned("!=", flag, ir.Constant(flag.type, 0))

    pa = builder.gep(data(A_, A), [a0])
    pb = builder.gep(data(B_, B), [b0])
    pc = builder.gep(data(C_, C), [c0])
    pp = data(P_, P)
    i8p = ir.IntType(8).as_pointer()
    prefetch = cgutils.get_or_insert_function(
        builder.module, ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32]), "llvm.prefetch.p0i8"
    )
    acc = [[cgutils.alloca_once(builder, vt) for _ in range(NV)] for _ in range(MR)]
    for row in acc:
        for slot in row:
            builder.store(ir.Constant(vt, [0.0] * vw), slot)
    undef = ir.Constant(vt, ir.Undefined)
    splat = ir.Constant(ir.VectorType(i32, vw), [0] * vw)
    if isinstance(signature.args[-1], types.IntegerLiteral):  # a whole tile
        live = [None] * MR
        a_row = [builder.mul(const(r), a_rs_) for r in range(MR)]
    else:  # rows past C's last read its last row of A, and are not stored
        rows = context.cast(builder, rows_, signature.args[-1], types.int64)
        live = [builder.icmp_signed("<", const(r), rows) for r in range(MR)]
        last = builder.sub(rows, const(1))
        a_row = [builder.mul(builder.select(live[r], const(r), last), a_rs_) for r in range(MR)]

    def term(k):
        """Σ_k's term k: the strip's row k (loaded, or gathered; stored in P if packing) times
        A's column k, into the accumulators."""
        if gather:
            b_col = builder.gep(pb, [k])
            bv = []
            for v in range(NV):
                vec = undef
                for lane in range(vw):
                    q = builder.gep(b_col, [builder.mul(const(v * vw + lane), ldb_)])
                    vec = builder.insert_element(vec, builder.load(q), ir.Constant(i32, lane))
                bv.append(vec)
        else:
            b_row = builder.gep(pb, [builder.mul(k, ldb_)])
            bv = [builder.load(builder.bitcast(builder.gep(b_row, [const(v * vw)]), vp), align=size)
                  for v in range(NV)]  # fmt: skip
        with builder.if_then(nonzero(pack_)):
            p_row = builder.gep(pp, [builder.mul(k, const(NV * vw))])
            for v in range(NV):
                builder.store(bv[v], builder.bitcast(builder.gep(p_row, [const(v * vw)]), vp),
                              align=size)  # fmt: skip
        a_col = builder.gep(pa, [builder.mul(k, a_ks_)])
        for r in range(MR):
            s = builder.load(builder.gep(a_col, [a_row[r]]))
            s = builder.shuffle_vector(builder.insert_element(undef, s, ir.Constant(i32, 0)),
                                       undef, splat)  # fmt: skip
            for v in range(NV):
                builder.store(builder.call(fma, [s, bv[v], builder.load(acc[r][v])]), acc[r][v])

    zero = const(0)
    k1 = builder.sub(K_, const(C_AHEAD))
    k1 = builder.select(builder.icmp_signed("<", k1, zero), zero, k1)
    with cgutils.for_range_slice(builder, zero, k1, const(1)) as (k, _):
        term(k)
    with builder.if_then(nonzero(add_)):  # read, to the cache nearest the core
        for r in range(MR):  # (a prefetch past C's rows is a hint, and never faults)
            c_row = builder.gep(pc, [builder.mul(const(r), ldc_)])
            for v in range(NV):
                line = builder.bitcast(builder.gep(c_row, [const(v * vw)]), i8p)
                builder.call(prefetch, [line, ir.Constant(i32, 0), ir.Constant(i32, 3),
                                        ir.Constant(i32, 1)])  # fmt: skip
    with cgutils.for_range_slice(builder, k1, K_, const(1)) as (k, _):
        term(k)
    for r in range(MR):
        whole = live[r] is None
        with builder.if_then(cgutils.true_bit if whole else live[r], likely=True):
            c_row = builder.gep(pc, [builder.mul(const(r), ldc_)])
            for v in range(NV):
                ptr = builder.bitcast(builder.gep(c_row, [const(v * vw)]), vp)
                with builder.if_then(nonzero(add_)):
                    builder.store(builder.fadd(builder.load(ptr, align=size),
                                               builder.load(acc[r][v])), acc[r][v])  # fmt: skip
                builder.store(builder.load(acc[r][v]), ptr, align=size)
    return context.get_dummy_value()


@intrinsic
def _pack_t(typingctx, B, b_off, ldb, P, K):
    """P[k·NV·VW + c] = B[b_off + c·ldb + k] for c < NV·VW (VW elements a vector), k < K
    rounded down to VW: a strip of Wᵀ packed from W's rows, VW × VW blocks read along the
    rows and transposed in registers (log₂ VW rounds of shuffles)."""
    sig = types.void(B, b_off, ldb, P, K)

    def codegen(context, builder, signature, args):
        B_, b0, ldb_, P_, K_ = args
        dt = context.get_data_type(P.dtype)
        size = context.get_abi_sizeof(dt)
        vw = VECTOR_BYTES // size
        vp = ir.VectorType(dt, vw).as_pointer()
        i64, mask = ir.IntType(64), ir.VectorType(ir.IntType(32), vw)
        pb = builder.gep(B_, [b0])
        nk = builder.sdiv(K_, ir.Constant(i64, vw))
        with cgutils.for_range(builder, nk) as loop:
            k = builder.mul(loop.index, ir.Constant(i64, vw))
            for cb in range(NV):
                rows = []
                for i in range(vw):
                    q = builder.gep(pb, [builder.add(builder.mul(ir.Constant(i64, cb * vw + i),
                                                                 ldb_), k)])  # fmt: skip
                    rows.append(builder.load(builder.bitcast(q, vp), align=size))
                d = 1
                while d < vw:
                    lo = [j if not j & d else vw + j - d for j in range(vw)]
                    hi = [j + d if not j & d else vw + j for j in range(vw)]
                    for i in range(vw):
                        if i & d:
                            continue
                        a, c = rows[i], rows[i + d]
                        rows[i] = builder.shuffle_vector(a, c, ir.Constant(mask, lo))
                        rows[i + d] = builder.shuffle_vector(a, c, ir.Constant(mask, hi))
                    d *= 2
                for i in range(vw):
                    row = builder.add(k, ir.Constant(i64, i))
                    q = builder.gep(P_, [builder.add(builder.mul(row, ir.Constant(i64, NV * vw)),
                                                     ir.Constant(i64, cb * vw))])  # fmt: skip
                    builder.store(rows[i], builder.bitcast(q, vp), align=size)
        return context.get_dummy_value()

    return sig, codegen


@njit(cache=True, inline="always")
def _read_ahead(B, off, ldb, rows, cols, line, P):
    """Read B[off + r·ldb, + cols) for r < rows once, a load every ``line`` elements, in address
    order, where the hardware prefetchers follow: in a step, B (W_l, or a layer's activations)
    comes from L3 or memory, and the strips' packing tiles, which read a row of it every MR·NV
    FMAs (AVX-512's: 2 lines every 16), wait on it (measured on AVX-512 hosts only). P[0] is
    written only if the sum of the loads is 1e-30, so that LLVM keeps them; the packing then
    overwrites P before anything reads it."""
    s = 0.0
    for r in range(rows):
        row = off + r * ldb
        for c in range(0, cols, line):
            s += B[row + c]
        s += B[row + cols - 1]
    if s == 1.0e-30:
        P[0] = 0.0


_tile = _make_tile(gather=False)
_tile_gather = _make_tile(gather=True)


@intrinsic
def _strip(typingctx, C):
    """A pointer to room for a packed strip of B (``KC_BYTES`` / itemsize rows of ``tile_cols``
    elements of C's dtype) on the calling function's stack: no allocation per product. The
    room is typed as an array of the tiles' vectors, not of elements: LLVM's time to compile a
    function grows with an alloca's element count (a 32 KiB float32 strip as 8192 floats took
    8.9 s per ``tiled`` on the AVX-512 host, as 512 vectors 1.0 s)."""
    sig = types.CPointer(C.dtype)(C)

    def codegen(context, builder, signature, args):
        dt = context.get_data_type(C.dtype)
        size = context.get_abi_sizeof(dt)
        vw = VECTOR_BYTES // size
        vectors = (KC_BYTES // size) * NV
        room = cgutils.alloca_once(builder, ir.ArrayType(ir.VectorType(dt, vw), vectors))
        room.align = 64
        return builder.bitcast(room, dt.as_pointer())

    return sig, codegen


@intrinsic
def _fortran_gemm(typingctx, transa, transb, m, n, k, A, a0, lda, B, ldb, beta, C, c0, ldc):
    """Column-major C (m × n) = op(A) op(B) + beta C by the bound Fortran ?gemm (alpha 1), A
    and C from element a0 and c0 of their arrays' data; transa/transb are ord('N') or
    ord('T'). The scalars go by pointer, on the stack."""
    sig = types.void(transa, transb, m, n, k, A, a0, lda, B, ldb, beta, C, c0, ldc)

    def codegen(context, builder, signature, args):
        i8p = ir.IntType(8).as_pointer()
        fnty = ir.FunctionType(ir.VoidType(), [i8p] * 13)
        name = SYMBOLS["dgemm" if C.dtype == types.float64 else "sgemm"]
        fn = cgutils.get_or_insert_function(builder.module, fnty, name)

        def by_ref(value):
            return builder.bitcast(cgutils.alloca_once_value(builder, value), i8p)

        def int_ref(value, width=32):
            return by_ref(builder.trunc(value, ir.IntType(width)))

        def data(value, aty, offset=None, oty=None):
            start = context.make_array(aty)(context, builder, value).data
            if offset is not None:
                start = builder.gep(start, [context.cast(builder, offset, oty, types.intp)])
            return builder.bitcast(start, i8p)

        ta, tb, m_, n_, k_, a, a0_, lda_, b, ldb_, beta_, c, c0_, ldc_ = args
        one = by_ref(context.get_constant(C.dtype, 1.0))
        beta_c = by_ref(context.cast(builder, beta_, beta, C.dtype))
        builder.call(fn, [int_ref(ta, 8), int_ref(tb, 8), int_ref(m_), int_ref(n_), int_ref(k_),
                          one, data(a, A, a0_, a0), int_ref(lda_), data(b, B), int_ref(ldb_),
                          beta_c, data(c, C, c0_, c0), int_ref(ldc_)])  # fmt: skip
        return context.get_dummy_value()

    return sig, codegen


@njit(cache=True, inline="always")
def _ld(X):
    """The leading dimension of a 2-D array whose rows are contiguous (elements between rows)."""
    return max(X.strides[0] // X.itemsize, 1)


@njit(cache=True, inline="always")
def tile_cols(C):
    """Columns of C a tile covers: NV vectors of C's dtype."""
    return NV * VECTOR_BYTES // C.itemsize


def _blocks_for(dtype):
    """The tiles' blocked loop for one dtype as a C-ABI function, compiled once: C (m, n) (+ if
    add)= op(A) op(B) over K terms, A's element (r, k) at A[r·a_rs + k·a_ks], B's rows ldb
    apart (transposed if tb), C's ldc. The kernels call it by name (``_blocks``), so LLVM does
    not inline the tiles into every kernel that multiplies and compile them again in each
    (that was 40 s of compiling everything on the AVX-512 host). A strip of a transposed B
    whose rows are more than ``ROW_BYTES`` apart is not gathered by its first tile (each of
    ``tile_cols`` rows read one element at a time, k times, in too few of L1's sets: 0.55 of
    the BLAS's rate at 256 × 1024 × 1024 in float32) but packed apart along B's rows, VW × VW
    blocks transposed in registers (``_pack_t``), once for 4·MC rows of C. A block of B as it
    is larger than ``READ_AHEAD_BYTES`` is read through in order first (``_read_ahead``)."""
    ptr, i = types.CPointer(dtype), types.intp
    itemsize = 8 if dtype == types.float64 else 4
    vw, kc_max = VECTOR_BYTES // itemsize, KC_BYTES // itemsize
    nw = NV * vw

    @cfunc(types.void(ptr, i, i, ptr, i, i, ptr, i, i, i, i, i), cache=True)
    def blocks(A, a_rs, a_ks, B, ldb, tb, C, ldc, m, n, K, add):
        P = _strip(C)
        apart = tb != 0 and ldb * itemsize > ROW_BYTES  # pack Wᵀ's strips from W's rows
        mc = 4 * MC if apart else MC  # a strip packed apart serves 4·MC rows of C (A's 4·MC
        # rows of a block of terms: 512 KiB, in L2)
        for k0 in range(0, K, kc_max):
            kc = min(kc_max, K - k0)
            acc = add != 0 or k0 > 0
            if tb == 0 and kc * n * itemsize > READ_AHEAD_BYTES:
                _read_ahead(B, k0 * ldb, ldb, kc, n, 64 // itemsize, P)
            for i0 in range(0, m, mc):
                i1 = min(m, i0 + mc)
                for j in range(0, n, nw):
                    a0, c0 = i0 * a_rs + k0 * a_ks, i0 * ldc + j
                    r0 = i0
                    if apart:
                        _pack_t(B, j * ldb + k0, ldb, P, kc)
                        for c in range(nw):
                            for k in range(kc - kc % vw, kc):
                                P[k * nw + c] = B[(j + c) * ldb + k0 + k]
                    elif tb and i1 - i0 >= MR:
                        _tile_gather(A, a0, a_rs, a_ks, B, k0 + j * ldb, ldb, C, c0, ldc, kc, acc,
                                     P, 1, MR)  # fmt: skip
                        r0 = i0 + MR
                    elif tb:
                        _tile_gather(A, a0, a_rs, a_ks, B, k0 + j * ldb, ldb, C, c0, ldc, kc, acc,
                                     P, 1, i1 - i0)  # fmt: skip
                        r0 = i1
                    elif i1 - i0 >= MR:
                        _tile(A, a0, a_rs, a_ks, B, k0 * ldb + j, ldb, C, c0, ldc, kc, acc, P, 1,
                              MR)  # fmt: skip
                        r0 = i0 + MR
                    else:
                        _tile(A, a0, a_rs, a_ks, B, k0 * ldb + j, ldb, C, c0, ldc, kc, acc, P, 1,
                              i1 - i0)  # fmt: skip
                        r0 = i1
                    whole = i1 - (i1 - r0) % MR
                    for r in range(r0, whole, MR):
                        _tile(A, r * a_rs + k0 * a_ks, a_rs, a_ks, P, 0, nw, C, r * ldc + j, ldc,
                              kc, acc, P, 0, MR)  # fmt: skip
                    if whole < i1:  # a strip's last tile, of fewer rows
                        _tile(A, whole * a_rs + k0 * a_ks, a_rs, a_ks, P, 0, nw, C,
                              whole * ldc + j, ldc, kc, acc, P, 0, i1 - whole)  # fmt: skip

    return blocks


BLOCKS = {"float32": "bpdiag_tiles_f32", "float64": "bpdiag_tiles_f64"}


@functools.cache
def bind_tiles() -> None:
    """Compile (or load from Numba's cache) the ``_blocks_for`` functions and bind their
    symbols (``BLOCKS``): once per process, before the first kernel runs, with the BLAS
    (``bpdiag.blas.bind``), not at import (compiling would load SciPy's BLAS early)."""
    for dtype, name in BLOCKS.items():
        llvm.add_symbol(name, _blocks_for(getattr(types, dtype)).address)


@intrinsic
def _blocks(typingctx, A, a_rs, a_ks, B, ldb, tb, C, ldc, m, n, K, add):
    """Call the dtype's ``_blocks_for`` function by its symbol (``BLOCKS``) on the arrays'
    data; the integers as intp."""
    sig = types.void(A, a_rs, a_ks, B, ldb, tb, C, ldc, m, n, K, add)

    def codegen(context, builder, signature, args):
        dt = context.get_data_type(C.dtype)
        i = context.get_value_type(types.intp)
        p = dt.as_pointer()
        fnty = ir.FunctionType(ir.VoidType(), [p, i, i, p, i, i, p, i, i, i, i, i])
        fn = cgutils.get_or_insert_function(builder.module, fnty, BLOCKS[str(C.dtype)])
        out = []
        for value, ty in zip(args, signature.args, strict=True):
            if isinstance(ty, types.Array):
                out.append(context.make_array(ty)(context, builder, value).data)
            else:
                out.append(context.cast(builder, value, ty, types.intp))
        builder.call(fn, out)
        return context.get_dummy_value()

    return sig, codegen


@njit(cache=True)
def tiled(A, ta, B, tb, C, add):
    """C (+ if add)= op(A) op(B) by tiles, blocked KC_BYTES / itemsize terms by MC rows by a
    strip of ``tile_cols`` columns: C (m, n) with n a multiple of ``tile_cols`` (the last tile
    of a strip may have fewer than MR rows), k > 0 terms; rows contiguous as in ``gemm``. The
    first tile of each strip and block reads op(B) (gathering it when B is transposed) and
    packs it; the others read the packed strip (a transposed B with rows far apart: see
    ``_blocks_for``)."""
    _tiled_columns(A, ta, B, tb, C, C.shape[1], add)


@njit(cache=True, inline="always")
def _tiled_columns(A, ta, B, tb, C, n, add):
    """``tiled`` on C's first n columns (a multiple of ``tile_cols``)."""
    K = A.shape[0] if ta else A.shape[1]
    a_rs, a_ks = (1, _ld(A)) if ta else (_ld(A), 1)
    _blocks(A, a_rs, a_ks, B, _ld(B), tb, C, _ld(C), C.shape[0], n, K, add)


@njit(cache=True, inline="always")
def _tiles(A, ta, B, tb, C, k):
    """The columns (m, n0) of C (m, n) = op(A) op(B) over k terms that ``tiled`` takes, (0, 0)
    where it takes none: its whole strips (n0 = n − n mod ``tile_cols`` columns; ``gemm``
    leaves the rest to the BLAS) and all its m ≥ MR rows (the last tile of a strip may have
    fewer), on a host where the tiles pay (``TILES``), m·n0·k at least ``MIN_WORK``
    (``MIN_WORK_T`` for B transposed), and B's rows and a transposed A's within
    ``ROW_BYTES`` of each other (float64 on AVX-512 hosts ``ROW_BYTES_F64``; float32 there at
    any distance). A tile reads MR elements of each of k rows of a transposed A, and a strip's
    first tile ``tile_cols`` elements of each of k rows of B; rows further apart than that
    land in too few of L1's sets, and the BLAS, which packs both operands, is faster (one AVX2
    core: Aᵀ 256 rows of 2 KiB, dgemm 15.3 against 16.1 GFLOP/s; B rows 2 KiB apart as in L's
    δ_l W_l in float64, 10.7 against 11.6; 4 KiB in XL's float32, 21.6 against 22.8; on the
    AVX-512 host, before B was read through first, an L float64 step with B's rows 2 KiB
    apart in the tiles took 1.03–1.17× the BLAS's time). Since a gathered Wᵀ's strips are
    packed apart from W's rows and a large block of B is read through first
    (``_blocks_for``), on AVX-512 hosts float32 takes the tiles at any distance
    (``ANY_ROWS_F32``; the steps of nets of width 512–2048 took 0.84–0.93 of the BLAS's time),
    float64 up to 4 KiB (``ROW_BYTES_F64``; L and mid 0.89–0.94, XL's 8 KiB level)
    (``docs/performance.md``).
    OpenBLAS's SkylakeX kernels run products of up to 10⁶ multiply-adds without packing: for B
    as it is they beat the tiles up to 32 × 128 × 128 (0.35–0.99 of their rate), and for B
    transposed up to 16 × 64 × 64 (0.55–0.91)."""
    m, n = C.shape
    n0 = n - n % tile_cols(C)
    if not TILES or k == 0 or m < MR or n0 == 0 or m * n0 * k < (MIN_WORK_T if tb else MIN_WORK):
        return 0, 0
    if ANY_ROWS_F32 and C.itemsize == 4:
        return m, n0
    near = ROW_BYTES_F64 if C.itemsize == 8 else ROW_BYTES
    if (ta and _ld(A) * A.itemsize > near) or _ld(B) * B.itemsize > near:
        return 0, 0
    return m, n0


@njit(cache=True, inline="always")
def blas_gemm(A, ta, B, tb, C, beta):
    """C = op(A) op(B) + beta C in the bound BLAS, as ``gemm``: row-major C is column-major
    Cᵀ = op(B)ᵀ op(A)ᵀ, which is the call."""
    _blas_columns(A, ta, B, tb, C, beta, 0)


@njit(cache=True, inline="always")
def _blas_columns(A, ta, B, tb, C, beta, c0):
    """C[:, c0:] = op(A) op(B)[:, c0:] + beta C[:, c0:] in the BLAS (``blas_gemm``'s call,
    op(B) and C from their column c0)."""
    m, n = C.shape
    k = A.shape[0] if ta else A.shape[1]
    ldb = _ld(B)
    _fortran_gemm(_T if tb else _N, _T if ta else _N, n - c0, m, k, B, c0 * ldb if tb else c0,
                  ldb, A, _ld(A), beta, C, c0, _ld(C))  # fmt: skip


@njit(cache=True)
def _tiled_product(A, ta, B, tb, C, n0, add):
    """C (+ if add)= op(A) op(B) with ``tiled`` on C's first n0 columns (whole strips:
    ``_tiles``) and the BLAS on the columns past them. Not inlined: compiled once per type of
    its arguments, not again in every kernel that multiplies (inlined, compiling everything
    into an empty cache took 205–213 s, not 131–142 s), and called only where the tiles take
    a part of C, never for the smallest products."""
    _tiled_columns(A, ta, B, tb, C, n0, add)
    if n0 < C.shape[1]:
        _blas_columns(A, ta, B, tb, C, 1.0 if add else 0.0, n0)


@njit(cache=True, inline="always")
def gemm(A, ta, B, tb, C):
    """C = op(A) op(B) with op(X) = Xᵀ where the flag is True; A, B, C 2-D of one float dtype,
    each row contiguous (C-contiguous, or a block of columns of such an array), C (m, n):
    ``tiled`` on C's whole strips of columns where it takes them (``_tiles``), the BLAS on the
    rest."""
    m, n0 = _tiles(A, ta, B, tb, C, A.shape[0] if ta else A.shape[1])
    if m > 0:
        _tiled_product(A, ta, B, tb, C, n0, False)
    else:
        blas_gemm(A, ta, B, tb, C, 0.0)


@njit(cache=True, inline="always")
def gemm_add(A, ta, B, tb, C):
    """C += op(A) op(B), as ``gemm``."""
    m, n0 = _tiles(A, ta, B, tb, C, A.shape[0] if ta else A.shape[1])
    if m > 0:
        _tiled_product(A, ta, B, tb, C, n0, True)
    else:
        blas_gemm(A, ta, B, tb, C, 1.0)


@njit(parallel=True, cache=True)
def touch_buffers(A, C):
    """C[t] = A[t] A[t] for t < T, each on a thread of its own (A, C: (T, n, n)): with T equal
    to Numba's thread count and the BLAS on one thread, a product on each thread (``blas.warm``
    says why)."""
    for t in prange(A.shape[0]):
        blas_gemm(A[t], False, A[t], False, C[t], 0.0)
