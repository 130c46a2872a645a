"""Monte Carlo checks that the token-level, document-level and subsample bounds hold w.p. ≥ 1 − δ.

The data come from a Markov chain whose transition probabilities are known exactly, so every
true quantity is computed, not estimated: the conditional expected loss of a token given its
predecessor, and the document-level risk (by propagating the state distribution). A learner
picks, from a small prefix-coded class of stochastic predictors, the one with the lowest
empirical loss; the bound must cover its true loss in all but a fraction δ of the trials
(δ plus three binomial standard errors of the Monte Carlo estimate). Each test also runs a
deliberately wrong variant of its bound and checks that it fails more often than that, so the
test can detect a formula that is too tight.
"""

import math
from functools import cache
from typing import NamedTuple

import numpy as np
import pytest

from bounds import occam_bound
from bounds.formulas.sequence import (
    DEFAULT_ALPHA_GRID,
    azuma_bound,
    bernstein_bound,
    smoothed_log_loss,
    smoothed_loss_range,
    subsample_upper,
)

DELTA = 0.05
TRIALS = 2000
ALLOWED = DELTA + 3 * math.sqrt(DELTA * (1 - DELTA) / TRIALS)

STATES = 6
TOKENS = 20_000  # m scored tokens per trial (token-level tests)
DOCUMENTS = 200  # n documents per trial (document-level test)
# Document lengths L = 2, …, 100 with P(L) ∝ 1/L: heavy-tailed like real corpora, so documents
# differ widely in how many tokens their mean loss averages.
DOCUMENT_LENGTHS = np.arange(2, 101)
LENGTH_PROBABILITY = (1.0 / DOCUMENT_LENGTHS) / np.sum(1.0 / DOCUMENT_LENGTHS)
SMOOTHING = 1 / 8  # α of the document-level smoothed log loss


# Every probability of the chain is a multiple of 2^−16, so drawing a uniform integer below
# 2^16 and looking it up in a table samples the chain exactly.
RESOLUTION = 2**16


def _integer_split(weights: np.ndarray, total: int) -> np.ndarray:
    """Positive integers proportional to `weights` (up to rounding) that add up to `total`."""
    units = 1 + np.floor(weights * (total - weights.size)).astype(np.int64)
    units[np.argmax(weights)] += total - units.sum()
    return units


@cache
def markov_chain() -> tuple[np.ndarray, np.ndarray]:
    """(transition matrix, distribution of a document's first token), in units of 2^−16.

    In every row two next states share 3/4 equally and the other four share 1/4 by a seeded
    Dirichlet draw: the tie gives 2^6 predictors exactly the same top-1 risk, the hardest case
    for the selection the bound must absorb.
    """
    rng = np.random.default_rng(7)
    units = np.empty((STATES, STATES), dtype=np.int64)
    for state in range(STATES):
        order = rng.permutation(STATES)
        units[state, order[:2]] = 3 * RESOLUTION // 8
        units[state, order[2:]] = _integer_split(
            rng.dirichlet(np.ones(STATES - 2)), RESOLUTION // 4
        )
    start = _integer_split(rng.dirichlet(np.ones(STATES)), RESOLUTION)
    return units / RESOLUTION, start / RESOLUTION


def sampling_table(probabilities: np.ndarray) -> np.ndarray:
    """table[row, u] for u < 2^16: the outcome of a uniform u, exactly distributed as the row."""
    units = np.rint(np.atleast_2d(probabilities) * RESOLUTION).astype(np.int64)
    assert (units.sum(axis=1) == RESOLUTION).all()
    return np.stack([np.repeat(np.arange(STATES), row) for row in units])


