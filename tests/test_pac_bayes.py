"""PAC-Bayes bounds: closed forms, ξ(n) by exact enumeration, Monte Carlo step."""

import math
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bounds import PAC_BAYES_METHODS, InvalidInput, kl_inv, log_xi, pac_bayes_bound


def exact_xi(n: int) -> Fraction:
    return sum(
        math.comb(n, k) * Fraction(k, n) ** k * Fraction(n - k, n) ** (n - k) for k in range(n + 1)
    )


@pytest.mark.parametrize("n", [1, 2, 5, 8, 30, 200])
def test_xi_exact_enumeration(n):
    assert math.exp(log_xi(n)) == pytest.approx(float(exact_xi(n)), rel=1e-12)


@pytest.mark.parametrize("n", [8, 100, 10**4, 10**6])
def test_xi_between_sqrt_n_and_two_sqrt_n(n):
    # Maurer (2004): √n ≤ ξ(n) ≤ 2√n for n ≥ 8; asymptotically ξ(n) = √(πn/2) + 2/3 + O(n^−½).
    xi = math.exp(log_xi(n))
    assert math.sqrt(n) <= xi <= 2 * math.sqrt(n)
    if n >= 10**4:
        assert xi - math.sqrt(math.pi * n / 2) == pytest.approx(2 / 3, abs=2e-3)


def test_maurer_kl_closed_form():
    n, risk, kl, delta = 10000, 0.05, 200.0, 0.05
    c = (kl + math.log(2 * math.sqrt(n) / delta)) / n
    assert pac_bayes_bound(risk, kl, n, delta).value == pytest.approx(kl_inv(risk, c), rel=1e-15)


def test_closed_forms_of_relaxations():
    n, risk, kl, delta = 10000, 0.05, 200.0, 0.05
    c = (kl + math.log(2 * math.sqrt(n) / delta)) / n
    mcallester = pac_bayes_bound(risk, kl, n, delta, method="mcallester").value
    assert mcallester == pytest.approx(risk + math.sqrt(c / 2), rel=1e-14)
    quad = pac_bayes_bound(risk, kl, n, delta, method="quad").value
    assert quad == pytest.approx((math.sqrt(risk + c / 2) + math.sqrt(c / 2)) ** 2, rel=1e-14)
    # λ-bound at its minimiser equals the minimum over a fine grid of λ ∈ (0, 2).
    lam = np.linspace(1e-4, 2 - 1e-4, 200001)
    grid_min = np.min(risk / (1 - lam / 2) + c / (lam * (1 - lam / 2)))
    lam_bound = pac_bayes_bound(risk, kl, n, delta, method="lambda").value
    assert lam_bound <= grid_min + 1e-12
    assert lam_bound == pytest.approx(grid_min, rel=1e-6)


@settings(max_examples=150, deadline=None)
@given(
    risk=st.floats(0.0, 1.0),
    kl=st.floats(0.0, 1e5),
    n=st.integers(1, 10**6),
    delta=st.floats(1e-6, 0.5),
)
def test_kl_form_is_tightest_of_its_relaxations(risk, kl, n, delta):
    values = {m: pac_bayes_bound(risk, kl, n, delta, method=m).value for m in PAC_BAYES_METHODS}
    for relaxed in ("mcallester", "quad", "lambda"):
        assert values["kl"] <= values[relaxed] + 1e-12


def test_monte_carlo_step_and_ledger():
    n, risk_mc, kl, delta = 50000, 0.03, 1000.0, 0.035
    bound = pac_bayes_bound(risk_mc, kl, n, delta, mc_samples=150000, mc_delta=0.01)
    assert bound.delta_shares == {"pac_bayes": pytest.approx(0.025), "monte_carlo": 0.01}
    upper = kl_inv(risk_mc, math.log(1 / 0.01) / 150000)
    c = (kl + math.log(2 * math.sqrt(n) / 0.025)) / n
    assert bound.terms["empirical_risk_upper"] == pytest.approx(upper)
    assert bound.value == pytest.approx(kl_inv(upper, c), rel=1e-14)
    assert bound.value > pac_bayes_bound(risk_mc, kl, n, delta).value


@pytest.mark.parametrize(
    "args, kwargs",
    [
        ((0.1, -1.0, 100), {}),
        ((1.1, 1.0, 100), {}),
        ((0.1, 1.0, 0), {}),
        ((0.1, float("inf"), 100), {}),
        ((0.1, 1.0, 100), {"method": "nope"}),
        ((0.1, 1.0, 100), {"mc_delta": 0.01}),
        ((0.1, 1.0, 100), {"mc_samples": 10, "mc_delta": 0.06}),
        ((0.1, 1.0, 100), {"mc_samples": 0}),
    ],
)
def test_bad_input(args, kwargs):
    with pytest.raises(InvalidInput):
        pac_bayes_bound(*args, **kwargs)
