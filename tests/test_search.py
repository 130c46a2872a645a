"""The screened search: candidates ranked on a subsample, at most two evaluated in full, the
word and its bound from full-set errors, and an honest report of how the choice was made."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.stats import binom
from torch import nn

import bounds
from bounds.formulas.binomial import binomial_lower_limit
from bounds.pipeline import search as search_module
from bounds.pipeline.search import MAX_FULL_EVALUATIONS, TOLERANCE
from bounds.tasks.classification.evaluate import evaluate
from bounds.tasks.classification.task import SCREEN_EXAMPLES, Classification


def network() -> nn.Module:
    torch.manual_seed(1)
    return nn.Sequential(nn.Linear(8, 24), nn.ReLU(), nn.Linear(24, 4))


@pytest.fixture(scope="module")
def problem():
    """n = 12 000 examples of a 4-class rule with 10 % label noise, and a network fit to it."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(12_000, 8, generator=generator)
    teacher = torch.randn(8, 4, generator=generator)
    y = (x @ teacher).argmax(dim=1)
    flip = torch.rand(len(y), generator=generator) < 0.1
    y[flip] = torch.randint(0, 4, (int(flip.sum()),), generator=generator)
    model = network()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(300):
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
    return model, (x, y)


@pytest.fixture(scope="module")
def certificates(problem):
    model, data = problem
    return {
        rule: bounds.certify(model, data, architecture=network, search=rule)
        for rule in ("screened", "exhaustive")
    }


def test_lower_limit_solves_its_defining_equation():
    for k, n, miss in [(1, 10, 0.05), (37, 4096, 1e-3), (4000, 4096, 0.2), (5, 5, 0.01)]:
        p_low = binomial_lower_limit(k, n, miss)
        assert binom.sf(k - 1, n, p_low) == pytest.approx(miss, rel=1e-9)  # P[Bin ≥ k] = miss
    assert binomial_lower_limit(0, 100, 0.05) == 0.0
    with pytest.raises(ValueError):
        binomial_lower_limit(11, 10, 0.05)


def test_lower_limit_is_below_the_true_rate_as_often_as_promised():
    rng = np.random.default_rng(0)
    miss, n, p = 0.05, 400, 0.07
    draws = rng.binomial(n, p, size=20_000)
    limits = {k: binomial_lower_limit(int(k), n, miss) for k in np.unique(draws)}
    above = np.mean([limits[k] > p for k in draws])
    assert above <= miss + 3 * math.sqrt(miss * (1 - miss) / len(draws))


def test_screened_search_picks_the_exhaustive_word_with_two_full_evaluations_at_most(
    certificates,
):
    screened, exhaustive = certificates["screened"], certificates["exhaustive"]
    assert screened.search["rule"] == "screened" and exhaustive.search["rule"] == "exhaustive"
    assert screened.code_sha256 == exhaustive.code_sha256
    assert screened.best.value == exhaustive.best.value
    assert screened.search["full_evaluations"] <= MAX_FULL_EVALUATIONS
    assert exhaustive.search["full_evaluations"] > MAX_FULL_EVALUATIONS
    assert screened.search["sample"] == SCREEN_EXAMPLES
    assert all(c["screen"]["n"] == SCREEN_EXAMPLES for c in screened.candidates)
    # Close candidates (here 8- and 32-level codes within 0.01 of the best in estimate) are
    # not ruled out at a miss of 10⁻³: the report lists them instead of claiming a settled
    # choice, and lists exactly those whose optimistic bound is below the chosen one.
    beatable = screened.best.value - TOLERANCE
    open_ = [
        c["index"]
        for c in screened.candidates
        if not c["evaluated"]
        and c["screen"]["optimistic_bound"] < beatable
        and c["screen"]["floor"] < beatable
    ]
    assert screened.search["not_excluded"] == open_
    assert screened.search["settled"] == (not open_)


def test_a_grid_of_distinct_candidates_is_settled_with_one_full_evaluation(problem):
    model, data = problem
    grid = [{"levels": 2}, {"levels": 3}, {"levels": 16}, {"levels": 256}]
    screened, exhaustive = (
        bounds.certify(model, data, architecture=network, grid=grid, search=rule)
        for rule in ("screened", "exhaustive")
    )
    assert screened.code_sha256 == exhaustive.code_sha256
    assert screened.search["full_evaluations"] == 1 and screened.search["settled"]
    assert exhaustive.search["full_evaluations"] >= 3  # the floor may spare the longest
    assert "no other could beat the chosen one" in dict(screened.summary_rows())["search"]


def test_the_chosen_word_was_evaluated_and_its_bound_uses_full_set_errors(problem, certificates):
    model, (x, y) = problem
    for cert in certificates.values():
        chosen = cert.candidates[cert.grid_index]
        assert chosen["evaluated"] and chosen["bound"] == cert.best.value
        unevaluated = [c for c in cert.candidates if not c["evaluated"]]
        assert all(c["bound"] is None for c in unevaluated)
        decoded = cert.code.decode()  # the decoder's tensors, evaluated here by hand
        skeleton = network()
        skeleton.load_state_dict(decoded)
        errors = int((skeleton(x).argmax(dim=1) != y).sum())
        assert cert.train["decoded"]["errors"] == errors == evaluate(skeleton, (x, y)).errors
        by_hand = bounds.occam_bound(len(y), cert.code_bits, cert.delta, errors=errors)
        assert cert.best.value == by_hand.value


