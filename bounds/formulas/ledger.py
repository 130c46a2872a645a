"""The δ ledger: every use of the confidence budget takes an explicit, named share.

A union bound over several claims that must hold simultaneously spends δ as a sum of
shares δ₁ + δ₂ + … ≤ δ; each claim is then made at its own share. A grid of G equally
weighted choices inside one claim costs ln G nats in that claim's complexity instead.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

from bounds.formulas import _validate
from bounds.formulas.errors import InvalidInput


@dataclass
class Ledger:
    """A budget δ split into named shares; the shares never exceed δ.

    >>> ledger = Ledger(0.05)
    >>> bound_delta = ledger.take("bound", 0.04)
    >>> ledger.take_rest("monte_carlo")
    0.01
    """

    delta: float
    shares: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.delta = _validate.delta(self.delta)

    @property
    def spent(self) -> float:
        """Sum of the shares taken so far."""
        return math.fsum(self.shares.values())

    @property
    def remaining(self) -> float:
        """δ minus the shares taken so far."""
        return self.delta - self.spent

    def take(self, name: str, share: float) -> float:
        """Record a share δ_name and return it; the total may not exceed δ."""
        if name in self.shares:
            raise InvalidInput(f"the δ ledger already has a share named {name!r}")
        share = _validate.delta(share, f"δ share {name!r}")
        # A relative slack of 1e-12 absorbs rounding when shares are fractions of δ.
        if self.spent + share > self.delta * (1.0 + 1e-12):
            raise InvalidInput(
                f"δ share {name!r} = {share:g} exceeds the remaining budget {self.remaining:g}"
            )
        self.shares[name] = share
        return share

    def take_rest(self, name: str) -> float:
        """Give everything not yet taken to one share."""
        return self.take(name, self.remaining)

    def split(self, weights: Mapping[str, float]) -> dict[str, float]:
        """Take shares proportional to `weights` out of the whole remaining budget."""
        total = math.fsum(weights.values())
        if total <= 0 or any(w <= 0 for w in weights.values()):
            raise InvalidInput("ledger weights must be positive")
        rest = self.remaining
        return {name: self.take(name, rest * w / total) for name, w in weights.items()}
