"""The kernels' matrix product: numpy's result for every transpose, into blocks of flat buffers,
from either library and from the register tiles, and one on-disk cache that serves both."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from numba import njit

from bpdiag import blas
from bpdiag._core.gemm import (
    ANY_ROWS_F32,
    C_AHEAD,
    KC_BYTES,
    MC,
    MIN_WORK,
    MIN_WORK_T,
    MR,
    READ_AHEAD_BYTES,
    ROW_BYTES,
    ROW_BYTES_F64,
    TILES,
    _tiles,
    gemm,
    gemm_add,
    tile_cols,
    tiled,
)

blas.bind()  # before the first kernel that calls gemm runs


@njit(cache=True)
def _product(A, ta, B, tb, buf, off):
    """op(A) op(B) into the block of ``buf`` at ``off``, as the kernels write their products."""
    m = A.shape[1] if ta else A.shape[0]
    n = B.shape[0] if tb else B.shape[1]
    C = buf[off : off + m * n].reshape((m, n))
    gemm(A, ta, B, tb, C)


@settings(max_examples=60, deadline=None)
@given(m=st.integers(1, 40), k=st.integers(1, 40), n=st.integers(1, 40), ta=st.booleans(),
       tb=st.booleans(), dtype=st.sampled_from(["float32", "float64"]), seed=st.integers(0, 99))  # fmt: skip
def test_gemm_is_the_matrix_product(m, k, n, ta, tb, dtype, seed):
    rng = np.random.default_rng(seed)
    A = rng.normal(size=(k, m) if ta else (m, k)).astype(dtype)
    B = rng.normal(size=(n, k) if tb else (k, n)).astype(dtype)
    buf = np.full(m * n + 10, 7.0, dtype)
    _product(A, ta, B, tb, buf, 5)
    want = (A.T if ta else A).astype(np.float64) @ (B.T if tb else B).astype(np.float64)
    tol = 1e-13 if dtype == "float64" else 1e-5
    np.testing.assert_allclose(buf[5:-5].reshape(m, n), want, rtol=tol, atol=tol * np.sqrt(k))
    assert np.all(buf[:5] == 7.0) and np.all(buf[-5:] == 7.0)  # the block's neighbours untouched


@njit(cache=True)
def _column_blocks(A, a0, ta, B, b0, tb, C, c0, a_cols, b_cols, c_cols):
    """The product of column blocks of A and B into a column block of C (rows contiguous,
    strided between rows), as the two-core step takes its shares of ∂L/∂W_l."""
    gemm(A[:, a0 : a0 + a_cols], ta, B[:, b0 : b0 + b_cols], tb, C[:, c0 : c0 + c_cols])


@settings(max_examples=40, deadline=None)
@given(m=st.integers(1, 30), k=st.integers(1, 30), n=st.integers(1, 30), ta=st.booleans(),
       tb=st.booleans(), pad=st.integers(0, 5), dtype=st.sampled_from(["float32", "float64"]))  # fmt: skip
def test_gemm_takes_column_blocks(m, k, n, ta, tb, pad, dtype):
    rng = np.random.default_rng(m * 900 + k * 30 + n)
    a_shape, b_shape = ((k, m) if ta else (m, k)), ((n, k) if tb else (k, n))
    A = rng.normal(size=(a_shape[0], a_shape[1] + 2 * pad)).astype(dtype)
    B = rng.normal(size=(b_shape[0], b_shape[1] + pad)).astype(dtype)
    C = np.full((m, n + 3 * pad), 7.0, dtype)
    _column_blocks(A, pad, ta, B, pad, tb, C, pad, a_shape[1], b_shape[1], n)
    a, b = A[:, pad : pad + a_shape[1]], B[:, pad : pad + b_shape[1]]
    want = (a.T if ta else a).astype(np.float64) @ (b.T if tb else b).astype(np.float64)
    tol = 1e-13 if dtype == "float64" else 1e-5
    np.testing.assert_allclose(C[:, pad : pad + n], want, rtol=tol, atol=tol * np.sqrt(k))
    assert np.all(C[:, :pad] == 7.0) and np.all(C[:, pad + n :] == 7.0)  # the other columns


@njit(cache=True)
def _tiled_block(A, ta, B, tb, C, c0, n, add, direct):
    """op(A) op(B) into (or, with ``add``, onto) C's columns c0 … c0 + n − 1, by the tiles
    (``direct``) or by ``gemm``/``gemm_add``; and the corner of them ``gemm`` gives the tiles."""
    D = C[:, c0 : c0 + n]
    k = A.shape[0] if ta else A.shape[1]
    if direct:
        tiled(A, ta, B, tb, D, add)
    elif add:
        gemm_add(A, ta, B, tb, D)
    else:
        gemm(A, ta, B, tb, D)
    return _tiles(A, ta, B, tb, D, k)


def _assert_product_in_block(A, ta, B, tb, C, before, n, add):
    """C's columns 3 … 3 + n − 1 hold op(A) op(B) (added to ``before``'s with ``add``), to
    the dtype's rounding over the sum's terms, and the columns beside them are as before."""
    k = A.shape[0] if ta else A.shape[1]
    want = (A.T if ta else A).astype(np.float64) @ (B.T if tb else B).astype(np.float64)
    if add:
        want += before[:, 3 : 3 + n]
    tol = 1e-13 if C.dtype == np.float64 else 1e-5
    np.testing.assert_allclose(C[:, 3 : 3 + n], want, rtol=tol, atol=tol * np.sqrt(k + 1))
    assert np.array_equal(C[:, :3], before[:, :3])
    assert np.array_equal(C[:, 3 + n :], before[:, 3 + n :])


@settings(max_examples=60, deadline=None)
@given(rows=st.integers(1, 40), cols=st.integers(1, 3), k=st.integers(1, 700), ta=st.booleans(),
       tb=st.booleans(), add=st.booleans(), direct=st.booleans(),
       dtype=st.sampled_from(["float32", "float64"]), seed=st.integers(0, 99))  # fmt: skip
def test_tiles_are_the_matrix_product(rows, cols, k, ta, tb, add, direct, dtype, seed):
    """Whole tiles of C (MR rows by ``tile_cols`` columns), sums longer than a block of terms
    and C wider than a strip, B read as it is or gathered from Bᵀ, a block of C's columns:
    numpy's product, added with ``add``, and the columns beside the block untouched; by the
    tiles themselves (on any host) and by ``gemm``, which takes them where they pay."""
    rng = np.random.default_rng(seed)
    m = MR * rows
    n = int(tile_cols(np.empty((1, 1), dtype))) * cols
    A = rng.normal(size=(k, m) if ta else (m, k)).astype(dtype)
    B = rng.normal(size=(n, k) if tb else (k, n)).astype(dtype)
    C = rng.normal(size=(m, n + 5)).astype(dtype)
    before = C.copy()
    takes = _tiled_block(A, ta, B, tb, C, 3, n, add, direct)
    limit = ROW_BYTES_F64 if dtype == "float64" else ROW_BYTES
    near = (not ta or m * A.itemsize <= limit) and B.shape[1] * B.itemsize <= limit
    big = m * n * k >= (MIN_WORK_T if tb else MIN_WORK)
    tiles = TILES and (near or (ANY_ROWS_F32 and dtype == "float32")) and big
    assert takes == ((m, n) if tiles else (0, 0))
    _assert_product_in_block(A, ta, B, tb, C, before, n, add)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("tb", [False, True])
@pytest.mark.parametrize("extra", [-C_AHEAD + 1, -1, 0, 1, C_AHEAD + 3])
def test_tiles_adding_into_c_take_every_term(dtype, tb, extra):
    """A tile that adds into C runs its sum in two loops, C's lines prefetched between them
    ``C_AHEAD`` terms before the end: sums shorter than that, at the split and past it, within
    a block of terms and over two, B as it is or gathered, each term counted once."""
    rng = np.random.default_rng(7)
    kc = KC_BYTES // np.dtype(dtype).itemsize
    n = int(tile_cols(np.empty((1, 1), dtype)))
    for k in (C_AHEAD + extra, kc + C_AHEAD + extra):
        A = rng.normal(size=(MR, k)).astype(dtype)
        B = rng.normal(size=(n, k) if tb else (k, n)).astype(dtype)
        C = rng.normal(size=(MR, n)).astype(dtype)
        want = C.astype(np.float64) + A.astype(np.float64) @ (B.T if tb else B).astype(np.float64)
        tiled(A, False, B, tb, C, True)
        tol = 1e-13 if dtype == "float64" else 1e-5
        np.testing.assert_allclose(C, want, rtol=tol, atol=tol * np.sqrt(k + 1))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_tiles_pack_far_wt_strips_apart(dtype):
    """A gathered Wᵀ whose rows are further than ``ROW_BYTES`` apart is packed a strip at a
    time from W's rows (blocks transposed in registers, the terms past the last whole vector
    one by one), once for 4·MC rows of C: numpy's product for C taller than that,
    sums over several blocks of terms with a ragged last one, and W a block of a wider
    array's columns."""
    rng = np.random.default_rng(3)
    itemsize = np.dtype(dtype).itemsize
    k = 2 * KC_BYTES // itemsize + 7  # two blocks of terms and 7 more: not whole vectors
    assert k * itemsize > ROW_BYTES
    m, n = 4 * MC + 2 * MR, 3 * int(tile_cols(np.empty((1, 1), dtype)))
    A = rng.normal(size=(m, k)).astype(dtype)
    W = rng.normal(size=(n, k + 9)).astype(dtype)[:, 4 : 4 + k]
    C = np.empty((m, n), dtype)
    _tiled_block(A, False, W, True, C, 0, n, False, True)
    want = A.astype(np.float64) @ W.T.astype(np.float64)
    tol = 1e-13 if dtype == "float64" else 1e-5
    np.testing.assert_allclose(C, want, rtol=tol, atol=tol * np.sqrt(k))


