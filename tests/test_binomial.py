"""Binomial tail inversion against scipy, exact enumeration, closed forms and mpmath."""

import math
from fractions import Fraction

import mpmath
import numpy as np
import pytest
from scipy.stats import beta, binom

from bounds import InvalidInput, binom_tail_inv, log_binom_cdf
from bounds.formulas.binomial import _BoundedLogTail

MP_DIGITS = 40


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


def mp_log_last(n: int, k: int, p: float) -> mpmath.mpf:
    """ln b_k = ln C(n, k) + k ln p + (n − k) ln(1 − p) to ~40 digits."""
    with mpmath.workdps(MP_DIGITS):
        p = mpmath.mpf(p)
        return (
            mpmath.loggamma(n + 1)
            - mpmath.loggamma(k + 1)
            - mpmath.loggamma(n - k + 1)
            + k * mpmath.log(p)
            + (n - k) * mpmath.log(1 - p)
        )


def mp_log_tail(n: int, k: int, p: float) -> mpmath.mpf:
    """ln Bin(n, k, p) to ~40 digits: ln b_k + ln Σ_{j≤k} b_j/b_k, summed down from j = k.

    b_{j−1}/b_j = j(1−p)/((n−j+1)p) decreases as j falls, so once it is below ½ the rest of
    the sum is below the current term; stop when that is 1e-45 of the total.
    """
    with mpmath.workdps(MP_DIGITS):
        p = mpmath.mpf(p)
        total = term = mpmath.mpf(1)
        for j in range(k, 0, -1):
            ratio = j * (1 - p) / ((n - j + 1) * p)
            term *= ratio
            total += term
            if ratio < 0.5 and term < total * mpmath.mpf(10) ** -(MP_DIGITS + 5):
                break
        return mp_log_last(n, k, p) + mpmath.log(total)


def random_cases(seed: int, count: int):
    """(n, k, ln δ): n up to 10⁵ (mostly ≥ 2000), any k < n, ln δ from −0.01 to −10⁵."""
    rng = np.random.default_rng(seed)
    for i in range(count):
        n = int(10 ** rng.uniform(0.0, 3.3)) if i % 5 == 0 else int(rng.integers(2000, 10**5))
        k = int(rng.integers(0, n))
        log_delta = (-1e3, -1e5)[i % 2] if i % 3 == 0 else -float(10 ** rng.uniform(-2, 5))
        yield n, k, log_delta


def test_never_below_exact_root_and_close_above_it():
    # The defect this guards against: the previous version put 9 of these 30 cases below
    # the exact root, by up to 3.7e-12 relative.
    # Exact (mpmath) ln Bin at the result is ≤ ln δ, so the result is ≥ the root p*; just
    # 1e-10 relative below the result it is > ln δ, so the result is < p*·(1 + 1e-10).
    for n, k, log_delta in random_cases(seed=7, count=30):
        p = binom_tail_inv(n, k, log_delta)
        assert mp_log_tail(n, k, p) <= log_delta, (n, k, log_delta, p)
        assert mp_log_tail(n, k, p * (1.0 - 1e-10)) > log_delta, (n, k, log_delta, p)


def test_error_bound_of_log_tail_holds():
    # |computed ln Bin − exact ln Bin| ≤ ε(p), at random p and near the roots.
    rng = np.random.default_rng(11)
    for n, k, log_delta in random_cases(seed=5, count=30):
        root = binom_tail_inv(n, k, log_delta)
        p = float(rng.uniform(0.0, 1.0)) if rng.random() < 0.3 else root * (1 - 1e-9)
        if not 0.0 < p < 1.0:
            continue
        value, error, _ = _BoundedLogTail(n, k)(p)
        assert abs(mpmath.mpf(value) - mp_log_tail(n, k, p)) <= error, (n, k, p)
        assert error <= 1e-9 * max(1.0, abs(value))  # and it is not vacuous


@pytest.mark.parametrize("log_delta", [-1e-300, -1e-12, math.log(0.05), -50.0, -1e6])
def test_k_zero_closed_form_any_delta(log_delta):
    # k = 0: Bin⁻¹ = 1 − exp(ln δ/n); tight even for δ next to 1 (ln C(n, 0) = 0 exactly).
    for n in (1, 7, 10**5):
        expected = -math.expm1(log_delta / n)
        assert binom_tail_inv(n, 0, log_delta) == pytest.approx(expected, rel=1e-13)
