"""Token-level bounds, the smoothed log loss and subsampling, checked against direct formulas."""

import math

import mpmath
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bounds import OCCAM_METHODS, InvalidInput, kl_inv, occam_bound
from bounds.formulas.sequence import (
    DEFAULT_ALPHA_GRID,
    DEFAULT_LAMBDA_GRID,
    Subsample,
    azuma_bound,
    bernstein_bound,
    smoothed_log_loss,
    smoothed_loss_range,
    subsample_upper,
    with_subsample,
)

LN2 = math.log(2.0)


# --- smoothed log loss -------------------------------------------------------------------


@pytest.mark.parametrize("alpha, vocab", [(0.5, 2), (0.1, 5), (2**-10, 50257)])
def test_smoothed_loss_matches_direct_numpy(alpha, vocab):
    rng = np.random.default_rng(0)
    p = np.concatenate([rng.uniform(0, 1, 200), 10.0 ** -rng.uniform(1, 300, 200), [1.0]])
    direct = -np.log2((1 - alpha) * p + alpha / vocab)
    assert np.allclose(smoothed_log_loss(np.log(p), alpha, vocab), direct, rtol=1e-13, atol=0)


def test_smoothed_loss_when_p_underflows():
    # e^{−1000} is below the smallest double: the direct formula sees p = 0, log space does not.
    alpha, vocab = 0.01, 1000
    assert math.exp(-1000.0) == 0.0
    expected = math.log2(vocab / alpha)
    losses = smoothed_log_loss(np.array([-1000.0, -np.inf, -1e308]), alpha, vocab)
    assert np.allclose(losses, expected, rtol=1e-15, atol=0)
    # p = e^{−700} is representable and still changes the loss by about p·V/α.
    loss = float(smoothed_log_loss(-700.0, alpha, vocab))
    mixed = math.fsum([(1 - alpha) * math.exp(-700.0), alpha / vocab])
    assert loss == pytest.approx(-math.log2(mixed), rel=1e-15)


@pytest.mark.parametrize("alpha", DEFAULT_ALPHA_GRID)
@pytest.mark.parametrize("vocab", [2, 7, 50257])
def test_smoothed_loss_range(alpha, vocab):
    low, high = smoothed_loss_range(alpha, vocab)
    assert low == pytest.approx(-math.log2(1 - alpha + alpha / vocab), rel=1e-13)
    assert high == pytest.approx(math.log2(vocab / alpha), rel=1e-14)
    assert high - low == pytest.approx(math.log2(1 + (1 - alpha) * vocab / alpha), rel=1e-13)
    log_prob = np.concatenate([[0.0, -np.inf, -1e-300], -np.geomspace(1e-16, 1e4, 500)])
    losses = smoothed_log_loss(log_prob, alpha, vocab)
    # Exactly inside, no tolerance: the ends are the losses at p = 1 and p = 0.
    assert losses.min() == low and losses.max() == high


def test_default_alpha_grid_is_geometric_in_unit_interval():
    grid = np.array(DEFAULT_ALPHA_GRID)
    assert np.all((grid > 0) & (grid < 1))
    assert np.allclose(grid[1:] / grid[:-1], 0.5, rtol=0, atol=0)


@pytest.mark.parametrize(
    "args",
    [
        (-0.1, 0.0, 5),
        (-0.1, 1.0, 5),
        (-0.1, float("nan"), 5),
        (-0.1, 0.1, 1),
        (-0.1, 0.1, 2.5),
        (-0.1, 0.1, True),
        (0.1, 0.1, 5),
        ([-0.1, float("nan")], 0.1, 5),
    ],
)
def test_smoothed_loss_bad_input(args):
    with pytest.raises(InvalidInput):
        smoothed_log_loss(*args)


@pytest.mark.parametrize("alpha, vocab", [(0.0, 5), (1.0, 5), (1.5, 5), (0.1, 1), (0.1, 0)])
def test_smoothed_range_bad_input(alpha, vocab):
    with pytest.raises(InvalidInput):
        smoothed_loss_range(alpha, vocab)