@pytest.mark.parametrize(("dtype", "tiny"), [("float32", False), ("float64", False),
                                             ("float64", True)])  # fmt: skip
def test_tiles_read_large_b_blocks_ahead(dtype, tiny):
    """A block of B (as it is) larger than ``READ_AHEAD_BYTES`` is read through before its
    strips: numpy's product over two blocks of terms and a ragged third, B a block of a wider
    array's columns; and with ``tiny`` B is zero but for one element of 1e-30, so that the read's
    sum is 1e-30 and it writes the strip's first element, which the packing then overwrites."""
    rng = np.random.default_rng(5)
    itemsize = np.dtype(dtype).itemsize
    kc = KC_BYTES // itemsize
    tc = int(tile_cols(np.empty((1, 1), dtype)))
    k, n = 2 * kc + 5, tc * (READ_AHEAD_BYTES // (KC_BYTES * tc) + 1)
    assert kc * n * itemsize > READ_AHEAD_BYTES
    m = 2 * MR
    A = rng.normal(size=(m, k)).astype(dtype)
    B = rng.normal(size=(k, n + 6)).astype(dtype)[:, 2 : 2 + n]
    if tiny:
        B[...] = 0.0
        B[0, 0] = 1e-30
    C = np.empty((m, n), dtype)
    _tiled_block(A, False, B, False, C, 0, n, False, True)
    want = A.astype(np.float64) @ B.astype(np.float64)
    tol = 1e-13 if dtype == "float64" else 1e-5
    np.testing.assert_allclose(C, want, rtol=tol, atol=1e-300 if tiny else tol * np.sqrt(k))


@pytest.mark.skipif(not TILES, reason="the tiles need AVX2 and FMA")
def test_tiles_take_only_their_shapes():
    """The tiles take C = op(A) op(B)'s whole strips, its m ≥ MR rows by n − n mod ``tile_cols``
    columns (``gemm`` gives the columns past them to the BLAS); fewer than MR rows, no terms,
    strips below the BLAS's small-matrix sizes, or B's rows (or a transposed A's) far apart
    give them none."""
    f32 = np.float32
    cols = int(tile_cols(np.empty((1, 1), f32)))

    def terms(m, n, tb):  # enough terms for the product to be past the small sizes
        return max(5, -(-(MIN_WORK_T if tb else MIN_WORK) // (m * n)))

    def tiles(a_shape, ta, b_shape, tb, c_shape, k, dtype=f32):
        """Whether the tiles take C's whole strips; (0, 0) where they take none."""
        A, B, C = np.empty(a_shape, dtype), np.empty(b_shape, dtype), np.empty(c_shape, dtype)
        part = _tiles(A, ta, B, tb, C, k)
        m, n = c_shape
        whole = (m, n - n % int(tile_cols(C)))
        assert part in ((0, 0), whole)
        return part == whole

    k = terms(MR, cols, False)
    assert tiles((MR, k), False, (k, cols), False, (MR, cols), k)
    if MIN_WORK > 1:
        s = terms(MR, cols, False) - 1
        assert not tiles((MR, s), False, (s, cols), False, (MR, cols), s)  # small: the BLAS
    near, far = ROW_BYTES // 4, ROW_BYTES // 4 + MR
    m = MR * max(1, -(-MIN_WORK_T // (MR * cols * near)))  # rows enough for near terms
    assert tiles((m, near), False, (cols, near), True, (m, cols), near)  # B transposed
    if MIN_WORK_T > 1:
        assert not tiles((MR, 5), False, (cols, 5), True, (MR, cols), 5)  # small: the BLAS
    k = terms(MR, cols, False)
    assert tiles((MR + 2, k), False, (k, cols), False, (MR + 2, cols), k)  # 2 rows past a tile
    assert tiles((MR, k), False, (k, cols + 1), False, (MR, cols + 1), k)  # a column past
    assert tiles((2 * MR - 1, k), False, (k, 2 * cols - 1), False, (2 * MR - 1, 2 * cols - 1), k)
    assert not tiles((MR - 1, 2 * k), False, (2 * k, cols), False, (MR - 1, cols), 2 * k)
    assert not tiles((MR, k), False, (k, cols - 1), False, (MR, cols - 1), k)  # no whole strip
    if MIN_WORK > 1:  # the strips, not C, must be past the small sizes
        s = terms(MR, cols, False) - 1
        assert not tiles((MR, s), False, (s, 2 * cols - 1), False, (MR, 2 * cols - 1), s)
    assert not tiles((MR, 0), False, (0, cols), False, (MR, cols), 0)  # no terms
    k = terms(near, cols, False)
    assert tiles((k, near), True, (k, cols), False, (near, cols), k)
    # rows further apart than ROW_BYTES (float64's ROW_BYTES_F64): float64 goes to the BLAS,
    # float32 too but where ANY_ROWS_F32 (AVX-512 hosts), which takes them at any distance
    f64, cols64 = np.float64, int(tile_cols(np.empty((1, 1), np.float64)))
    near64, far64 = ROW_BYTES // 8, ROW_BYTES_F64 // 8 + MR
    for dtype, c, fa in ((f64, cols64, far64), (f32, cols, far)):
        far_ok = ANY_ROWS_F32 and dtype is f32
        mm = MR * max(1, -(-MIN_WORK_T // (MR * c * fa)))
        assert tiles((mm, fa), False, (c, fa), True, (mm, c), fa, dtype) == far_ok  # Bᵀ's
        k = terms(fa, c, False)
        assert tiles((k, fa), True, (k, c), False, (fa, c), k, dtype) == far_ok  # Aᵀ's
        wide = fa - MR + c  # whole strips, rows far apart
        k = terms(MR, wide, False)
        assert tiles((MR, k), False, (k, wide), False, (MR, wide), k, dtype) == far_ok  # B's
    # float64 rows within ROW_BYTES_F64 (past ROW_BYTES on AVX-512 hosts): the tiles
    mid64 = ROW_BYTES_F64 // 8
    mm = MR * max(1, -(-MIN_WORK_T // (MR * cols64 * mid64)))
    assert tiles((mm, mid64), False, (cols64, mid64), True, (mm, cols64), mid64, f64)
    k = terms(mid64, cols64, False)
    assert tiles((k, mid64), True, (k, cols64), False, (mid64, cols64), k, f64)
    k = terms(near64, cols64, False)
    assert tiles((k, near64), True, (k, cols64), False, (near64, cols64), k, f64)
    far32 = 4096 + cols  # float32 rows 16 KiB apart
    k = terms(MR, far32, False)
    assert tiles((MR, k), False, (k, far32), False, (MR, far32), k) == ANY_ROWS_F32
    assert KC_BYTES % 64 == 0 and MC % MR == 0  # blocks of whole cache lines and whole tiles


@settings(max_examples=50, deadline=None)
@example(rows=3, extra_rows=5, cols=1, extra_cols=7, ta=False, tb=True, add=True,
         direct=False, dtype="float32", seed=0)  # fmt: skip
@example(rows=3, extra_rows=1, cols=2, extra_cols=9, ta=True, tb=False, add=False,
         direct=False, dtype="float64", seed=1)  # fmt: skip
@example(rows=0, extra_rows=3, cols=1, extra_cols=0, ta=False, tb=False, add=True,
         direct=True, dtype="float32", seed=2)  # fmt: skip
@given(rows=st.integers(0, 3), extra_rows=st.integers(0, MR - 1), cols=st.integers(1, 2),
       extra_cols=st.integers(0, 31), ta=st.booleans(), tb=st.booleans(), add=st.booleans(),
       direct=st.booleans(), dtype=st.sampled_from(["float32", "float64"]),
       seed=st.integers(0, 99))  # fmt: skip
def test_tiles_take_ragged_c(rows, extra_rows, cols, extra_cols, ta, tb, add, direct, dtype,
                             seed):  # fmt: skip
    """C with rows past its last whole tile (a batch of 100 rows: a strip's last tile has
    fewer than MR) and columns past its last whole strip (a width of 200: the BLAS takes
    them), by ``gemm``/``gemm_add`` or (whole strips) by the tiles themselves: numpy's product
    (added with ``add``) in every element, the columns beside C and the rows below untouched."""
    rng = np.random.default_rng(seed)
    tc = int(tile_cols(np.empty((1, 1), dtype)))
    m = max(1, MR * rows + extra_rows)
    n = tc * cols + (0 if direct else extra_cols % tc)
    k = max(5, -(-max(MIN_WORK, MIN_WORK_T) // (m * (n - n % tc))))  # past the small sizes
    A = rng.normal(size=(k, m) if ta else (m, k)).astype(dtype)
    B = rng.normal(size=(n, k) if tb else (k, n)).astype(dtype)
    whole = rng.normal(size=(m + MR, n + 5)).astype(dtype)  # C and MR rows below it
    C, below = whole[:m], whole[m:].copy()
    before = C.copy()
    part = _tiled_block(A, ta, B, tb, C, 3, n, add, direct)
    assert np.array_equal(whole[m:], below)
    assert part in ((0, 0), (m, n - n % tc))
    near = ROW_BYTES_F64 if dtype == "float64" else ROW_BYTES
    far = (ta and m * A.itemsize > near) or (k if tb else n) * B.itemsize > near
    tiles = TILES and m >= MR and (not far or (ANY_ROWS_F32 and dtype == "float32"))
    assert (part != (0, 0)) == tiles
    _assert_product_in_block(A, ta, B, tb, C, before, n, add)


SCRIPT = textwrap.dedent("""
    import json, numpy as np
    from numba import njit
    from bpdiag import blas
    from bpdiag._core.gemm import gemm

    library = blas.bind()

    @njit(cache=True)
    def product(A, ta, B, tb, C):
        gemm(A, ta, B, tb, C)

    rng, error = np.random.default_rng(0), 0.0
    for dtype in ("float32", "float64"):
        for m, k, n in ((30, 20, 10), (1, 7, 5), (64, 128, 33), (32, 300, 64)):
            for ta in (False, True):
                for tb in (False, True):
                    A = rng.normal(size=(k, m) if ta else (m, k)).astype(dtype)
                    B = rng.normal(size=(n, k) if tb else (k, n)).astype(dtype)
                    C = np.empty((m, n), dtype)
                    product(A, ta, B, tb, C)
                    want = (A.T if ta else A).astype(float) @ (B.T if tb else B).astype(float)
                    tol = 1e-13 if dtype == "float64" else 1e-5
                    error = max(error, float(np.abs(C - want).max() / (tol * np.sqrt(k))))
    print(json.dumps({"backend": library.backend, "error": error,
                      "hits": sum(product.stats.cache_hits.values())}))
""")


def _run(tmp_path, backend):
    script = tmp_path / "product.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "BPDIAG_BLAS": backend, "NUMBA_CACHE_DIR": str(tmp_path / "cache")}
    res = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)


@pytest.mark.skipif(blas._mkl_library() is None, reason="mkl is not installed")
def test_one_cache_serves_either_library(tmp_path):
    """MKL's product is numpy's for every transpose and dtype (errors in units of the tolerance),
    and compiled code names the symbol, not a library's address: a kernel cached by a process
    that chose one library runs right in a process that chose the other."""
    first = _run(tmp_path, "mkl")
    second = _run(tmp_path, "openblas")
    assert (first["backend"], second["backend"]) == ("mkl", "openblas")
    assert first["hits"] == 0 and second["hits"] > 0
    assert first["error"] < 1 and second["error"] < 1


def test_touch_buffers_is_one_product_per_slice():
    from bpdiag._core.gemm import touch_buffers

    A = np.random.default_rng(0).normal(size=(3, 17, 17)).astype(np.float32)
    C = np.empty_like(A)
    touch_buffers(A, C)
    for t in range(3):
        np.testing.assert_allclose(C[t], A[t].astype(np.float64) @ A[t], rtol=1e-5, atol=1e-5)