def test_the_grid_index_still_costs_ceil_log2_of_the_grid(certificates):
    for cert in certificates.values():
        assert len(cert.grid) == 40  # 10 level counts × 2 schemes × 2 groupings
        assert cert.code_breakdown["config_choice"] == math.ceil(math.log2(len(cert.grid)))


def test_the_word_verifies_with_the_reused_evaluation(problem, certificates):
    model, data = problem
    cert = certificates["screened"]
    check = bounds.reproduce(
        cert.code.to_bytes(), network(), data, certificate=cert.to_dict(), architecture=network
    )
    assert check.mismatches == []
    assert "evaluation" not in cert.timings  # the chosen candidate's evaluation was reused


def test_a_choice_made_on_the_estimate_is_reported(problem, monkeypatch):
    """A screen whose optimistic bounds rule nothing out: the search stops at its limit of
    full evaluations, still picks among evaluated words, and says so."""
    model, data = problem
    original = Classification.screen

    def credulous(self, *args, **kwargs):
        screen = original(self, *args, **kwargs)
        return search_module.Screen(
            screen.evaluate,
            screen.estimate,
            lambda bits, evaluation, best: 0.0,
            screen.describe,
            screen.size,
            screen.seed,
            screen.miss,
        )

    monkeypatch.setattr(Classification, "screen", credulous)
    cert = bounds.certify(model, data, architecture=network)
    assert cert.search["full_evaluations"] == MAX_FULL_EVALUATIONS
    assert not cert.search["settled"]
    evaluated = {c["index"] for c in cert.candidates if c["evaluated"]}
    assert len(evaluated) == MAX_FULL_EVALUATIONS and cert.grid_index in evaluated
    assert set(cert.search["not_excluded"]) == set(range(len(cert.grid))) - evaluated
    rows = dict(cert.summary_rows())
    assert "chosen on the estimate" in rows["search"]


def test_small_training_sets_are_searched_exhaustively(problem):
    model, (x, y) = problem
    cert = bounds.certify(model, (x[:SCREEN_EXAMPLES], y[:SCREEN_EXAMPLES]), architecture=network)
    assert cert.search["rule"] == "exhaustive"
    assert all("screen" not in c for c in cert.candidates)


def test_an_unknown_rule_is_refused(problem):
    model, data = problem
    with pytest.raises(ValueError, match="search rule"):
        bounds.certify(model, data, architecture=network, search="greedy")


def test_language_model_candidates_are_ranked_on_a_document_sample(monkeypatch):
    """The same rule for a causal LM: candidates scored on ⌈D/8⌉ documents drawn in
    proportion to their tokens, at most two scored on the whole corpus, the word the
    exhaustive search picks (or a report that it was chosen on the estimate). The causality
    check runs on every model scored in full (the float model, the candidates evaluated in
    full), not on the screen's scores, which only rank."""
    from test_lm_pipeline import CONTEXT, GRID, STRIDE, VOCAB, synthetic_corpus

    import bounds.tasks.language.evaluate as scoring
    from bounds.models.architectures import byte_transformer
    from bounds.models.training import train_language_model
    from bounds.pipeline.certify import certify_lm

    checked = []
    check = scoring.check_causal

    def counted(*arguments, **options):
        checked.append(arguments[0])
        return check(*arguments, **options)

    monkeypatch.setattr(scoring, "check_causal", counted)

    corpus = synthetic_corpus(3, 96)
    network = byte_transformer(VOCAB, context=CONTEXT, width=16, depth=1, heads=2, seed=0)
    train_language_model(network, corpus, context=CONTEXT, steps=60, lr=1e-2, batch_size=16)
    grid = [*GRID, {"levels": 8, "scheme": "kmeans", "groups": "global"}]
    screened = certify_lm(network, corpus, context=CONTEXT, stride=STRIDE, grid=grid)
    assert len(checked) == 1 + screened.search["full_evaluations"]  # reused for the decoded
    exhaustive = certify_lm(
        network, corpus, context=CONTEXT, stride=STRIDE, grid=grid, search="exhaustive"
    )
    assert screened.search["rule"] == "screened" and screened.search["sample"] == 12
    assert screened.search["full_evaluations"] <= MAX_FULL_EVALUATIONS
    assert all(c["screen"]["n"] == 12 for c in screened.candidates)
    chosen = screened.candidates[screened.grid_index]
    assert chosen["evaluated"] and chosen["bound"] == screened.best.value
    if screened.search["settled"]:
        assert screened.code_sha256 == exhaustive.code_sha256
    else:
        assert "chosen on the estimate" in dict(screened.summary_rows())["search"]
    assert screened.best.value >= exhaustive.best.value  # exhaustive sees every candidate