# --- Azuma ---------------------------------------------------------------------------------


def test_azuma_against_a_scan_of_lambda_and_the_fixed_m_form():
    mean, m, bits, delta = 3.2, 100_000, 5000.0, 0.05
    low, high = 0.1, 9.0
    bound = azuma_bound(mean, m, bits, delta, loss_range=(low, high), choices=10)
    # Independent computation: every λ = 2^{k/2}, k = −40..8, in plain Python.
    total = bits * LN2 + math.log(49) + math.log(10 / delta)
    excess = min(2 ** (k / 2) / 8 + total / (2 ** (k / 2) * m) for k in range(-40, 9))
    assert bound.value == pytest.approx(mean + (high - low) * excess, rel=1e-14)
    assert bound.terms["deviation"] == pytest.approx((high - low) * excess, rel=1e-14)
    # The time-uniform form is within 1.5 % of the fixed-m form Δ√(C/2m) with C incl. ln|Λ|,
    # and never below the fixed-m form without the grid.
    fixed_m = (high - low) * math.sqrt((bits * LN2 + math.log(10 / delta)) / (2 * m))
    with_grid = (high - low) * math.sqrt(total / (2 * m))
    assert fixed_m < with_grid <= bound.terms["deviation"] <= 1.015 * with_grid
    assert bound.method == "azuma" and bound.n == m
    assert bound.delta_shares == {"martingale": delta}
    assert bound.complexity_nats == pytest.approx(bits * LN2, rel=1e-15)
    assert bound.terms["choices"] == 10 and bound.terms["choice_nats"] == math.log(10)
    assert bound.loss_range == (low, high)


@pytest.mark.parametrize("choices", [1, 3, 10, 1000])
def test_azuma_choices_is_delta_over_choices(choices):
    paid = azuma_bound(0.4, 5000, 300, 0.05, choices=choices)
    split = azuma_bound(0.4, 5000, 300, 0.05 / choices)
    assert paid.value == pytest.approx(split.value, abs=1e-12)


# --- Bernstein -----------------------------------------------------------------------------


def _psi_direct(lam):
    return -np.log1p(-lam) - lam


def test_fan_inequality_holds_for_xi_at_least_minus_one():
    # exp(λξ − ψ(λ)ξ²) ≤ 1 + λξ for ξ ≥ −1, λ ∈ (0, 1), compared as logs (1 + λξ ≥ 1 − λ > 0).
    lam = np.linspace(1e-3, 0.999, 400)[:, None]
    xi = np.concatenate([[-1.0], np.linspace(-1.0, 3.0, 2001), np.geomspace(3, 1e4, 200)])
    gap = np.log1p(lam * xi) - (lam * xi - _psi_direct(lam) * xi**2)
    scale = np.abs(lam * xi) + _psi_direct(lam) * xi**2 + 1.0
    assert (gap >= -1e-13 * scale).all()
    # ξ = −1 is the equality case: ln(1 − λ) on both sides.
    assert np.allclose(gap[:, 0], 0.0, atol=1e-12)


def test_fan_inequality_fails_below_minus_one():
    # The condition ξ ≥ −1 matters: just below it, with 1 + λξ still positive, it breaks.
    lam = np.linspace(0.05, 0.95, 50)[:, None]
    xi = np.linspace(-3.0, -1.0 - 1e-3, 500)[None, :]
    inside = 1 + lam * xi > 0
    gap = np.where(inside, np.log1p(np.where(inside, lam * xi, 0.0)), -np.inf) - (
        lam * xi - _psi_direct(lam) * xi**2
    )
    assert (gap < -1e-6).any()
    # One point by hand: λ = 1/2, ξ = −3/2.
    assert math.exp(-0.75 - (math.log(2) - 0.5) * 2.25) > 1 - 0.75


