"""Binomial tail and its inversion, in log space.

Bin(n, k, p) = Σ_{j≤k} C(n, j) p^j (1−p)^{n−j} = P[X ≤ k] for X ~ Binomial(n, p).

Bin⁻¹(n, k, ln δ) = max{p : Bin(n, k, p) ≥ δ}: the exact (Clopper–Pearson) upper
confidence limit for a true error rate given k errors in n draws
(Langford 2005, JMLR 6, Def. 3.2; Clopper & Pearson 1934). It equals
scipy.stats.beta.ppf(1 − δ, k + 1, n − k) for k < n, but is computed here from the log
of the tail so that ln δ can be −10⁶ or lower (scipy's binom.logcdf gives −inf below ≈ −745).
"""

from __future__ import annotations

import numpy as np
from scipy.special import betaln, logsumexp

from . import _validate
from .errors import InvalidInput

_EPS = np.finfo(np.float64).eps


def _log_binomial_coefficients(n: int, k: int) -> np.ndarray:
    """ln C(n, j) for j = 0..k, via ln C(n, j) = −ln(n+1) − ln B(n−j+1, j+1)."""
    j = np.arange(k + 1, dtype=np.float64)
    return -np.log(n + 1.0) - betaln(n - j + 1.0, j + 1.0)


def log_binom_cdf(n: int, k: int, p) -> np.ndarray:
    """ln Bin(n, k, p) = ln P[Binomial(n, p) ≤ k], vectorised over p, finite far below −745."""
    n = _validate.count(n, "n", positive=True)
    k = _validate.count(k, "k")
    if k > n:
        raise InvalidInput(f"k must be at most n, got k={k}, n={n}")
    p = _validate.array_in(p, 0.0, 1.0, "p")
    return _log_tail(n, k, p, _log_binomial_coefficients(n, k))


def _log_tail(n: int, k: int, p: np.ndarray, log_coefficients: np.ndarray) -> np.ndarray:
    j = np.arange(k + 1, dtype=np.float64)
    flat = np.atleast_1d(p).ravel()
    with np.errstate(divide="ignore", invalid="ignore"):
        log_p = np.log(flat)[:, None]
        log_q = np.log1p(-flat)[:, None]
        # xlogy-style: 0·ln 0 = 0 at the ends p = 0 and p = 1.
        terms = log_coefficients + np.where(j == 0, 0.0, j * log_p)
        terms = terms + np.where(j == n, 0.0, (n - j) * log_q)
    result = logsumexp(terms, axis=1)
    return result.reshape(np.shape(p)) if np.ndim(p) else result[0]


def binom_tail_inv(n: int, k: int, log_delta: float) -> float:
    """Bin⁻¹(n, k, ln δ) = max{p : ln Bin(n, k, p) ≥ ln δ}, the exact binomial upper limit.

    Bisection on the bit patterns of doubles in [0, 1]: it ends on two adjacent doubles
    and returns the upper one (conservative), raised by a relative 8·eps for the float64
    rounding of ln Bin. k = n gives 1. Reference: Langford (2005), JMLR 6, Thm 3.3.

    Parameters
    ----------
    n : int > 0
        Number of examples.
    k : int in [0, n]
        Number of errors.
    log_delta : float < 0
        ln δ' (for the Occam bound ln δ − K ln 2; any finite negative value is fine).
    """
    n = _validate.count(n, "n", positive=True)
    k = _validate.count(k, "k")
    if k > n:
        raise InvalidInput(f"errors must be at most n, got {k} > {n}")
    log_delta = _validate.real(log_delta, "log_delta")
    if log_delta >= 0.0:
        raise InvalidInput(f"log_delta must be negative (δ < 1), got {log_delta!r}")
    if k == n:
        return 1.0
    log_coefficients = _log_binomial_coefficients(n, k)

    def reaches(p: np.ndarray) -> np.ndarray:
        return _log_tail(n, k, p, log_coefficients) >= log_delta

    # Bin(n, k, ·) decreases from 1 at p = 0 to 0 at p = 1 (k < n): the bracket [0, 1] holds.
    lo_bits, hi_bits = np.array([0.0, 1.0]).view(np.int64)
    while hi_bits - lo_bits > 1:
        mid_bits = lo_bits + (hi_bits - lo_bits) // 2
        if reaches(np.array([mid_bits], dtype=np.int64).view(np.float64))[0]:
            lo_bits = mid_bits
        else:
            hi_bits = mid_bits
    upper = float(np.array([hi_bits], dtype=np.int64).view(np.float64)[0])
    return min(1.0, upper * (1.0 + 8 * _EPS))
