"""The vectorizable tanh, sigmoid and exp match NumPy's to a few ulp, in float64 and float32,
keep NaN and ±inf right, and are odd/complementary where the functions are."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from numba import njit

from bpdiag._core import vmath


@njit(error_model="numpy")
def _tanh(x):
    out = np.empty_like(x)
    for i in range(x.size):
        out[i] = vmath.tanh_of(x[i])
    return out


@njit(error_model="numpy")
def _sigmoid(x):
    out = np.empty_like(x)
    for i in range(x.size):
        out[i] = vmath.sigmoid_of(x[i])
    return out


GRID = np.concatenate([np.linspace(-50, 50, 400_001), np.geomspace(1e-30, 1, 4001),
                       -np.geomspace(1e-30, 1, 4001), [0.0, 30.0, 40.0]])  # fmt: skip


def _ulps(got, exact, dtype):
    """|got − exact| in units of the spacing of exact rounded to ``dtype`` (exact: long double,
    so that the reference's own rounding does not count against the function)."""
    spacing = np.spacing(np.abs(exact).astype(dtype)).astype(np.longdouble)
    return np.asarray(np.abs(got.astype(np.longdouble) - exact) / spacing, np.float64)


def _exact_tanh(x):
    return np.tanh(x.astype(np.longdouble))


def _exact_sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x.astype(np.longdouble)))


@pytest.mark.parametrize(("dtype", "max_ulp"), [(np.float64, 3), (np.float32, 7)])
def test_tanh_within_a_few_ulp(dtype, max_ulp):
    x = GRID.astype(dtype)
    got = _tanh(x)
    assert got.dtype == dtype
    assert _ulps(got, _exact_tanh(x), dtype).max() <= max_ulp
    assert np.abs(got - _exact_tanh(x)).max() < (5e-7 if dtype == np.float32 else 1e-15)


@pytest.mark.parametrize(("dtype", "max_ulp"), [(np.float64, 3), (np.float32, 3)])
def test_sigmoid_within_a_few_ulp(dtype, max_ulp):
    x = GRID[np.abs(GRID) <= 40].astype(dtype)  # |x| is clamped at 40 (documented)
    got = _sigmoid(x)
    assert got.dtype == dtype
    assert _ulps(got, _exact_sigmoid(x), dtype).max() <= max_ulp


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_special_values(dtype):
    x = np.array([np.nan, np.inf, -np.inf, 0.0, -0.0], dtype)
    t, s = _tanh(x), _sigmoid(x)
    assert np.isnan(t[0]) and np.isnan(s[0])
    assert t[1] == 1 and t[2] == -1 and t[3] == 0 and s[1] == 1 and s[3] == 0.5
    assert 0 <= s[2] < 1e-17  # σ(−∞) is σ(−40) after the clamp


@given(st.floats(-60, 60, allow_nan=False, width=32))
def test_tanh_is_odd_and_sigmoid_complementary(v):
    for dtype in (np.float64, np.float32):
        x = np.array([v, -v], dtype)
        t, s = _tanh(x), _sigmoid(x)
        assert t[0] == -t[1]
        if abs(v) <= 40:
            assert abs(float(s[0]) + float(s[1]) - 1.0) <= 2 * np.finfo(dtype).eps


@njit
def _sumsq_and_scale(x, lo, hi, c):
    s = vmath.sumsq(x, lo, hi)
    vmath.scale(x, lo, hi, c)
    return s


@settings(deadline=None)  # the first example compiles
@given(st.lists(st.floats(-1e6, 1e6), min_size=1, max_size=300), st.data())
def test_sumsq_and_scale_act_on_the_slice_only(values, data):
    for dtype in (np.float64, np.float32):  # float32 squares are taken in float64
        x = np.array(values, dtype)
        lo = data.draw(st.integers(0, x.size))
        hi = data.draw(st.integers(lo, x.size))
        before = x.copy()
        s = _sumsq_and_scale(x, lo, hi, dtype(0.5))
        want = float(np.sum(before[lo:hi].astype(np.float64) ** 2))
        assert s == pytest.approx(want, rel=1e-12, abs=1e-300)
        assert np.array_equal(x[lo:hi], before[lo:hi] * dtype(0.5))
        assert np.array_equal(x[:lo], before[:lo]) and np.array_equal(x[hi:], before[hi:])