@cache
def predictors() -> tuple[np.ndarray, np.ndarray]:
    """(p_h(next | previous) as [H, S, S], code bits [H]): 64 predictors of 6 bits each.

    Predictor h puts 1/2 on one of the two likeliest next states of each row (bit s of h
    chooses which in row s) and spreads 1/2 over the others by a seeded Dirichlet draw.
    """
    transition, _ = markov_chain()
    likeliest = np.argsort(-transition, axis=1, kind="stable")[:, :2]
    rng = np.random.default_rng(8)
    count = 2**STATES
    forecast = np.empty((count, STATES, STATES))
    for h in range(count):
        for state in range(STATES):
            target = likeliest[state, (h >> state) & 1]
            others = np.arange(STATES) != target
            forecast[h, state, target] = 0.5
            forecast[h, state, others] = rng.dirichlet(np.ones(STATES - 1)) / 2
    code_bits = np.full(count, float(STATES))
    assert math.fsum(2.0**-code_bits) <= 1.0  # Kraft: a prefix-free code exists
    return forecast, code_bits


@cache
def token_transitions() -> np.ndarray:
    """Counts N[trial, i, j] of the transitions i → j among the m scored tokens of each trial.

    Every loss, conditional expectation and square sum below is a function of these counts.
    """
    transition, _ = markov_chain()
    table = sampling_table(transition)
    rng = np.random.default_rng(9)
    states = rng.integers(0, STATES, size=TRIALS)  # the first token, not scored
    offset = np.arange(TRIALS) * STATES * STATES
    counts = np.zeros(TRIALS * STATES * STATES, dtype=np.int64)
    chunk = 1000
    for first in range(0, TOKENS, chunk):
        uniforms = rng.integers(0, RESOLUTION, size=(min(chunk, TOKENS - first), TRIALS))
        flat = np.empty(uniforms.shape, dtype=np.int64)
        for t, uniform in enumerate(uniforms):
            following = table[states, uniform]
            flat[t] = offset + states * STATES + following
            states = following
        counts += np.bincount(flat.ravel(), minlength=counts.size)
    return counts.reshape(TRIALS, STATES, STATES)


def top1_errors(forecast: np.ndarray) -> np.ndarray:
    """ℓ_h[i, j] = 1 if j is not the state h ranks first after i (ties go to the lower index)."""
    errors = np.ones_like(forecast)
    np.put_along_axis(errors, forecast.argmax(axis=-1)[..., None], 0.0, axis=-1)
    return errors


def token_statistics(loss: np.ndarray, forecast_loss: np.ndarray, loss_range):
    """Per trial and predictor: mean loss, (1/m) Σ E[ℓ_t | x_{t−1}], and Σ (X_t − c_t)².

    `loss` is ℓ_h[i, j], `forecast_loss` is c_h[i] on the loss's scale.
    """
    transition, _ = markov_chain()
    counts = token_transitions()
    conditional = (transition[None] * loss).sum(axis=-1)  # μ_h[i] = Σ_j P(j | i) ℓ_h[i, j]
    mean = np.einsum("tij,hij->th", counts, loss) / TOKENS
    true = np.einsum("ti,hi->th", counts.sum(axis=-1), conditional) / TOKENS
    low, high = loss_range
    unit_gap = (loss - forecast_loss[..., None]) / (high - low)
    square_sum = np.einsum("tij,hij->th", counts, unit_gap**2)
    return mean, true, square_sum


def test_token_bounds_cover_the_selected_predictor_top1_error():
    forecast, code_bits = predictors()
    errors = top1_errors(forecast)
    mean, true, square_sum = token_statistics(errors, 1.0 - forecast.max(axis=-1), (0.0, 1.0))
    chosen = mean.argmin(axis=1)
    rows = np.arange(TRIALS)
    true, mean, square_sum = true[rows, chosen], mean[rows, chosen], square_sum[rows, chosen]
    assert np.allclose(true, 5 / 8)  # every predictor has the same risk: selection is pure noise
    assert np.mean(true - mean) > math.sqrt(0.25 / TOKENS)  # the bias the bound must absorb

    failures = {"azuma": 0, "bernstein": 0, "azuma without K ln 2": 0}
    for trial in range(TRIALS):
        bits, args = code_bits[chosen[trial]], (mean[trial], TOKENS)
        values = {
            "azuma": azuma_bound(*args, bits, DELTA).value,
            "bernstein": bernstein_bound(*args, bits, DELTA, square_sum=square_sum[trial]).value,
            # Fixed-m Azuma for one hypothesis, as if the selection had cost nothing.
            "azuma without K ln 2": mean[trial] + math.sqrt(math.log(1 / DELTA) / (2 * TOKENS)),
        }
        for name, value in values.items():
            failures[name] += value < true[trial]
    assert failures["azuma"] / TRIALS <= ALLOWED
    assert failures["bernstein"] / TRIALS <= ALLOWED
    assert failures["azuma without K ln 2"] / TRIALS > ALLOWED


