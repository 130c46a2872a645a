"""The one exception type for bad input to the bound formulas."""


class InvalidInput(ValueError):
    """An argument outside the domain where a bound is defined (δ ∉ (0,1), n ≤ 0, NaN, ...)."""
