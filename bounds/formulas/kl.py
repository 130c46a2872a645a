"""Bernoulli relative entropy and its upper inverse.

kl(q‖p) = q ln(q/p) + (1−q) ln((1−q)/(1−p)), with 0 ln 0 = 0 (natural logs).

kl⁻¹(q, c) = sup{p ∈ [q, 1] : kl(q‖p) ≤ c}; the inverse that turns the Chernoff bound
kl(R̂‖R) ≤ c into R ≤ kl⁻¹(R̂, c) (Langford 2005, "Tutorial on practical prediction theory
for classification", JMLR 6, §3; Seeger 2002; Maurer 2004).
"""

from __future__ import annotations

import numpy as np
from scipy.special import rel_entr

from bounds.formulas import _validate
from bounds.formulas.errors import InvalidInput

_EPS = np.finfo(np.float64).eps
# Rounding in the float64 evaluation of kl moves the computed root by at most a few ulps
# of p (the error of kl near the root is ≲ eps·(p−q), its slope is (p−q)/(p(1−p))), so
# the result is raised by this relative margin to stay above the exact root.
_ROUNDING_MARGIN = 8.0 * _EPS


def kl(q, p):
    """Bernoulli KL divergence kl(q‖p) in nats, vectorised; 0 ln 0 = 0, kl(q‖p)=∞ off-support.

    >>> float(kl(0.5, 0.5))
    0.0
    """
    q = _validate.array_in(q, 0.0, 1.0, "q")
    p = _validate.array_in(p, 0.0, 1.0, "p")
    return rel_entr(q, p) + rel_entr(1.0 - q, 1.0 - p)


def _kl_above(q: np.ndarray, p: np.ndarray) -> np.ndarray:
    """kl(q‖p) for 0 < q < p ≤ 1 written through d = p − q, accurate when p is close to q.

    kl = −q·log1p(d/q) − (1−q)·log1p(−d/(1−q)); the first-order terms cancel exactly, so
    the absolute error stays ≈ eps·d instead of eps·|q ln q|.
    """
    d = p - q
    with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
        first = -q * np.log1p(d / q)
        # d/q overflows for subnormal q; there p ≫ q and the plain ratio is accurate.
        overflow = ~np.isfinite(first)
        if overflow.any():
            first[overflow] = q[overflow] * (np.log(q[overflow]) - np.log(p[overflow]))
        return first - (1.0 - q) * np.log1p(-d / (1.0 - q))


def _upper_start(q: np.ndarray, c: np.ndarray) -> np.ndarray:
    """A point p ≥ kl⁻¹(q, c), the smallest of three upper bounds on the root.

    Pinsker kl ≥ 2(p−q)² gives q + √(c/2); kl ≥ (p−q)²/(2p) (p ≥ q) gives
    q + c + √(c² + 2qc); dropping q ln(q/p) ≥ q ln q gives 1 − (1−q)·exp(−(c − q ln q)/(1−q)).
    """
    pinsker = q + np.sqrt(c / 2.0)
    relative = q + c + np.sqrt(c * c + 2.0 * q * c)
    near_one = 1.0 - (1.0 - q) * np.exp(-(c - q * np.log(q)) / (1.0 - q))
    start = np.minimum(np.minimum(pinsker, relative), near_one)
    # Rounding could leave a start a hair below the root; nudge up and cap at 1.
    return np.minimum(1.0, start * (1.0 + 4 * _EPS))


def _next_up(x: np.ndarray, steps: int) -> np.ndarray:
    return x.view(np.int64).__add__(steps).view(np.float64)