class Selected(NamedTuple):
    """Per trial, the predictor a learner picked for one α: its statistics and code length."""

    loss_range: tuple[float, float]
    mean: np.ndarray
    true: np.ndarray
    square_sum: np.ndarray
    code_bits: np.ndarray


def test_token_bounds_cover_the_selected_predictor_smoothed_log_loss():
    # For each α of the grid the learner takes the predictor of lowest empirical loss; then it
    # reports the α whose bound is smallest, paying ln |A| nats as `choices`.
    forecast, code_bits = predictors()
    choices = len(DEFAULT_ALPHA_GRID)
    rows = np.arange(TRIALS)
    candidates = []
    for alpha in DEFAULT_ALPHA_GRID:
        loss = smoothed_log_loss(np.log(forecast), alpha, STATES)
        smoothed = (1 - alpha) * forecast + alpha / STATES
        entropy = (smoothed * loss).sum(axis=-1)  # c = E_{y∼p̃}[ℓ_α(y)], the forecast
        loss_range = smoothed_loss_range(alpha, STATES)
        statistics = token_statistics(loss, entropy, loss_range)
        chosen = statistics[0].argmin(axis=1)
        picked = [values[rows, chosen] for values in statistics]
        candidates.append(Selected(loss_range, *picked, code_bits[chosen]))

    def azuma(c: Selected, t: int) -> float:
        args = (c.mean[t], TOKENS, c.code_bits[t], DELTA)
        return azuma_bound(*args, loss_range=c.loss_range, choices=choices).value

    def bernstein(c: Selected, t: int, square_sum=None) -> float:
        args = (c.mean[t], TOKENS, c.code_bits[t], DELTA)
        square_sum = c.square_sum[t] if square_sum is None else square_sum
        kwargs = dict(square_sum=square_sum, loss_range=c.loss_range, choices=choices)
        return bernstein_bound(*args, **kwargs).value

    variants = {
        "azuma": azuma,
        "bernstein": bernstein,
        "bernstein without the ψ(λ)V term": lambda c, t: bernstein(c, t, square_sum=0.0),
    }
    failures = dict.fromkeys(variants, 0)
    for trial in range(TRIALS):
        for name, bound in variants.items():
            values = [bound(candidate, trial) for candidate in candidates]
            best = int(np.argmin(values))
            failures[name] += values[best] < candidates[best].true[trial]
    assert failures["azuma"] / TRIALS <= ALLOWED
    assert failures["bernstein"] / TRIALS <= ALLOWED
    assert failures["bernstein without the ψ(λ)V term"] / TRIALS > ALLOWED


def document_transitions() -> tuple[np.ndarray, np.ndarray]:
    """W[trial, i, j] = Σ_d N_d[i, j]/(L_d − 1) over the n documents of a trial, and m per trial.

    The mean document loss (each document's mean token loss, averaged over documents) of a
    predictor is Σ_ij W[i, j] ℓ[i, j] / n.
    """
    transition, start = markov_chain()
    rng = np.random.default_rng(10)
    documents = DOCUMENTS * TRIALS
    lengths = rng.choice(DOCUMENT_LENGTHS, size=documents, p=LENGTH_PROBABILITY)
    # Longest documents first, so the documents still running at step t are a prefix.
    order = np.argsort(-lengths, kind="stable")
    lengths, trial = lengths[order], np.repeat(np.arange(TRIALS), DOCUMENTS)[order]
    states = sampling_table(start)[0, rng.integers(0, RESOLUTION, size=documents)]
    table = sampling_table(transition)
    weights = np.zeros(TRIALS * STATES * STATES)
    for t in range(1, DOCUMENT_LENGTHS.max()):
        running = int(np.count_nonzero(lengths > t))
        following = table[states[:running], rng.integers(0, RESOLUTION, size=running)]
        flat = (trial[:running] * STATES + states[:running]) * STATES + following
        weights += np.bincount(flat, weights=1.0 / (lengths[:running] - 1), minlength=weights.size)
        states[:running] = following
    tokens = np.bincount(trial, weights=lengths - 1, minlength=TRIALS).astype(np.int64)
    return weights.reshape(TRIALS, STATES, STATES), tokens