def _bernstein_scan(mean, m, bits, delta, square_sum, low, high, grid, choices):
    """min over λ of the bound, in 40-digit arithmetic, independently of the module."""
    with mpmath.workdps(40):
        total = bits * mpmath.log(2) + mpmath.log(len(grid) * choices / mpmath.mpf(delta))
        unit = (mpmath.mpf(mean) - low) / (mpmath.mpf(high) - low)
        best = None
        for lam in grid:
            lam = mpmath.mpf(float(lam))
            psi = -mpmath.log(1 - lam) - lam
            value = unit + (psi * square_sum + total) / (lam * m)
            if best is None or value < best[0]:
                best = (value, lam)
        return float(low + (mpmath.mpf(high) - low) * best[0]), float(best[1])


@pytest.mark.parametrize(
    "mean, m, bits, delta, square_sum, low, high, choices",
    [
        (0.3, 10_000, 100.0, 0.05, 2100.0, 0.0, 1.0, 1),
        (0.02, 10**6, 8000.0, 0.01, 900.0, 0.0, 1.0, 1),
        (3.1, 10**8, 2e6, 0.05, 4e6, 0.08, 10.6, 10),
        (0.5, 50, 0.0, 0.2, 50.0, -1.0, 2.0, 3),
        (1.0, 10**12, 0.0, 0.05, 1e12, 0.0, 2.0, 1),
    ],
)
def test_bernstein_matches_brute_force_scan(mean, m, bits, delta, square_sum, low, high, choices):
    bound = bernstein_bound(
        mean, m, bits, delta, square_sum=square_sum, loss_range=(low, high), choices=choices
    )
    value, lam = _bernstein_scan(
        mean, m, bits, delta, square_sum, low, high, DEFAULT_LAMBDA_GRID, choices
    )
    assert bound.value == pytest.approx(value, rel=1e-13)
    assert bound.terms["lambda"] == lam
    assert bound.method == "bernstein" and bound.delta_shares == {"martingale": delta}
    assert bound.terms["grid_nats"] == pytest.approx(math.log(40))


def test_bernstein_tiny_lambda_is_accurate():
    # ψ(λ) ≈ λ²/2 for tiny λ, where −log1p(−λ) − λ would lose about half its digits.
    grid = [1e-7, 3e-7]
    args = (0.25, 10**13, 1000.0, 0.05, 2e12, 0.0, 1.0, grid, 1)
    bound = bernstein_bound(*args[:4], square_sum=args[4], lambda_grid=grid)
    value, lam = _bernstein_scan(*args)
    assert bound.value == pytest.approx(value, rel=1e-15)
    with mpmath.workdps(40):
        psi = -mpmath.log(1 - mpmath.mpf(lam)) - mpmath.mpf(lam)
    assert bound.terms["psi"] == pytest.approx(float(psi), rel=1e-15)


def test_bernstein_zero_square_sum_takes_largest_lambda():
    # With V = 0 the excess is C/(λm): decreasing in λ, so the largest λ of the grid wins.
    mean, m, bits, delta = 0.01, 20_000, 500.0, 0.05
    bound = bernstein_bound(mean, m, bits, delta, square_sum=0.0, loss_range=(0.0, 4.0))
    largest = float(np.max(DEFAULT_LAMBDA_GRID))
    c = bits * LN2 + math.log(40) + math.log(1 / delta)
    assert bound.terms["lambda"] == largest
    assert bound.value == pytest.approx(mean + 4.0 * c / (largest * m), rel=1e-14)


def test_bernstein_adapts_to_variance():
    m, bits = 10**6, 10_000.0
    azuma = azuma_bound(0.1, m, bits).value
    low_variance = bernstein_bound(0.1, m, bits, square_sum=m / 1000).value
    high_variance = bernstein_bound(0.1, m, bits, square_sum=m / 4).value
    # Small V: far below Azuma. V = m/4 (a fair coin, Azuma's worst case): a little above
    # Azuma, paying for the grid and for ψ(λ) > λ²/2.
    assert low_variance - 0.1 < 0.25 * (azuma - 0.1)
    assert 1.0 < (high_variance - 0.1) / (azuma - 0.1) < 1.15


