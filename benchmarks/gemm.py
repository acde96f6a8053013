"""The layers' three products on one thread: bpdiag's register tiles against the bound BLAS.

    python benchmarks/gemm.py                    # the step's shapes, both dtypes
    python benchmarks/gemm.py --dtypes float32 --rounds 9

For each shape m × n × k of C = op(A) op(B) (the forward's a W_lᵀ, the backward's δ W_l and
δᵀ a, at the rows a thread of the two-core step takes) it prints both engines' GFLOP/s, the
best of interleaved rounds, their ratio and which one ``gemm`` takes there (``_tiles``). The
tiles run on any x86 host with AVX2 and FMA; ``gemm`` takes them only where they pay.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from numba import njit

from bpdiag import blas
from bpdiag._core.gemm import AVX512, MR, NV, VECTOR_BYTES, _tiles, blas_gemm, tiled

PRODUCTS = {"a Wᵀ": (False, True), "δ W": (False, False), "δᵀ a": (True, False)}
# (rows, width): C (rows, width) over width terms; the rows a thread takes at XS … XL and
# between (32 × 512: the mid config of ``bench.py``)
SHAPES = [(8, 32), (16, 64), (32, 64), (32, 128), (64, 128), (128, 128), (64, 256), (128, 256),
          (32, 512), (256, 1024)]  # fmt: skip


@njit(cache=True)
def _tiles_loop(A, ta, B, tb, C, reps):
    for _ in range(reps):
        tiled(A, ta, B, tb, C, False)


@njit(cache=True)
def _blas_loop(A, ta, B, tb, C, reps):
    for _ in range(reps):
        blas_gemm(A, ta, B, tb, C, 0.0)


@njit(cache=True)
def _takes(A, ta, B, tb, C):
    return _tiles(A, ta, B, tb, C, A.shape[0] if ta else A.shape[1])[0] > 0  # a corner


def rates(m: int, n: int, ta: bool, tb: bool, dtype: str, rounds: int) -> tuple[float, float]:
    """GFLOP/s of the tiles and of the BLAS for C (m, n) over n terms, best of ``rounds``."""
    rng = np.random.default_rng(0)
    k = n
    A = rng.normal(size=(k, m) if ta else (m, k)).astype(dtype)
    B = rng.normal(size=(n, k) if tb else (k, n)).astype(dtype)
    C1, C2 = np.zeros((m, n), dtype), np.zeros((m, n), dtype)
    flops = 2.0 * m * n * k
    reps = max(1, int(1e8 / flops))
    best = [np.inf, np.inf]
    for _ in range(rounds):
        for i, (loop, C) in enumerate(((_tiles_loop, C1), (_blas_loop, C2))):
            start = time.perf_counter()
            loop(A, ta, B, tb, C, reps)
            best[i] = min(best[i], (time.perf_counter() - start) / reps)
    tol = 1e-10 if dtype == "float64" else 1e-3
    assert np.allclose(C1, C2, rtol=tol, atol=tol * np.sqrt(k)), "the engines disagree"
    return flops / best[0] / 1e9, flops / best[1] / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dtypes", default="float32,float64")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    library = blas.bind()
    kind = "AVX-512" if AVX512 else "AVX2"
    print(f"{library}; tiles of {MR} rows by {NV} {kind} vectors of {VECTOR_BYTES} bytes; 1 thread")
    header = ("product", "dtype", "m × n × k", "tiles", "BLAS", "ratio")
    print("{:6} {:8} {:>16} {:>8} {:>8} {:>6}  gemm takes".format(*header))
    with blas.single_threaded():
        for dtype in args.dtypes.split(","):
            for m, n in SHAPES:
                for name, (ta, tb) in PRODUCTS.items():
                    tiles, lib = rates(m, n, ta, tb, dtype, args.rounds)
                    A = np.empty((n, m) if ta else (m, n), dtype)
                    B = np.empty((n, n), dtype)
                    takes = "tiles" if _takes(A, ta, B, tb, np.empty((m, n), dtype)) else "BLAS"
                    shape = f"{m} × {n} × {n}"
                    print(f"{name:6} {dtype:8} {shape:>16} {tiles:8.1f} {lib:8.1f} "
                          f"{tiles / lib:6.2f}  {takes}", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
