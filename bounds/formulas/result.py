"""The result type every bound formula returns."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field


@dataclass(frozen=True)
class Bound:
    """A certified upper bound on a true risk, with its own breakdown.

    Attributes
    ----------
    value : the bound: with probability ≥ 1 − δ the true risk is at most `value`.
    method : the formula's name (e.g. "binomial", "kl", "catoni").
    empirical_risk : the empirical risk the bound starts from.
    n : the number of i.i.d. units the empirical risk averages over.
    delta : the total confidence budget this bound spends (the sum of `delta_shares`).
    complexity_nats : the complexity term in nats (K ln 2 for Occam, KL for PAC-Bayes),
        before ln(1/δ) and grid terms, which are listed in `terms`.
    terms : every named quantity that enters the formula.
    delta_shares : how δ was spent, by name.
    loss_range : the range [a, b] of the loss; a bound ≥ b says nothing.
    """

    value: float
    method: str
    empirical_risk: float
    n: int
    delta: float
    complexity_nats: float
    terms: dict[str, float] = field(default_factory=dict)
    delta_shares: dict[str, float] = field(default_factory=dict)
    loss_range: tuple[float, float] = (0.0, 1.0)

    @property
    def vacuous(self) -> bool:
        """True when the bound is no better than the loss's upper end."""
        return bool(self.value >= self.loss_range[1])

    def to_dict(self) -> dict:
        """A JSON-ready dictionary (floats stay floats; the tuple becomes a list)."""
        data = asdict(self)
        data["loss_range"] = list(self.loss_range)
        data["vacuous"] = self.vacuous
        return data

    def __post_init__(self) -> None:
        # Plain floats, so the result serialises to JSON whatever numpy handed over.
        for name in ("value", "empirical_risk", "delta", "complexity_nats"):
            object.__setattr__(self, name, float(getattr(self, name)))
        object.__setattr__(self, "terms", {k: float(v) for k, v in self.terms.items()})
        if not math.isfinite(self.value):
            raise ValueError(f"{self.method} bound is not finite: {self.value!r}")
