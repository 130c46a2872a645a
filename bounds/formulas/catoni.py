"""Catoni's bound for a fixed β, minimised over a grid declared before the data.

For losses in [0, 1], a fixed β > 0 and complexity C (nats, including ln(1/δ)):
    R ≤ (1 − exp(−β R̂ − C/n)) / (1 − e^{−β}).
Catoni (2007), "PAC-Bayesian supervised classification", Thm 1.2.6; the countable-class
(Occam) form takes C = K ln 2 + ln(1/δ). A union over a grid G of β values costs ln |G|
nats, so C includes ln |G| and every β of the grid may be used.
"""

from __future__ import annotations

import numpy as np

from bounds.formulas.errors import InvalidInput

#: The default β grid: 49 quarter-octave steps from 1/64 to 64 (ln 49 ≈ 3.9 nats).
DEFAULT_BETA_GRID: tuple[float, ...] = tuple(float(b) for b in np.geomspace(1 / 64, 64, 49))


def check_beta_grid(beta_grid) -> np.ndarray:
    """Return the grid as a float64 array of distinct positive finite values."""
    grid = np.asarray(DEFAULT_BETA_GRID if beta_grid is None else beta_grid, dtype=np.float64)
    if grid.ndim != 1 or grid.size == 0:
        raise InvalidInput("beta_grid must be a non-empty sequence of numbers")
    if not np.isfinite(grid).all() or (grid <= 0).any():
        raise InvalidInput("beta_grid values must be positive and finite")
    if np.unique(grid).size != grid.size:
        raise InvalidInput("beta_grid values must be distinct")
    return grid


def catoni_minimum(unit_risk: float, complexity_nats: float, n: int, grid: np.ndarray):
    """min over β ∈ grid of (1 − exp(−β R̂ − C/n)) / (1 − e^{−β}); returns (value, β).

    `complexity_nats` must already include ln(|grid|/δ).
    """
    values = -np.expm1(-grid * unit_risk - complexity_nats / n) / -np.expm1(-grid)
    best = int(np.argmin(values))
    return float(values[best]), float(grid[best])