@pytest.mark.parametrize("choices", [1, 4, 10])
def test_bernstein_choices_is_delta_over_choices(choices):
    paid = bernstein_bound(0.4, 5000, 300, 0.05, square_sum=700, choices=choices)
    split = bernstein_bound(0.4, 5000, 300, 0.05 / choices, square_sum=700)
    assert paid.value == pytest.approx(split.value, abs=1e-12)


def test_default_lambda_grid():
    grid = DEFAULT_LAMBDA_GRID
    assert grid.shape == (40,) and grid.dtype == np.float64
    assert np.all((grid > 0) & (grid < 1))
    assert np.allclose(grid[1:] / grid[:-1], 2**-0.5, rtol=1e-15, atol=0)
    with pytest.raises(ValueError):
        grid[0] = 0.9  # read-only: the grid is declared before the data


@settings(max_examples=200, deadline=None)
@given(
    unit=st.floats(0.0, 1.0),
    m=st.integers(1, 10**9),
    bits=st.floats(0.0, 1e7),
    delta=st.floats(1e-12, 0.5),
    fraction=st.floats(0.0, 1.0),
)
def test_token_bounds_exceed_the_mean_and_grow_with_square_sum(unit, m, bits, delta, fraction):
    mean = 0.5 + 3.0 * unit
    args = (mean, m, bits, delta)
    azuma = azuma_bound(*args, loss_range=(0.5, 3.5))
    smaller = bernstein_bound(*args, square_sum=fraction * m / 2, loss_range=(0.5, 3.5))
    larger = bernstein_bound(*args, square_sum=fraction * m, loss_range=(0.5, 3.5))
    assert azuma.value > mean and smaller.value > mean
    assert smaller.value <= larger.value


@pytest.mark.parametrize(
    "args, kwargs",
    [
        ((0.5, 0, 10.0), {}),
        ((0.5, -3, 10.0), {}),
        ((0.5, 10.5, 10.0), {}),
        ((0.5, 10, -1.0), {}),
        ((0.5, 10, float("inf")), {}),
        ((0.5, 10, 10.0, 0.0), {}),
        ((0.5, 10, 10.0, 1.0), {}),
        ((1.5, 10, 10.0), {}),
        ((-0.1, 10, 10.0), {}),
        ((float("nan"), 10, 10.0), {}),
        ((0.5, 10, 10.0), {"loss_range": (1.0, 0.0)}),
        ((0.5, 10, 10.0), {"loss_range": (0.6, 2.0)}),
        ((0.5, 10, 10.0), {"choices": 0}),
        ((0.5, 10, 10.0), {"choices": 1.5}),
    ],
)
@pytest.mark.parametrize("method", ["azuma", "bernstein"])
def test_token_bounds_bad_input(method, args, kwargs):
    with pytest.raises(InvalidInput):
        if method == "azuma":
            azuma_bound(*args, **kwargs)
        else:
            bernstein_bound(*args, square_sum=1.0, **kwargs)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"square_sum": -1.0},
        {"square_sum": 10.5},
        {"square_sum": float("nan")},
        {"square_sum": 1.0, "lambda_grid": []},
        {"square_sum": 1.0, "lambda_grid": [0.5, 1.0]},
        {"square_sum": 1.0, "lambda_grid": [0.0, 0.5]},
        {"square_sum": 1.0, "lambda_grid": [0.5, 0.5]},
        {"square_sum": 1.0, "lambda_grid": [[0.5]]},
        {"square_sum": 1.0, "lambda_grid": [0.5, float("nan")]},
    ],
)
def test_bernstein_bad_input(kwargs):
    with pytest.raises(InvalidInput):
        bernstein_bound(0.5, 10, 10.0, **kwargs)


# --- Occam with choices -----------------------------------------------------------------------


@pytest.mark.parametrize("method", OCCAM_METHODS)
@pytest.mark.parametrize("choices", [1, 2, 10, 12345])
def test_occam_choices_is_delta_over_choices(method, choices):
    data = {"errors": 130} if method == "binomial" else {"risk": 0.013}
    paid = occam_bound(10_000, 700.0, 0.05, method=method, choices=choices, **data)
    split = occam_bound(10_000, 700.0, 0.05 / choices, method=method, **data)
    assert paid.value == pytest.approx(split.value, abs=1e-12)
    assert paid.terms["choices"] == choices
    assert paid.terms["choice_nats"] == pytest.approx(math.log(choices), rel=1e-15)
    assert paid.delta == 0.05 and paid.delta_shares == {"occam": 0.05}


