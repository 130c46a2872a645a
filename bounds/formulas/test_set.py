"""Test-set bound for a hypothesis chosen without the held-out data.

With probability ≥ 1 − δ over m i.i.d. held-out examples, R ≤ Bin⁻¹(m, k, ln δ) where k
is the number of held-out errors (Langford 2005, JMLR 6, Thm 3.3).
"""

from __future__ import annotations

import math

from bounds.formulas import _validate
from bounds.formulas.binomial import binom_tail_inv
from bounds.formulas.errors import InvalidInput
from bounds.formulas.result import Bound


def test_set_bound(m: int, errors: int, delta: float = 0.05) -> Bound:
    """Exact binomial upper bound on the true error from k errors on m held-out examples."""
    m = _validate.count(m, "m", positive=True)
    errors = _validate.count(errors, "errors")
    delta = _validate.delta(delta)
    if errors > m:
        raise InvalidInput(f"errors must be at most m, got {errors} > {m}")
    return Bound(
        value=binom_tail_inv(m, errors, math.log(delta)),
        method="test_set",
        empirical_risk=errors / m,
        n=m,
        delta=delta,
        complexity_nats=0.0,
        terms={"log_inv_delta": -math.log(delta)},
        delta_shares={"test_set": delta},
    )


# Not a pytest test despite the name.
test_set_bound.__test__ = False
