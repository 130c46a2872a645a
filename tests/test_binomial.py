"""Binomial tail inversion against scipy, exact enumeration and closed forms."""

import math
from fractions import Fraction

import numpy as np
import pytest
from scipy.stats import beta, binom

from bounds import InvalidInput, binom_tail_inv, log_binom_cdf


def test_reference_value():
    # DESIGN.md: Bin⁻¹(10000, 100, ln 0.05) = 0.011797
    assert binom_tail_inv(10000, 100, math.log(0.05)) == pytest.approx(0.011797, abs=5e-7)


def test_log_cdf_matches_scipy_where_representable():
    for n, k, p in [(10, 3, 0.4), (1000, 10, 0.05), (500, 499, 0.999), (50, 0, 0.3)]:
        assert log_binom_cdf(n, k, p) == pytest.approx(binom.logcdf(k, n, p), rel=1e-12)


def test_agrees_with_beta_ppf():
    rng = np.random.default_rng(3)
    for _ in range(200):
        n = int(10 ** rng.uniform(0, 6))
        k = int(rng.integers(0, n))
        delta = 10 ** rng.uniform(-6, -0.5)  # 1 − δ representable to ~1e-10 relative
        expected = beta.ppf(1 - delta, k + 1, n - k)
        assert binom_tail_inv(n, k, math.log(delta)) == pytest.approx(expected, rel=1e-9)


def exact_tail(n: int, k: int, p: Fraction) -> Fraction:
    return sum(math.comb(n, j) * p**j * (1 - p) ** (n - j) for j in range(k + 1))


@pytest.mark.parametrize("n, k, delta", [(1, 0, 0.05), (7, 2, 0.1), (20, 0, 0.01), (30, 29, 0.05)])
def test_exact_enumeration_small_n(n, k, delta):
    p = binom_tail_inv(n, k, math.log(delta))
    # At the returned p the exact tail has just dropped to δ; a hair lower it is above δ.
    assert exact_tail(n, k, Fraction(p)) <= Fraction(delta) * (1 + Fraction(1, 10**9))
    assert exact_tail(n, k, Fraction(p) - Fraction(1, 10**9)) > Fraction(delta)


def test_deep_log_delta_closed_form():
    # k = 0: Bin = (1 − p)^n, so Bin⁻¹ = 1 − exp(ln δ / n) exactly; ln δ = −10⁶ is far
    # below what scipy represents (binom.logcdf would give −inf).
    n, log_delta = 10**6, -1e6
    assert binom_tail_inv(n, 0, log_delta) == pytest.approx(-math.expm1(log_delta / n), rel=1e-12)
    # General k: the log tail at the answer equals ln δ.
    n, k = 10**6, 10**4
    p = binom_tail_inv(n, k, log_delta)
    assert 0.5 < p < 1
    assert log_binom_cdf(n, k, p) == pytest.approx(log_delta, rel=1e-9)


def test_all_errors_gives_one():
    assert binom_tail_inv(10, 10, math.log(0.05)) == 1.0


@pytest.mark.parametrize(
    "n, k, log_delta",
    [(0, 0, -1.0), (10, 11, -1.0), (10, -1, -1.0), (10, 2, 0.0), (10, 2, float("nan"))],
)
def test_bad_input(n, k, log_delta):
    with pytest.raises(InvalidInput):
        binom_tail_inv(n, k, log_delta)