def test_occam_choices_with_loss_range():
    paid = occam_bound(3000, 50.0, 0.05, risk=2.5, method="kl", loss_range=(0.1, 9.0), choices=10)
    c = (50 * LN2 + math.log(10) + math.log(20)) / 3000
    assert paid.value == pytest.approx(0.1 + 8.9 * kl_inv((2.5 - 0.1) / 8.9, c), rel=1e-14)


@pytest.mark.parametrize("choices", [0, -1, 2.5, float("nan"), True])
def test_occam_bad_choices(choices):
    with pytest.raises(InvalidInput):
        occam_bound(100, 10.0, errors=3, choices=choices)


# --- subsampling ----------------------------------------------------------------------------


def test_subsample_upper_is_kl_inverse():
    sample = subsample_upper(0.2, 400, 0.01)
    assert sample.upper == pytest.approx(float(kl_inv(0.2, math.log(100) / 400)), rel=1e-15)
    assert sample == Subsample(0.2, 400, 0.01, sample.upper, (0.0, 1.0))
    ranged = subsample_upper(3.0, 400, 0.01, loss_range=(1.0, 11.0))
    assert ranged.upper == pytest.approx(1.0 + 10.0 * sample.upper, rel=1e-14)
    assert ranged.loss_range == (1.0, 11.0)
    assert subsample_upper(11.0, 5, 0.5, loss_range=(1.0, 11.0)).upper == 11.0
    with pytest.raises(AttributeError):
        sample.upper = 0.0


def test_with_subsample_joins_the_two_claims():
    sample = subsample_upper(0.05, 1000, 0.01)
    bound = occam_bound(100_000, 2000.0, 0.04, risk=sample.upper, method="kl")
    joined = with_subsample(bound, sample)
    assert joined.value == bound.value and joined.method == "kl"
    assert joined.delta == pytest.approx(0.05, rel=1e-15)
    assert joined.delta_shares == {"occam": 0.04, "subsample": 0.01}
    assert joined.terms["sample_mean"] == 0.05
    assert joined.terms["sample_size"] == 1000
    assert joined.terms["subsample_upper"] == sample.upper
    assert joined.terms["code_bits"] == 2000.0
    assert bound.delta == 0.04  # the original is unchanged


def test_with_subsample_refuses_inconsistent_claims():
    sample = subsample_upper(0.05, 1000, 0.01)
    below = occam_bound(10_000, 20.0, 0.04, risk=0.05, method="kl")
    with pytest.raises(InvalidInput, match="upper value"):
        with_subsample(below, sample)
    bernstein = bernstein_bound(sample.upper, 10_000, 20.0, 0.04, square_sum=10.0)
    with pytest.raises(InvalidInput, match="square_sum"):
        with_subsample(bernstein, sample)
    ranged = occam_bound(10_000, 20.0, 0.04, risk=0.5, method="kl", loss_range=(0.0, 2.0))
    with pytest.raises(InvalidInput, match="loss range"):
        with_subsample(ranged, sample)
    large = occam_bound(10_000, 20.0, 0.995, risk=sample.upper, method="kl")
    with pytest.raises(InvalidInput, match="not below 1"):
        with_subsample(large, sample)
    twice = with_subsample(occam_bound(10_000, 20.0, 0.04, risk=sample.upper, method="kl"), sample)
    with pytest.raises(InvalidInput, match="already"):
        with_subsample(twice, sample)


@pytest.mark.parametrize(
    "args",
    [(0.5, 0, 0.05), (0.5, 2.5, 0.05), (1.5, 10, 0.05), (0.5, 10, 0.0), (0.5, 10, 1.0)],
)
def test_subsample_bad_input(args):
    with pytest.raises(InvalidInput):
        subsample_upper(*args)
