"""``block``: the kernels' borrowed 2-D views of their flat buffers."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from numba import njit
from numba.core.errors import TypingError

from bpdiag._core.forward import block


@njit(cache=True)
def _view_copy(buf, off, rows, cols):
    """The block's contents, copied out (a view of ``buf`` must not leave the kernel)."""
    return block(buf, off, rows, cols).copy()


@njit(cache=True)
def _write(buf, off, rows, cols):
    """Writes i·cols + j into entry (i, j) of the block."""
    B = block(buf, off, rows, cols)
    for i in range(rows):
        for j in range(cols):
            B[i, j] = i * cols + j


@settings(max_examples=40, deadline=None)
@given(
    dtype=st.sampled_from([np.float32, np.float64]),
    rows=st.integers(0, 6),
    cols=st.integers(1, 6),
    pad=st.integers(0, 5),
    off=st.integers(0, 7),
)
def test_block_is_the_reshaped_slice(dtype, rows, cols, pad, off):
    buf = np.arange(off + rows * cols + pad, dtype=dtype)
    got = _view_copy(buf, off, rows, cols)
    assert got.dtype == dtype and got.shape == (rows, cols)
    np.testing.assert_array_equal(got, buf[off : off + rows * cols].reshape(rows, cols))


def test_writes_through_a_block_land_in_the_buffer_and_nowhere_else():
    buf = np.full(20, -1.0)
    _write(buf, 3, 3, 4)
    np.testing.assert_array_equal(buf[3:15], np.arange(12.0))
    assert (buf[:3] == -1).all() and (buf[15:] == -1).all()


def test_a_strided_buffer_is_refused_at_compile_time():
    buf = np.arange(20.0)[::2]  # the view's arithmetic assumes contiguous elements
    with pytest.raises(TypingError):
        _view_copy(buf, 0, 2, 2)
