"""Argument checks shared by every formula: one clear message, never a silent clip."""

from __future__ import annotations

import math
import numbers

import numpy as np

from bounds.formulas.errors import InvalidInput


def delta(value: float, name: str = "delta") -> float:
    """Return δ as a float after checking 0 < δ < 1."""
    value = real(value, name)
    if not 0.0 < value < 1.0:
        raise InvalidInput(f"{name} must lie strictly between 0 and 1, got {value!r}")
    return value


def real(value: float, name: str) -> float:
    """Return a finite float (rejects NaN, ±inf, bools and non-numbers)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise InvalidInput(f"{name} must be a real number, got {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise InvalidInput(f"{name} must be finite, got {value!r}")
    return value


def nonnegative(value: float, name: str) -> float:
    """Return a finite float ≥ 0."""
    value = real(value, name)
    if value < 0.0:
        raise InvalidInput(f"{name} must be non-negative, got {value!r}")
    return value


def count(value: int, name: str, *, positive: bool = False) -> int:
    """Return an integer ≥ 0 (≥ 1 when `positive`); floats must be whole numbers."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise InvalidInput(f"{name} must be an integer, got {value!r}")
    if isinstance(value, numbers.Integral):
        result = int(value)
    else:
        number = float(value)
        if not math.isfinite(number) or number != math.floor(number):
            raise InvalidInput(f"{name} must be a whole number, got {value!r}")
        result = int(number)
    low = 1 if positive else 0
    if result < low:
        raise InvalidInput(
            f"{name} must be {'positive' if positive else 'non-negative'}, got {value!r}"
        )
    return result


def check_loss_range(bounds: tuple[float, float]) -> tuple[float, float]:
    """Return (a, b) with a < b, both finite."""
    try:
        low, high = bounds
    except (TypeError, ValueError):
        raise InvalidInput(f"loss_range must be a pair (a, b), got {bounds!r}") from None
    low, high = real(low, "loss_range[0]"), real(high, "loss_range[1]")
    if not low < high:
        raise InvalidInput(f"loss_range must have a < b, got ({low!r}, {high!r})")
    return low, high


def array_in(values, low: float, high: float, name: str) -> np.ndarray:
    """Return a float64 array after checking every entry is finite and in [low, high]."""
    array = np.asarray(values, dtype=np.float64)
    if np.isnan(array).any():
        raise InvalidInput(f"{name} contains NaN")
    if (array < low).any() or (array > high).any():
        raise InvalidInput(f"{name} must lie in [{low}, {high}]")
    return array


def unit_risk(risk: float, loss_range: tuple[float, float]) -> tuple[float, float, float]:
    """Check a ≤ risk ≤ b and return (a, b, (risk − a)/(b − a)), the risk mapped to [0, 1]."""
    low, high = check_loss_range(loss_range)
    risk = real(risk, "risk")
    if not low <= risk <= high:
        raise InvalidInput(f"risk must lie in the loss range [{low:g}, {high:g}], got {risk!r}")
    return low, high, (risk - low) / (high - low)
