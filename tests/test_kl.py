"""kl and kl_inv against closed forms, an independent root finder and the published values."""

import math

import mpmath
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bounds import InvalidInput, kl, kl_inv

EPS = np.finfo(float).eps


def independent_kl_inv(q: float, c: float) -> float:
    """Root of kl(q‖p) = c by bisection in 60-digit arithmetic (mpmath), rounded to float."""
    with mpmath.workdps(60):
        q_, c_ = mpmath.mpf(q), mpmath.mpf(c)

        def f(p):
            head = q_ * mpmath.log(q_ / p) if q_ > 0 else 0
            return head + (1 - q_) * mpmath.log((1 - q_) / (1 - p)) - c_

        lo, hi = q_, mpmath.mpf(1)
        for _ in range(200):
            mid = (lo + hi) / 2
            if mid == hi or f(mid) > 0:
                hi = mid
            else:
                lo = mid
        return float(hi)


def test_published_reference_values():
    # DESIGN.md reference values (Langford-style calculations for MNIST-scale numbers).
    assert kl_inv(0.01, math.log(20) / 10000) == pytest.approx(0.012635, abs=5e-7)
    assert kl_inv(0.015, (32413 + math.log(20)) / 60000) == pytest.approx(0.45975, abs=5e-6)


def test_kl_matches_definition():
    q, p = 0.3, 0.45
    expected = q * math.log(q / p) + (1 - q) * math.log((1 - q) / (1 - p))
    assert float(kl(q, p)) == pytest.approx(expected, rel=1e-14)
    assert float(kl(0.0, 0.2)) == pytest.approx(-math.log(0.8), rel=1e-14)
    assert float(kl(1.0, 0.2)) == pytest.approx(-math.log(0.2), rel=1e-14)
    assert float(kl(0.5, 1.0)) == math.inf


def test_edges_closed_forms():
    assert kl_inv(0.3, 0.0) == 0.3
    assert kl_inv(1.0, 2.0) == 1.0
    c = 0.37
    # q = 0: kl(0‖p) = −ln(1−p) ≤ c  ⇔  p ≤ 1 − e^{−c}; conservative by a few ulps at most.
    exact = -math.expm1(-c)
    assert exact <= kl_inv(0.0, c) <= exact * (1 + 16 * EPS)


def test_vectorised_shape_and_broadcast():
    q = np.array([[0.0, 0.1], [0.5, 1.0]])
    result = kl_inv(q, 0.2)
    assert result.shape == (2, 2)
    for index in np.ndindex(q.shape):
        assert result[index] == kl_inv(q[index], 0.2)


@pytest.mark.parametrize(
    "q, c",
    [(0.5, 1e-20), (0.01, 1e-12), (1e-9, 3.0), (0.999, 1e-6), (0.3, 30.0), (0.2, 700.0)],
)
def test_against_independent_root(q, c):
    result = kl_inv(q, c)
    root = independent_kl_inv(q, c)
    assert result >= root
    assert result - root <= 1e-12


@settings(max_examples=300, deadline=None)
@given(
    q=st.floats(0.0, 1.0, allow_nan=False),
    c=st.floats(1e-12, 50.0, allow_nan=False),
)
def test_inverse_properties(q, c):
    p = float(kl_inv(q, c))
    assert q <= p <= 1.0
    if p < 1.0:
        # Either kl(q‖p) ≤ c + 1e-12, or p sits within a few ulps of the largest double
        # that satisfies kl ≤ c (near p = 1 one ulp of p moves kl by far more than 1e-12).
        p_below = p * (1 - 16 * EPS)
        assert float(kl(q, p)) <= c + 1e-12 or float(kl(q, p_below)) <= c


@settings(max_examples=200, deadline=None)
@given(
    q1=st.floats(0.0, 1.0),
    q2=st.floats(0.0, 1.0),
    c1=st.floats(0.0, 20.0),
    c2=st.floats(0.0, 20.0),
)
def test_monotone_in_q_and_c(q1, q2, c1, c2):
    (qa, qb), (ca, cb) = sorted((q1, q2)), sorted((c1, c2))
    assert kl_inv(qa, ca) <= kl_inv(qb, ca) + 1e-15
    assert kl_inv(qa, ca) <= kl_inv(qa, cb) + 1e-15


def test_large_batch_agrees_with_independent_roots():
    rng = np.random.default_rng(7)
    q = rng.random(200) ** 3
    c = 10 ** rng.uniform(-10, 1.3, 200)
    result = kl_inv(q, c)
    roots = np.array([independent_kl_inv(a, b) for a, b in zip(q, c, strict=True)])
    assert (result >= roots).all()
    assert (result - roots <= 1e-12).all()


@pytest.mark.parametrize(
    "q, c", [(float("nan"), 0.1), (0.2, float("nan")), (1.5, 0.1), (-0.1, 0.1)]
)
def test_bad_input(q, c):
    with pytest.raises(InvalidInput):
        kl_inv(q, c)
