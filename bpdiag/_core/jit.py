"""Numba compilation flags, defined once.

- ``error_model="numpy"``: IEEE division semantics, so float divisions don't block vectorization.
- No ``fastmath=True``: its ``nnan``/``ninf`` let LLVM delete the NaN/Inf checks that detect
  exploding gradients. ``FAST`` keeps them and allows only what vectorizes reductions and fuses
  multiply-adds (results move by an ulp or so, far inside the 1e-10 the tests demand).
"""

FAST_FLAGS = {"nsz", "arcp", "contract", "reassoc"}

JIT = {"cache": True, "error_model": "numpy"}
FAST = {**JIT, "fastmath": FAST_FLAGS}
INLINE = {**FAST, "inline": "always"}