def document_risk(loss: np.ndarray) -> np.ndarray:
    """E[(1/(L − 1)) Σ_t ℓ_h(x_{t−1}, x_t)] per predictor, exactly, from the state distribution."""
    transition, start = markov_chain()
    conditional = (transition[None] * loss).sum(axis=-1)  # [H, S]
    risk = np.zeros(loss.shape[0])
    for length, probability in zip(DOCUMENT_LENGTHS, LENGTH_PROBABILITY, strict=True):
        state_distribution, total = start.copy(), np.zeros(loss.shape[0])
        for _ in range(length - 1):
            total += conditional @ state_distribution
            state_distribution = state_distribution @ transition
        risk += probability * total / (length - 1)
    return risk


@pytest.mark.slow
def test_document_bounds_cover_the_true_document_risk():
    # Documents are the i.i.d. units: the Occam bound uses n documents, never m tokens.
    forecast, code_bits = predictors()
    weights, tokens = document_transitions()
    losses = {
        "top-1": (top1_errors(forecast), (0.0, 1.0)),
        "smoothed": (
            smoothed_log_loss(np.log(forecast), SMOOTHING, STATES),
            smoothed_loss_range(SMOOTHING, STATES),
        ),
    }
    failures = {}
    for loss_name, (loss, loss_range) in losses.items():
        risk = document_risk(loss)
        mean = np.einsum("tij,hij->th", weights, loss) / DOCUMENTS
        chosen = mean.argmin(axis=1)
        variants = [(method, "documents") for method in ("kl", "hoeffding")]
        if loss_name == "top-1":
            variants.append(("kl", "tokens"))
        for trial in range(TRIALS):
            h = chosen[trial]
            for method, units in variants:
                n = DOCUMENTS if units == "documents" else int(tokens[trial])
                value = occam_bound(
                    n,
                    code_bits[h],
                    DELTA,
                    risk=mean[trial, h],
                    method=method,
                    loss_range=loss_range,
                ).value
                key = (loss_name, method, units)
                failures[key] = failures.get(key, 0) + (value < risk[h])
    for (loss_name, method, units), count in failures.items():
        if units == "documents":
            assert count / TRIALS <= ALLOWED, (loss_name, method)
    # Counting the m tokens as the i.i.d. units is the mistake the document-level bound avoids:
    # a long document's mean loss varies far less than its token count suggests.
    assert failures[("top-1", "kl", "tokens")] / TRIALS > ALLOWED


def test_subsample_upper_covers_the_population_mean():
    # A fixed population of n unit losses in [a, b] with a heavy upper tail; s units are
    # drawn uniformly with replacement, and the population mean must lie below `upper`.
    low, high = smoothed_loss_range(SMOOTHING, STATES)
    rng = np.random.default_rng(11)
    population_size, s = 5000, 300
    population = np.where(
        rng.random(population_size) < 0.1,
        rng.uniform(high - 0.5, high, population_size),
        rng.uniform(low, low + 0.5, population_size),
    )
    population_mean = math.fsum(population) / population_size
    draws = population[rng.integers(0, population_size, size=(TRIALS, s))]
    sample_means = draws.mean(axis=1)
    failures = {"subsample": 0, "subsample as if it were the whole set": 0}
    for sample_mean in sample_means:
        right = subsample_upper(sample_mean, s, DELTA, loss_range=(low, high))
        wrong = subsample_upper(sample_mean, population_size, DELTA, loss_range=(low, high))
        failures["subsample"] += right.upper < population_mean
        failures["subsample as if it were the whole set"] += wrong.upper < population_mean
    assert failures["subsample"] / TRIALS <= ALLOWED
    assert failures["subsample as if it were the whole set"] / TRIALS > ALLOWED
