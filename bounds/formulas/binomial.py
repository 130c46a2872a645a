"""Binomial tail and its inversion, in log space, with a certified rounding-error bound.

Bin(n, k, p) = Σ_{j≤k} C(n, j) p^j (1−p)^{n−j} = P[X ≤ k] for X ~ Binomial(n, p).

Bin⁻¹(n, k, ln δ) = max{p : Bin(n, k, p) ≥ δ}: the exact (Clopper–Pearson) upper
confidence limit for a true error rate given k errors in n draws
(Langford 2005, JMLR 6, Def. 3.2 and Thm 3.3; Clopper & Pearson 1934). It equals
scipy.stats.beta.ppf(1 − δ, k + 1, n − k) for k < n, but is computed here from the log
of the tail so that ln δ can be −10⁶ or lower (scipy's binom.logcdf gives −inf below ≈ −745).

Rounding model behind every error bound in this module: +, −, ×, ÷ are correctly rounded
IEEE float64 operations (relative error ≤ u = eps/2), and log, log1p and exp return their
result within 4 ulps (relative error ≤ 4·eps). The latter is an assumption: glibc's manual
promises "within a few ulp" (§ Known Maximum Errors in Math Functions); the bounds are in
practice ≥ 10× the actual error (tests/test_binomial.py), which leaves room. Bounds are
first order in eps with a 10 % margin for the second-order terms.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from bounds.formulas import _validate
from bounds.formulas.errors import InvalidInput
from bounds.formulas.kl import kl_inv

_EPS = float(np.finfo(np.float64).eps)
_UNIT = _EPS / 2.0  # unit roundoff of one correctly rounded operation
_LIBM = 4.0 * _EPS  # assumed relative error of log, log1p and exp
_MARGIN = 1.1  # covers the O(eps²) terms dropped from the first-order bounds
_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)
_SMALLEST = 5e-324  # the smallest positive double
_BELOW_ONE = 1.0 - _UNIT  # the largest double below 1
# ln m! for m ≤ 15: m! is an exact double, so only the final log rounds.
_LOG_FACTORIAL_SMALL = np.log(np.array([math.factorial(m) for m in range(16)], dtype=np.float64))


def _stirling_error(m: np.ndarray) -> np.ndarray:
    """s(m) = ln m! − (m + ½) ln m + m − ½ ln 2π for integers m ≥ 1 (Loader's stirlerr).

    m ≤ 15: from the exact factorial. m > 15: the Stirling series
    1/(12m) − 1/(360m³) + 1/(1260m⁵) − 1/(1680m⁷) + 1/(1188m⁹), whose remainder for real
    m > 0 is smaller than the first omitted term (DLMF 5.11.10 and §5.11(ii)).
    Error: for m ≤ 15 a sum of terms of size ≤ 90 with ≤ 5 roundings each (≤ 431 eps);
    for m > 15 the truncation (691/(360360 m¹¹) ≤ 1.1e-16) plus the Horner rounding of a
    value ≤ 0.0053: ≤ 500 eps either way.
    """
    small = m <= 15
    with np.errstate(divide="ignore", invalid="ignore"):
        y = 1.0 / (m * m)
        series = (1.0 / 12 - (1.0 / 360 - (1.0 / 1260 - (1.0 / 1680 - y / 1188) * y) * y) * y) / m
    exact = (
        _LOG_FACTORIAL_SMALL[np.where(small, m, 0).astype(np.int64)]
        - (m + 0.5) * np.log(m)
        + m
        - _HALF_LOG_2PI
    )
    return np.where(small, exact, series)


def _log_binomial(n: int, j: np.ndarray) -> np.ndarray:
    """ln C(n, j) for an array of integers 0 ≤ j ≤ n, accurate to the size of the result.

    ln C(n, j) = A + B + c with A = j ln(n/j), B = m ln(n/m), m = n − j, and
    c = ½ ln(n/(2π j m)) + s(n) − s(j) − s(m), from Stirling's formula with its exact
    remainder s (Loader 2000, "Fast and accurate computation of binomial probabilities").
    Unlike lgamma(n+1) − lgamma(j+1) − lgamma(m+1), whose rounding is ≈ eps·n ln n, every
    piece here is at most the size of the result; `_coefficient_bounds` bounds the error.
    j = 0 and j = n give exactly 0.
    """
    j = np.asarray(j, dtype=np.float64)
    m = n - j
    values = np.zeros(j.shape)
    interior = (j > 0) & (m > 0)
    ji, mi = j[interior], m[interior]
    a = ji * np.log(n / ji)
    b = -mi * np.log1p(-ji / n)
    c = (
        _stirling_error(np.array([float(n)]))[0]
        - _stirling_error(ji)
        - _stirling_error(mi)
        + 0.5 * (np.log(n / ji) - np.log(mi))
        - _HALF_LOG_2PI
    )
    values[interior] = a + b + c
    return values


def _coefficient_bounds(n: int, k: int) -> tuple[float, float]:
    """(max_{j≤k} |ln C(n, j)|, a bound on the error of `_log_binomial(n, j)` for all j ≤ k).

    A + B = n·H(j/n) with H the entropy in nats, increasing on [0, ½], so
    0 ≤ ln C(n, j) ≤ A + B ≤ n·H(x*), x* = min(k/n, ½); c = ln b(j; n, j/n) is the log of
    the largest probability of Binomial(n, j/n), so −ln(n + 1) ≤ c ≤ 0. Rounding:
    A = j·log(n/j) carries ≤ u·j (from the rounding of n/j) + 4.5 eps·A;
    B = −m·log1p(−j/n) carries ≤ u·j (rounding of j/n, amplified by m/(n − j)·n) + 4.5 eps·B;
    ½ ln(…) − ½ ln 2π carries ≤ 10 eps·(ln n + 1); each s its bound (≤ 500 eps); the two
    final additions ≤ eps·(A + B + |c|). Hence the bound
    1.1·eps·(1.01 k + 5.6 n H(x*) + ln(n + 1) + 10 ln n + 1510).
    """
    if k == 0:
        return 0.0, 0.0  # ln C(n, 0) = 0 exactly
    x = min(k, n / 2.0) / n
    entropy = 0.0 if x == 0.0 else n * (-x * math.log(x) - (1.0 - x) * math.log1p(-x))
    entropy = entropy * (1.0 + 1e-12) + 1e-12  # its own rounding
    error = (
        _MARGIN
        * _EPS
        * (1.01 * k + 5.6 * entropy + math.log(n + 1.0) + 10.0 * math.log(n) + 1510.0)
    )
    return entropy, error


def _log_sum_exp(terms: np.ndarray) -> np.ndarray:
    """ln Σ_j exp(terms[..., j]) as max + ln Σ exp(terms − max), so the sum is ≥ 1."""
    top = terms.max(axis=-1)
    finite = np.isfinite(top)
    shift = np.where(finite, top, 0.0)
    with np.errstate(under="ignore"):
        total = np.exp(terms - shift[..., None]).sum(axis=-1)
    return np.where(finite, shift + np.log(total), top)


def _log_terms(n: int, k: int, p: np.ndarray, log_coefficients: np.ndarray) -> np.ndarray:
    """ln C(n, j) + j ln p + (n − j) ln(1 − p) for j = 0..k, one row per entry of the flat p."""
    j = np.arange(k + 1, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        log_p = np.log(p)[:, None]
        log_q = np.log1p(-p)[:, None]
        # xlogy-style: 0·ln 0 = 0 at the ends p = 0 and p = 1.
        terms = log_coefficients + np.where(j == 0, 0.0, j * log_p)
        return terms + np.where(j == n, 0.0, (n - j) * log_q)


def log_binom_cdf(n: int, k: int, p) -> np.ndarray:
    """ln Bin(n, k, p) = ln P[Binomial(n, p) ≤ k], vectorised over p, finite far below −745."""
    n = _validate.count(n, "n", positive=True)
    k = _validate.count(k, "k")
    if k > n:
        raise InvalidInput(f"k must be at most n, got k={k}, n={n}")
    p = _validate.array_in(p, 0.0, 1.0, "p")
    log_coefficients = _log_binomial(n, np.arange(k + 1))
    flat = np.atleast_1d(p).ravel()
    result = _log_sum_exp(_log_terms(n, k, flat, log_coefficients))
    return result.reshape(np.shape(p)) if np.ndim(p) else result[0]


def binom_tail_inv(n: int, k: int, log_delta: float) -> float:
    """Bin⁻¹(n, k, ln δ) = max{p : ln Bin(n, k, p) ≥ ln δ}, never below the exact root.

    Bin(n, k, ·) decreases strictly from 1 at p = 0 to 0 at p = 1 (k < n), so the exact
    root p* is the one point where Bin = δ, and any p with exact ln Bin(p) ≤ ln δ has
    p ≥ p*. The computed value L̃(p) of ln Bin carries a certified error bound ε(p)
    (`_BoundedLogTail`), so the test L̃(p) + ε(p) ≤ ln δ proves exact ln Bin(p) ≤ ln δ,
    hence p ≥ p*. The search keeps a bracket [lo, hi] of doubles where the test holds at
    hi (p = 1 qualifies: Bin = 0) and fails at lo (p = 0 qualifies: Bin = 1), bisects
    the bit patterns down to adjacent doubles and returns hi: never below p*, whether or
    not the computed test is monotone in p. Since the test failed at lo, the exact
    ln Bin(lo) > ln δ − 2ε(lo): the result is at most one ulp above the root of
    ln Bin = ln δ − 2ε, i.e. within ≈ 2ε/|d ln Bin/dp| + 1 ulp of p*. With
    ε ≈ 6 eps·(k ln(n/k) + k |ln p| + n |ln(1 − p)|) + (k + 1)·eps, that is a relative
    distance ≲ 1e-10 for ln δ ≤ −0.01 and n ≤ 10⁶ (measured against mpmath: ≤ 3e-11 for
    n ≤ 10⁵, ≤ 1.2e-10 for n ≤ 10⁶, far less for deep tails). Only for δ within ~1e-6 of 1
    and k ≥ 1, where ln Bin ≈ 0 is small against its absolute error bound, is it wider.
    For speed the bracket starts around the Newton point of the concave, decreasing
    ln Bin (started from the Chernoff bound kl⁻¹(k/n, −ln δ/n) ≥ p*), widened until it
    verifies; a failed verification only falls back to the ends 0 and 1.
    k = n gives 1. Reference: Langford (2005), "Tutorial on practical prediction theory for
    classification", JMLR 6, Thm 3.3 (the test-set bound this inverts).

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
    tail = _BoundedLogTail(n, k)

    def certainly_past_root(p: float) -> bool:
        value, error, _ = tail(p)
        return value + error <= log_delta

    start = float(kl_inv(k / n, -log_delta / n))
    centre, width = _newton_from_above(tail, log_delta, start)
    lo, hi = _verified_bracket(certainly_past_root, centre, width)
    return _bisect_bits(certainly_past_root, lo, hi)


# Terms more than this many nats below the term at (about) the mode are left out of the
# sum; their total is at most (k + 1)·e^{2η + 1 − 60} of the sum, added to the bound (the
# 1 nat covers the rounding of the threshold itself).
_WINDOW_NATS = 60.0


def _term_error(
    n: int, k: int, log_p: float, log_q: float, coefficients: tuple[float, float]
) -> float:
    """Bound on |t̃_j − t_j| for every term t_j = ln C(n, j) + j ln p + (n − j) ln(1 − p).

    η (the coefficients' bound) + 6 eps·(max_j |ln C(n, j)| + k |ln p| + n |ln(1 − p)|):
    each product j·log(p), (n − j)·log1p(−p) carries 4 eps + u of itself, each of the two
    additions u of the sum of magnitudes.
    """
    coefficient_max, coefficient_error = coefficients
    return coefficient_error + 6.0 * _EPS * (coefficient_max + k * abs(log_p) + n * abs(log_q))


def _sum_error(count: int, value: float) -> float:
    """Bound on the rounding of M + log Σ_j exp(t̃_j − M) over `count` terms, M = max t̃_j.

    ln Σ exp is monotone in every term, so the terms' own errors move the exact
    ln Σ exp(t̃_j) by at most their maximum (`_term_error`). The evaluation adds: the
    subtraction's u·|t̃_j − M| and exp's 4 eps per term, relative ≤ u·N/e + 4 eps of the
    sum s ≥ 1 since x·e^{−x} ≤ 1/e; adding N non-negative terms in any order, ≤ (N − 1)·u
    of s; log, ≤ 4 eps·ln N (s ≤ N); the final addition and the caller's comparison
    against ln δ, ≤ eps·|value| together.
    """
    if count == 1:
        return _EPS * abs(value)  # M + log(exp(0)) = M: no rounding but the comparison's
    relative = count * _UNIT / math.e + _LIBM + (count - 1) * _UNIT
    return 1.02 * relative + 1.01 * _LIBM * math.log(count) + _EPS * abs(value)


class _BoundedLogTail:
    """p ↦ (computed ln Bin(n, k, p), a bound ε(p) on its error, d ln Bin/dp), 0 < p < 1.

    ε(p) = 1.1·(`_term_error` + `_sum_error`) + (k + 1)·e^{2η + 1 − 60} for the terms left
    out of the sum (`_window`), η the terms' error bound.
    """

    def __init__(self, n: int, k: int) -> None:
        self.n, self.k = n, k
        self.coefficients = _coefficient_bounds(n, k)
        # Points 1, 2, 4, … on either side of the mode where the window's edges are sought.
        self.offsets = 2.0 ** np.arange(max(1, k + 1).bit_length() + 1)

    def __call__(self, p: float) -> tuple[float, float, float]:
        n, k = self.n, self.k
        log_p, log_q = math.log(p), math.log1p(-p)
        term_error = _term_error(n, k, log_p, log_q, self.coefficients)
        lo, hi = self._window(p, log_p, log_q, term_error)
        value = float(_log_sum_exp(self._terms(np.arange(lo, hi), log_p, log_q)))
        error = _MARGIN * (term_error + _sum_error(hi - lo, value))
        if hi - lo < k + 1:
            error += (k + 1) * math.exp(2.0 * term_error + 1.0 - _WINDOW_NATS)
        # d Bin/dp = −n C(n−1, k) p^k (1−p)^{n−1−k} = −(n − k)·b_k/(1 − p), b_k the last term.
        last = float(self._terms(np.array([k]), log_p, log_q)[0])
        slope = -(n - k) * math.exp(last - value) / (1.0 - p)
        return value, error, slope

    def _terms(self, j: np.ndarray, log_p: float, log_q: float) -> np.ndarray:
        j = np.asarray(j, dtype=np.float64)
        return _log_binomial(self.n, j) + j * log_p + (self.n - j) * log_q

    def _window(self, p: float, log_p: float, log_q: float, term_error: float) -> tuple[int, int]:
        """Indices [lo, hi) of the terms kept: those within ≈ 60 nats of the mode's.

        The exact terms increase in j up to the mode ⌊(n+1)p⌋ and decrease after it
        (b_j/b_{j−1} = (n−j+1)p/(j(1−p))). Below `low_mode` ≤ mode and above
        `high_mode` ≥ mode (±1 covers the rounding of (n+1)p), a computed term under
        threshold = t̃(low_mode) − 60 therefore bounds every exact term beyond it by
        threshold + η. The edges are the first such points at distances 1, 2, 4, … from
        the mode, so at most twice the needed terms are kept. The k + 1 or fewer terms
        left out are each ≤ e^{2η + 1 − 60} of the term at `low_mode`, itself ≤ the sum
        (the 1 covers the rounding u·|t̃| of the threshold, for |t̃| < 2⁵²).
        """
        k = self.k
        if term_error > 0.5:  # not for any sane input; then keep every term
            return 0, k + 1
        mode = math.floor((self.n + 1) * p)
        low_mode, high_mode = max(0, min(k, mode - 1)), min(k, mode + 1)
        below = low_mode - self.offsets[self.offsets <= low_mode]
        above = high_mode + self.offsets[self.offsets <= k - high_mode]
        terms = self._terms(np.concatenate(([low_mode], below, above)), log_p, log_q)
        small = terms < terms[0] - _WINDOW_NATS
        small_below = np.flatnonzero(small[1 : 1 + below.size])
        small_above = np.flatnonzero(small[1 + below.size :])
        lo = int(below[small_below[0]]) + 1 if small_below.size else 0
        hi = int(above[small_above[0]]) if small_above.size else k + 1
        return lo, hi


def _newton_from_above(
    tail: _BoundedLogTail, log_delta: float, start: float
) -> tuple[float, float]:
    """Newton's method on ln Bin(p) = ln δ; returns the point and a bracket half-width.

    ln Bin is concave in p (the tail of a log-concave Beta(k+1, n−k) law), so from any
    start one step lands right of the root and the iterates then decrease towards it.
    The half-width 2ε/|slope| + 8 ulps is where the certified test should change sign.
    """
    p = min(max(start, 0.0), 1.0)
    if p in (0.0, 1.0):
        p = 0.5
    value, error, slope = tail(p)
    for _ in range(100):
        if not (np.isfinite(slope) and slope < 0.0):
            break
        target = p - (value - log_delta) / slope
        # Stay inside (0, 1): halve the way to the end instead of stepping out.
        target = (p + 1.0) / 2.0 if target >= 1.0 else p / 2.0 if target <= 0.0 else target
        target = min(max(target, _SMALLEST), _BELOW_ONE)
        # Closer than the error bound of ln Bin allows to resolve: rounding noise only.
        done = abs(target - p) <= max(4.0 * _EPS * p, error / -slope)
        p = target
        value, error, slope = tail(p)
        if done:
            break
    width = 2.0 * error / abs(slope) if np.isfinite(slope) and slope < 0.0 else 0.0
    return p, width + 8.0 * _EPS * p


def _verified_bracket(
    certainly_past_root: Callable[[float], bool], centre: float, width: float
) -> tuple[float, float]:
    """Doubles lo < hi with the test failing at lo and holding at hi, near `centre`.

    The width grows ×16 on failure; after 6 tries the end itself (0 or 1) is used, where
    the test is known without evaluation (Bin(0) = 1 > δ, Bin(1) = 0 ≤ δ).
    """
    hi = 1.0
    for attempt in range(6):
        candidate = centre + width * 16.0**attempt
        if candidate >= 1.0:
            break
        if certainly_past_root(candidate):
            hi = candidate
            break
    lo = 0.0
    for attempt in range(6):
        candidate = centre - width * 16.0**attempt
        if candidate <= 0.0:
            break
        if not certainly_past_root(candidate):
            lo = candidate
            break
        hi = min(hi, candidate)
    return lo, hi


def _bisect_bits(certainly_past_root: Callable[[float], bool], lo: float, hi: float) -> float:
    """Bisect the bit patterns of doubles in [lo, hi] to adjacent doubles; return the upper.

    Non-negative doubles are ordered like their bit patterns, so this takes ≤ 64 steps.
    """
    lo_bits, hi_bits = _float_to_bits(lo), _float_to_bits(hi)
    while hi_bits - lo_bits > 1:
        mid_bits = lo_bits + (hi_bits - lo_bits) // 2
        if certainly_past_root(_bits_to_float(mid_bits)):
            hi_bits = mid_bits
        else:
            lo_bits = mid_bits
    return _bits_to_float(hi_bits)


def _float_to_bits(value: float) -> int:
    """The IEEE bit pattern of a non-negative double, as an int."""
    return int(np.array([value], dtype=np.float64).view(np.int64)[0])


def _bits_to_float(bits: int) -> float:
    """The non-negative double whose IEEE bit pattern is `bits` (ordered like the values)."""
    return float(np.array([bits], dtype=np.int64).view(np.float64)[0])


def binomial_lower_limit(k: int, n: int, miss: float) -> float:
    """One-sided Clopper–Pearson lower confidence limit of a binomial proportion.

    p_L = the p with P[Bin(n, p) ≥ k] = `miss`, i.e. the `miss` quantile of Beta(k, n − k + 1),
    and p_L = 0 for k = 0 (Clopper & Pearson, Biometrika 26, 1934). For every p,
    P[p_L(K) > p] ≤ miss over K ~ Bin(n, p). The search uses it only to rule candidates out
    (`bounds.pipeline.search`); no certified bound depends on it.
    """
    _validate.count(n, "n", positive=True)
    _validate.count(k, "k")
    if k > n:
        raise InvalidInput(f"k must be at most n = {n}, got {k}")
    _validate.delta(miss, "miss")
    if k == 0:
        return 0.0
    from scipy.stats import beta

    return float(beta.ppf(miss, k, n - k + 1))
