"""Occam bounds: closed forms, published values, ordering of the relaxations."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bounds import (
    DEFAULT_BETA_GRID,
    InvalidInput,
    binom_tail_inv,
    elias_delta_bits,
    kl_inv,
    occam_bound,
)


def test_binomial_is_tail_inversion_at_delta_times_prior():
    bound = occam_bound(10000, 20, 0.05, errors=100, method="binomial")
    expected = binom_tail_inv(10000, 100, math.log(0.05) - 20 * math.log(2))
    assert bound.value == expected
    assert bound.terms["log_delta_h"] == pytest.approx(math.log(0.05) - 20 * math.log(2))
    assert bound.delta_shares == {"occam": 0.05}


def test_zero_bits_reduces_to_reference_value():
    # With K = 0 the Occam bound is the single-hypothesis bound (DESIGN.md reference).
    assert occam_bound(10000, 0, errors=100).value == pytest.approx(0.011797, abs=5e-7)


def test_published_lenet5_value():
    # Compressed LeNet-5 on MNIST: kl⁻¹(0.015, (32413 + ln 20)/60000) = 0.45975, i.e.
    # a code of 32413 nats = 32413/ln 2 bits with 900 errors in 60 000.
    bound = occam_bound(60000, 32413 / math.log(2), 0.05, errors=900, method="kl")
    assert bound.value == pytest.approx(0.45975, abs=5e-6)


def test_hoeffding_closed_form():
    bound = occam_bound(1000, 50, 0.1, risk=0.2, method="hoeffding")
    expected = 0.2 + math.sqrt((50 * math.log(2) + math.log(10)) / 2000)
    assert bound.value == pytest.approx(expected, rel=1e-14)


def test_catoni_is_grid_minimum():
    n, bits, delta, risk = 5000, 300, 0.05, 0.1
    grid = np.array(DEFAULT_BETA_GRID)
    c = bits * math.log(2) + math.log(len(grid) / delta)
    brute = min((1 - math.exp(-b * risk - c / n)) / (1 - math.exp(-b)) for b in grid)
    bound = occam_bound(n, bits, delta, risk=risk, method="catoni")
    assert bound.value == pytest.approx(brute, rel=1e-13)
    assert bound.terms["grid_nats"] == pytest.approx(math.log(len(grid)))


def test_loss_range_maps_to_unit_interval():
    # A loss in [−1, 3] is bounded through (R̂ + 1)/4.
    bound = occam_bound(2000, 100, 0.05, risk=0.2, method="kl", loss_range=(-1.0, 3.0))
    c = (100 * math.log(2) + math.log(20)) / 2000
    assert bound.value == pytest.approx(-1 + 4 * kl_inv(0.3, c), rel=1e-14)
    assert bound.loss_range == (-1.0, 3.0)


def test_elias_delta_lengths():
    # Elias-δ code lengths: 1 → 1 bit, 2 → 4, 4 → 5, 8 → 8, 16 → 9, 17 → 9.
    assert [elias_delta_bits(v) for v in (1, 2, 3, 4, 8, 16, 17)] == [1, 4, 4, 5, 8, 9, 9]


def test_non_prefix_free_code_pays_its_length():
    prefix_free = occam_bound(10000, 1000, errors=100)
    plain = occam_bound(10000, 1000, errors=100, prefix_free=False)
    assert plain.terms["length_prefix_bits"] == elias_delta_bits(1001)
    assert plain.complexity_nats == pytest.approx((1000 + elias_delta_bits(1001)) * math.log(2))
    assert plain.value > prefix_free.value


@settings(max_examples=150, deadline=None)
@given(
    n=st.integers(1, 100000),
    fraction=st.floats(0.0, 1.0),
    bits=st.floats(0.0, 1e5),
    delta=st.floats(1e-9, 0.5),
)
def test_binomial_le_kl_le_hoeffding(n, fraction, bits, delta):
    errors = int(fraction * n)
    values = [
        occam_bound(n, bits, delta, errors=errors, method=m).value
        for m in ("binomial", "kl", "hoeffding")
    ]
    assert values[0] <= values[1] + 1e-12
    assert values[1] <= values[2] + 1e-12
    assert errors / n <= values[0]


def test_bound_reports_its_breakdown():
    bound = occam_bound(60000, 7000, 0.05, errors=900, method="kl")
    data = bound.to_dict()
    assert data["method"] == "kl"
    assert data["terms"]["code_bits"] == 7000
    assert data["complexity_nats"] == pytest.approx(7000 * math.log(2))
    assert data["empirical_risk"] == pytest.approx(0.015)
    assert data["vacuous"] is False


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(n=0, code_bits=10, errors=0),
        dict(n=10, code_bits=-1, errors=0),
        dict(n=10, code_bits=float("nan"), errors=0),
        dict(n=10, code_bits=10, errors=11),
        dict(n=10, code_bits=10, errors=1, delta=1.0),
        dict(n=10, code_bits=10, errors=1, delta=0.0),
        dict(n=10, code_bits=10, risk=1.5, method="kl"),
        dict(n=10, code_bits=10, risk=0.5),  # binomial needs a count
        dict(n=10, code_bits=10),  # neither errors nor risk
        dict(n=10, code_bits=10, errors=1, risk=0.1),
        dict(n=10, code_bits=10, errors=1, method="nope"),
        dict(n=10, code_bits=10, errors=1, loss_range=(0, 2)),
        dict(n=10, code_bits=10, risk=0.1, method="kl", loss_range=(1, 0)),
        dict(n=10.5, code_bits=10, errors=1),
    ],
)
def test_bad_input(kwargs):
    with pytest.raises(InvalidInput):
        occam_bound(**kwargs)
