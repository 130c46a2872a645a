"""The δ ledger splits a budget into named shares and refuses to overspend."""

import pytest

from bounds import InvalidInput, Ledger


def test_take_and_rest():
    ledger = Ledger(0.05)
    assert ledger.take("bound", 0.04) == 0.04
    assert ledger.take_rest("monte_carlo") == pytest.approx(0.01)
    assert ledger.spent == pytest.approx(0.05)
    assert ledger.shares == {"bound": 0.04, "monte_carlo": pytest.approx(0.01)}


def test_split_proportional():
    shares = Ledger(0.06).split({"a": 1, "b": 2})
    assert shares == {"a": pytest.approx(0.02), "b": pytest.approx(0.04)}


def test_even_split_over_many_models_sums_to_delta():
    ledger = Ledger(0.05)
    ledger.split({f"model {i}": 1 for i in range(7)})
    assert ledger.spent == pytest.approx(0.05, rel=1e-15)


def test_overspending_and_duplicates_are_refused():
    ledger = Ledger(0.05)
    ledger.take("bound", 0.04)
    with pytest.raises(InvalidInput, match="exceeds"):
        ledger.take("more", 0.02)
    with pytest.raises(InvalidInput, match="already"):
        ledger.take("bound", 0.001)
    with pytest.raises(InvalidInput):
        Ledger(1.5)
