"""The LM bounds from per-document sums, against the formulas called by hand, and a Monte Carlo
check that the subsample step bounds the full-corpus quantities as it claims."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest

from bounds import occam_bound
from bounds.formulas.corpus import (
    LM_METHODS,
    SUBSAMPLE_SHARE,
    DocumentLosses,
    Sampling,
    loss_bounds,
    smoothed_bounds,
)
from bounds.formulas.sequence import (
    azuma_bound,
    bernstein_bound,
    smoothed_log_loss,
    smoothed_loss_range,
    subsample_upper,
)
from bounds.tasks.language.task import plan_evaluation
from bounds.tasks.language.tokens import TokenCorpus

DELTA = 0.05
CODE_BITS = 700.0
VOCAB = 50
ALPHAS = (0.5, 0.1, 0.01)


def population(seed: int = 0, documents: int = 60, loss_range=(0.0, 1.0)):
    """Per-document sums of a loss in `loss_range` and of squares in [0, 1], unequal lengths."""
    rng = np.random.default_rng(seed)
    tokens = rng.integers(1, 80, size=documents)
    low, high = loss_range
    means = low + (high - low) * rng.beta(2, 5, size=documents)
    squares = rng.uniform(0, 0.3, size=documents) * tokens
    return means * tokens, squares, tokens


def fsum_mean(values) -> float:
    return math.fsum(np.asarray(values, dtype=float).tolist()) / len(values)


def by_hand(
    sums, squares, tokens, loss_range, delta, *, choices=1, n=None, m=None, code_bits=CODE_BITS
):
    """The four bounds, each formula called directly on hand-computed means."""
    n = len(tokens) if n is None else n
    m = int(tokens.sum()) if m is None else m
    document_mean = fsum_mean(sums / tokens)
    token_mean = math.fsum(sums.tolist()) / m
    square_sum = math.fsum(squares.tolist())
    common = dict(loss_range=loss_range, choices=choices)
    return {
        "document_kl": occam_bound(n, code_bits, delta, risk=document_mean, method="kl", **common),
        "document_hoeffding": occam_bound(
            n, code_bits, delta, risk=document_mean, method="hoeffding", **common
        ),
        "token_azuma": azuma_bound(token_mean, m, code_bits, delta, **common),
        "token_bernstein": bernstein_bound(
            token_mean, m, code_bits, delta, square_sum=square_sum, **common
        ),
    }


def test_every_method_matches_the_formula_called_by_hand():
    loss_range = (0.2, 7.5)
    sums, squares, tokens = population(1, loss_range=loss_range)
    losses = DocumentLosses(sums, squares, tokens, loss_range)
    result = loss_bounds(losses, Sampling(len(tokens), int(tokens.sum())), CODE_BITS, DELTA)
    assert tuple(result) == LM_METHODS
    expected = by_hand(sums, squares, tokens, loss_range, DELTA)
    for method in LM_METHODS:
        assert result[method] == expected[method], method
        assert result[method].delta == DELTA
    # The document level counts documents, the token level tokens.
    assert result["document_kl"].n == 60 and result["token_azuma"].n == int(tokens.sum())


def test_alpha_union_is_the_least_bound_at_choices_equal_to_the_grid():
    # Documents of 100 to 2 000 tokens, most predicted with p = 0.97 and the rest with p = 0.02.
    rng = np.random.default_rng(2)
    tokens = rng.integers(100, 2000, size=30)
    good = rng.uniform(0.8, 0.95, size=30)
    columns = []
    for alpha in ALPHAS:
        hit, miss = smoothed_log_loss(np.log([0.97, 0.02]), alpha, VOCAB)
        columns.append((good * hit + (1 - good) * miss) * tokens)
    sums = np.stack(columns, axis=1)
    squares = rng.uniform(0, 0.5, size=(30, len(ALPHAS))) * tokens[:, None]
    sampling = Sampling(30, int(tokens.sum()))
    code_bits = 20.0
    result = smoothed_bounds(sums, squares, tokens, ALPHAS, VOCAB, sampling, code_bits, DELTA)
    per_alpha = [
        by_hand(
            sums[:, i],
            squares[:, i],
            tokens,
            smoothed_loss_range(alpha, VOCAB),
            DELTA,
            choices=len(ALPHAS),
            code_bits=code_bits,
        )
        for i, alpha in enumerate(ALPHAS)
    ]
    for method in LM_METHODS:
        values = [bounds[method].value for bounds in per_alpha]
        best = int(np.argmin(values))
        chosen = per_alpha[best][method]
        assert result[method] == replace(chosen, terms={**chosen.terms, "alpha": ALPHAS[best]})
        assert result[method].terms["choices"] == len(ALPHAS)
        assert result[method].terms["choice_nats"] == math.log(len(ALPHAS))
    # The document level (n = 30) prefers the narrowest range, the token level (m ≈ 30 000)
    # the least smoothing: the union is taken per method.
    assert result["document_kl"].terms["alpha"] == 0.5
    assert result["token_bernstein"].terms["alpha"] == 0.01


def sampled(tokens, s=25, seed=4, candidates=1) -> Sampling:
    rng = np.random.default_rng(seed)
    documents = len(tokens)
    return Sampling(
        documents,
        int(tokens.sum()),
        uniform=rng.integers(0, documents, size=s),
        weighted=rng.choice(documents, size=s, p=tokens / tokens.sum()),
        candidates=candidates,
    )


@pytest.mark.parametrize("choices", [1, 4])
@pytest.mark.parametrize("candidates", [1, 6])
def test_subsampled_bounds_feed_the_upper_value_into_the_formula(choices, candidates):
    loss_range = (0.0, 3.0)
    sums, squares, tokens = population(3, loss_range=loss_range)
    sampling = sampled(tokens, candidates=candidates)
    losses = DocumentLosses(sums, squares, tokens, loss_range)
    result = loss_bounds(losses, sampling, CODE_BITS, DELTA, choices=choices)
    n, m = len(tokens), int(tokens.sum())
    sub, main = DELTA * SUBSAMPLE_SHARE, DELTA - DELTA * SUBSAMPLE_SHARE
    claims = choices * candidates
    means, unit_squares = sums / tokens, squares / tokens

    document = subsample_upper(
        fsum_mean(means[sampling.uniform]), 25, sub / claims, loss_range
    ).upper
    risk = subsample_upper(
        fsum_mean(means[sampling.weighted]), 25, sub / 2 / claims, loss_range
    ).upper
    square = subsample_upper(
        fsum_mean(unit_squares[sampling.weighted]), 25, sub / 2 / claims, (0.0, 1.0)
    ).upper
    common = dict(loss_range=loss_range, choices=choices)
    expected = {
        "document_kl": occam_bound(n, CODE_BITS, main, risk=document, method="kl", **common),
        "document_hoeffding": occam_bound(
            n, CODE_BITS, main, risk=document, method="hoeffding", **common
        ),
        "token_azuma": azuma_bound(risk, m, CODE_BITS, main, **common),
        "token_bernstein": bernstein_bound(
            risk, m, CODE_BITS, main, square_sum=square * m, **common
        ),
    }
    for method in LM_METHODS:
        bound = result[method]
        assert bound.value == expected[method].value, method
        assert bound.empirical_risk == expected[method].empirical_risk
        assert bound.delta_shares["subsample"] == sub
        assert math.fsum(bound.delta_shares.values()) == bound.delta
        assert math.isclose(bound.delta, DELTA, rel_tol=1e-15)
        assert bound.terms["sample_size"] == 25
        assert bound.terms["sample_candidates"] == candidates
    assert result["document_kl"].terms["risk_sample_delta"] == sub / claims
    assert result["token_bernstein"].terms["square_sample_delta"] == sub / 2 / claims
    assert result["token_bernstein"].terms["square_sample_upper"] == square
    assert "square_sample_upper" not in result["token_azuma"].terms


def test_delta_shares_of_the_alpha_union_add_up_to_delta():
    rng = np.random.default_rng(5)
    tokens = rng.integers(2, 40, size=20)
    columns = []
    for alpha in ALPHAS:
        low, high = smoothed_loss_range(alpha, VOCAB)
        columns.append((low + (high - low) * rng.uniform(0.1, 0.4, 20)) * tokens)
    sums = np.stack(columns, axis=1)
    squares = rng.uniform(0, 0.2, size=sums.shape) * tokens[:, None]
    for sampling in (Sampling(20, int(tokens.sum())), sampled(tokens, s=10)):
        result = smoothed_bounds(sums, squares, tokens, ALPHAS, VOCAB, sampling, 50.0, DELTA)
        for bound in result.values():
            assert math.isclose(math.fsum(bound.delta_shares.values()), DELTA, rel_tol=1e-15)
            assert bound.delta == math.fsum(bound.delta_shares.values())
            assert len(bound.delta_shares) == (2 if sampling.sampled else 1)
            assert ("subsample" in bound.delta_shares) == sampling.sampled


def test_more_candidates_cost_a_wider_subsample_interval():
    sums, squares, tokens = population(6)
    losses = DocumentLosses(sums, squares, tokens, (0.0, 1.0))
    one = loss_bounds(losses, sampled(tokens, candidates=1), CODE_BITS, DELTA)
    many = loss_bounds(losses, sampled(tokens, candidates=8), CODE_BITS, DELTA)
    for method in LM_METHODS:
        assert many[method].value > one[method].value


def test_losses_at_the_end_of_the_range_survive_rounding():
    # Every token at the least loss (p = 1): L·a / L can round below a.
    low, high = smoothed_loss_range(0.5, 20)
    tokens = np.arange(2, 300)
    sums = low * tokens
    assert (sums / tokens < low).any()  # the rounding this guards against happens here
    losses = DocumentLosses(sums, np.zeros(len(tokens)), tokens, (low, high))
    result = loss_bounds(losses, Sampling(len(tokens), int(tokens.sum())), CODE_BITS, DELTA)
    assert result["document_kl"].empirical_risk == low
    assert result["token_bernstein"].empirical_risk == low
    expected = bernstein_bound(
        low, int(tokens.sum()), CODE_BITS, DELTA, square_sum=0.0, loss_range=(low, high)
    )
    assert result["token_bernstein"].value == expected.value


def test_bad_input_is_refused():
    sums, squares, tokens = population(7)
    losses = DocumentLosses(sums, squares, tokens, (0.0, 1.0))
    with pytest.raises(ValueError, match="cover all"):
        loss_bounds(losses, Sampling(60, int(tokens.sum()) + 1), CODE_BITS, DELTA)
    outside = DocumentLosses(sums + 0.5 * tokens, squares, tokens, (0.0, 1.0))
    with pytest.raises(ValueError, match="outside the loss range"):
        loss_bounds(outside, Sampling(60, int(tokens.sum())), CODE_BITS, DELTA)
    with pytest.raises(ValueError, match="both the uniform and the weighted"):
        Sampling(60, 100, uniform=np.zeros(3, int))
    with pytest.raises(ValueError, match="equally many"):
        Sampling(60, 100, uniform=np.zeros(3, int), weighted=np.zeros(2, int))
    with pytest.raises(ValueError, match="candidates must be a positive integer"):
        Sampling(60, 100, candidates=0)
    with pytest.raises(ValueError, match="delta"):
        loss_bounds(losses, Sampling(60, int(tokens.sum())), CODE_BITS, 1.5)


# --- Monte Carlo: the subsample step's claim -------------------------------------------------

TRIALS = 2000
MC_DELTA = 0.5  # large, so the subsample claims (δ/2 in all) are tested where they are tight
MC_SUBSAMPLE = MC_DELTA * SUBSAMPLE_SHARE
ALLOWED = MC_SUBSAMPLE + 3 * math.sqrt(MC_SUBSAMPLE * (1 - MC_SUBSAMPLE) / TRIALS)
SAMPLE_SIZE = 60
LOSS_RANGE = (0.0, 8.0)


def length_population(documents: int = 300, seed: int = 12) -> np.ndarray:
    """Scored tokens per document, 1 to 400, heavy-tailed (P(L) ∝ 1/L) like real corpora."""
    rng = np.random.default_rng(seed)
    support = np.arange(1, 401)
    return rng.choice(support, size=documents, p=(1 / support) / np.sum(1 / support))


def corpus_of_lengths(scored: np.ndarray) -> TokenCorpus:
    """A corpus whose documents have these scored tokens (ids do not matter here)."""
    ends = np.cumsum(scored + 1)
    return TokenCorpus(np.zeros(int(ends[-1]), np.uint16), ends - scored - 1, ends)


def draws(corpus: TokenCorpus, trial: int):
    """The pipeline's own design: which population documents were evaluated, and the draws."""
    plan = plan_evaluation(corpus, SAMPLE_SIZE, seed=trial)
    evaluated = np.searchsorted(corpus.starts, plan.corpus.starts)
    return evaluated, plan.sampling


