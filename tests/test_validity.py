"""Monte Carlo and exact checks that each bound holds with probability at least 1 − δ.

Each test fails if a formula is made too tight (for example, if the Occam bound forgot the
K ln 2 term or the test-set bound used 2δ): the observed failure rate is compared with
δ plus three binomial standard errors of the Monte Carlo estimate.
"""

import math
from functools import cache

import numpy as np
import pytest
from scipy.stats import binom

from bounds import (
    OCCAM_METHODS,
    PAC_BAYES_METHODS,
    occam_bound,
    pac_bayes_bound,
    test_set_bound,
)

DELTA = 0.05
TRIALS = 2000
ALLOWED = DELTA + 3 * math.sqrt(DELTA * (1 - DELTA) / TRIALS)


@pytest.mark.parametrize("m, risk", [(200, 0.08), (1000, 0.013), (50, 0.3)])
def test_test_set_bound_exact_coverage(m, risk):
    # Exact: P[bound(k) < risk] summed over every k with its binomial probability.
    failing = [k for k in range(m + 1) if test_set_bound(m, k, DELTA).value < risk]
    failure = binom.pmf(failing, m, risk).sum()
    assert failure <= DELTA


def test_test_set_bound_monte_carlo():
    m, risk = 200, 0.08
    rng = np.random.default_rng(0)
    bound_for = cache(lambda k: test_set_bound(m, k, DELTA).value)
    errors = rng.binomial(m, risk, size=TRIALS)
    failures = sum(bound_for(int(k)) < risk for k in errors)
    assert failures / TRIALS <= ALLOWED


def test_occam_bound_covers_the_selected_hypothesis():
    # 1024 hypotheses, each with a 10-bit code (Kraft sum exactly 1); the learner picks the
    # one with the fewest training errors, which biases its empirical risk strongly down.
    hypotheses, n, code_bits = 1024, 300, 10
    rng = np.random.default_rng(1)
    true_risk = rng.uniform(0.25, 0.4, size=hypotheses)
    bound_for = cache(
        lambda k, method: occam_bound(n, code_bits, DELTA, errors=k, method=method).value
    )
    failures = dict.fromkeys(OCCAM_METHODS, 0)
    selected_gap = []
    for _ in range(TRIALS):
        errors = rng.binomial(n, true_risk)
        chosen = int(np.argmin(errors))
        selected_gap.append(true_risk[chosen] - errors[chosen] / n)
        for method in OCCAM_METHODS:
            failures[method] += bound_for(int(errors[chosen]), method) < true_risk[chosen]
    assert np.mean(selected_gap) > 0.05  # the selection bias the bound must absorb
    for method in OCCAM_METHODS:
        assert failures[method] / TRIALS <= ALLOWED, method


def test_pac_bayes_bounds_cover_gibbs_posterior():
    # Finite class, uniform prior P, Gibbs posterior Q ∝ exp(−λ k_h): R_Q and KL(Q‖P) exact.
    # Near-equal true risks make the posterior chase noise, so a bound that under-counted
    # KL(Q‖P) would fail often here.
    hypotheses, n, temperature = 4096, 400, 10.0
    rng = np.random.default_rng(2)
    true_risk = rng.uniform(0.3, 0.31, size=hypotheses)
    failures = dict.fromkeys(PAC_BAYES_METHODS, 0)
    failures["kl+monte_carlo"] = 0
    for _ in range(TRIALS):
        errors = rng.binomial(n, true_risk)
        logits = -temperature * errors
        posterior = np.exp(logits - logits.max())
        posterior /= posterior.sum()
        kl = float(np.sum(posterior * np.log(np.maximum(posterior, 1e-300) * hypotheses)))
        kl = max(kl, 0.0)
        gibbs_risk = float(posterior @ true_risk)
        empirical = float(posterior @ errors) / n
        for method in PAC_BAYES_METHODS:
            bound = pac_bayes_bound(min(empirical, 1.0), kl, n, DELTA, method=method)
            failures[method] += bound.value < gibbs_risk
        sampled = rng.choice(hypotheses, size=50, p=posterior)
        mc_risk = float(errors[sampled].mean()) / n
        bound = pac_bayes_bound(mc_risk, kl, n, DELTA, mc_samples=50, mc_delta=0.01)
        failures["kl+monte_carlo"] += bound.value < gibbs_risk
    for method, count in failures.items():
        assert count / TRIALS <= ALLOWED, method