def _bisect_bits(q: np.ndarray, c: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Smallest float64 p in (lo, hi] with kl(q‖p) ≥ c, given kl(q‖lo) < c ≤ kl(q‖hi).

    Bisection on the bit patterns of non-negative doubles (ordered like their values),
    so it ends on adjacent doubles in at most 64 steps and returns the bracket's upper end.
    """
    lo_bits = lo.view(np.int64).copy()
    hi_bits = hi.view(np.int64).copy()
    while True:
        open_ = hi_bits - lo_bits > 1
        if not open_.any():
            return hi_bits.view(np.float64)
        mid_bits = lo_bits[open_] + (hi_bits[open_] - lo_bits[open_]) // 2
        above = _kl_above(q[open_], mid_bits.view(np.float64)) >= c[open_]
        index = np.flatnonzero(open_)
        hi_bits[index[above]] = mid_bits[above]
        lo_bits[index[~above]] = mid_bits[~above]


def _kl_inv_interior(q: np.ndarray, c: np.ndarray) -> np.ndarray:
    """kl⁻¹ for 0 < q < 1 and c > 0: Newton from above, then a verified bracket.

    kl(q‖·) is convex and increasing on [q, 1], so Newton's iterates started right of the
    root decrease monotonically towards it. The answer is the smallest double at which the
    float64 kl reaches c, found by bisection inside a verified bracket around Newton's point.
    """
    start = _upper_start(q, c)
    p = start.copy()
    active = np.flatnonzero(p < 1.0)
    for _ in range(100):
        if active.size == 0:
            break
        qa, ca, pa = q[active], c[active], p[active]
        with np.errstate(divide="ignore", invalid="ignore"):
            slope = (pa - qa) / (pa * (1.0 - pa))
            step = (_kl_above(qa, pa) - ca) / slope
        step = np.where(np.isfinite(step), step, 0.0)
        moved = np.where(step > 0.0, pa - step, pa)
        p[active] = np.maximum(moved, qa)
        active = active[step > 4.0 * _EPS * pa]

    # Bracket the float64 root within ±4 ulps of Newton's point and bisect it to adjacent
    # doubles; points whose bracket fails to verify are bisected on all of [q, start].
    hi = np.minimum(1.0, _next_up(p, 4))
    lo = np.maximum(q, _next_up(p, -4))
    verified = (_kl_above(q, hi) >= c) & ((lo == q) | (_kl_above(q, lo) < c))
    hi[~verified] = np.where(_kl_above(q, start) >= c, start, 1.0)[~verified]
    lo[~verified] = q[~verified]
    return _bisect_bits(q, c, lo, hi)
    return p


def kl_inv(q, c):
    """Upper inverse of the Bernoulli KL: sup{p ∈ [q, 1] : kl(q‖p) ≤ c}, vectorised.

    Closed forms at the edges: c ≤ 0 → q; q = 1 → 1; q = 0 → 1 − e^{−c}. Elsewhere Newton's
    method from above with a certified bracket. The result is conservative: never below the
    exact root (up to float64 rounding of kl itself, covered by an 8-ulp margin) and within
    1e-12 of it. Reference: Langford (2005), JMLR 6, Thm 3.3 / §4.

    Parameters
    ----------
    q : array_like in [0, 1]
        Empirical risk.
    c : array_like, finite
        Complexity per example, e.g. (K ln 2 + ln(1/δ))/n.
    """
    q = _validate.array_in(q, 0.0, 1.0, "q")
    c = np.asarray(c, dtype=np.float64)
    if np.isnan(c).any() or np.isinf(c).any():
        raise InvalidInput("c must be finite")
    q, c = np.broadcast_arrays(q, c)
    result = np.array(q, dtype=np.float64, copy=True)
    zero = (q == 0.0) & (c > 0.0)
    result[zero] = -np.expm1(-c[zero])
    interior = (q > 0.0) & (q < 1.0) & (c > 0.0)
    if interior.any():
        result[interior] = _kl_inv_interior(q[interior], c[interior])
    raised = (c > 0.0) & (q < 1.0)
    result[raised] = np.minimum(1.0, result[raised] * (1.0 + _ROUNDING_MARGIN))
    return result[()] if result.ndim == 0 else result