@pytest.mark.slow
def test_subsampled_token_bounds_cover_the_full_corpus_values():
    # Long documents are more often wholly mispredicted (mean loss at the range's top, else at
    # its bottom) and have the larger forecast errors, so the token mean lies far above the
    # document mean and only draws in proportion to tokens estimate it. Means at the ends of
    # the range are where the Chernoff bound behind the subsample step is tightest.
    scored = length_population()
    rng = np.random.default_rng(13)
    scale = np.log(scored) / np.log(400)
    means = LOSS_RANGE[1] * (rng.random(scored.size) < 0.1 + 0.7 * scale)
    unit_squares = (rng.random(scored.size) < 0.05 + 0.5 * scale).astype(float)
    sums, squares = means * scored, unit_squares * scored
    corpus = corpus_of_lengths(scored)
    n, m = corpus.num_documents, corpus.scored_tokens
    main = MC_DELTA - MC_SUBSAMPLE
    common = dict(loss_range=LOSS_RANGE)
    token_mean, square_sum = math.fsum(sums) / m, math.fsum(squares)
    assert token_mean > fsum_mean(means) + 2.0  # the gap the uniform draws fall into
    full = {
        "document_kl": occam_bound(
            n, CODE_BITS, main, risk=fsum_mean(means), method="kl", **common
        ).value,
        "token_azuma": azuma_bound(token_mean, m, CODE_BITS, main, **common).value,
        "token_bernstein": bernstein_bound(
            token_mean, m, CODE_BITS, main, square_sum=square_sum, **common
        ).value,
    }
    wrong = ["token_azuma from uniform draws", "token_azuma from the bare sample mean"]
    failures = dict.fromkeys([*full, *wrong], 0)
    for trial in range(TRIALS):
        evaluated, sampling = draws(corpus, trial)
        losses = DocumentLosses(sums[evaluated], squares[evaluated], scored[evaluated], LOSS_RANGE)
        result = loss_bounds(losses, sampling, CODE_BITS, MC_DELTA)
        for method, value in full.items():
            failures[method] += result[method].value < value
        uniform = Sampling(n, m, uniform=sampling.uniform, weighted=sampling.uniform)
        value = loss_bounds(losses, uniform, CODE_BITS, MC_DELTA)["token_azuma"].value
        failures[wrong[0]] += value < full["token_azuma"]
        bare = fsum_mean(means[evaluated][sampling.weighted])
        value = azuma_bound(bare, m, CODE_BITS, main, **common).value
        failures[wrong[1]] += value < full["token_azuma"]
    for method in full:
        assert failures[method] / TRIALS <= ALLOWED, (method, failures)
    for variant in wrong:
        assert failures[variant] / TRIALS > ALLOWED, (variant, failures)


@pytest.mark.slow
def test_subsample_claims_cover_a_code_chosen_on_the_same_draws():
    # 64 candidates with whole documents right or wrong (a top-k error that is 0 or 1 per
    # document: where the Chernoff bound is tightest), independent between candidates. The
    # learner keeps the candidate whose sampled bound is least; with the union over the
    # candidates the claim still covers it, without the union it does not.
    candidates = 64
    scored = length_population(400, seed=14)
    rng = np.random.default_rng(15)
    wrong = rng.random((candidates, scored.size)) < 0.5
    sums = wrong * scored  # [candidate, document]
    squares = np.broadcast_to(0.25 * scored, sums.shape)  # forecast 1/2 on every token
    corpus = corpus_of_lengths(scored)
    n, m = corpus.num_documents, corpus.scored_tokens
    main = MC_DELTA - MC_SUBSAMPLE
    full = [azuma_bound(math.fsum(row) / m, m, CODE_BITS, main).value for row in sums]
    failures = {"union over candidates": 0, "as if fixed in advance": 0}
    for trial in range(TRIALS):
        evaluated, sampling = draws(corpus, trial)
        # Equal squares and code lengths: the least sampled token mean has the least bound.
        chosen = int(np.argmin(wrong[:, evaluated][:, sampling.weighted].sum(axis=1)))
        losses = DocumentLosses(
            sums[chosen, evaluated].astype(float),
            squares[chosen, evaluated],
            scored[evaluated],
            (0.0, 1.0),
        )
        for name, count in (("union over candidates", candidates), ("as if fixed in advance", 1)):
            claim = Sampling(n, m, sampling.uniform, sampling.weighted, candidates=count)
            value = loss_bounds(losses, claim, CODE_BITS, MC_DELTA)["token_azuma"].value
            failures[name] += value < full[chosen]
    assert failures["union over candidates"] / TRIALS <= ALLOWED, failures
    assert failures["as if fixed in advance"] / TRIALS > ALLOWED, failures
