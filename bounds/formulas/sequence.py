"""Token-level bounds for language models, the smoothed log loss, and subsampled risks.

Setting. The m scored tokens of a corpus, in document order, generate a filtration F_t
(everything up to and including token t). For a hypothesis h fixed before the data, its loss
ℓ_t on token t depends on h and the tokens up to t, and lies in [a, b]. The bounds below are
on (1/m) Σ_t E[ℓ_t | F_{t−1}], the mean conditional expected loss of the tokens as they come
(for i.i.d. documents, E[ℓ_t | F_{t−1}] is the expectation given the document's own prefix).
No independence between tokens is assumed: ℓ_t − E[ℓ_t | F_{t−1}] is a martingale difference.

Prior and unions. As in the Occam bound, h has a prefix-free code of K bits and gets the share
δ·2^{−K}; a report selected among `choices` alternatives fixed in advance (an α grid) gives each
δ/choices; a λ grid Λ gives each λ the share δ/|Λ|. Every share is handled as a log
(ln δ − K ln 2 − ln choices − ln |Λ|); the product δ·2^{−K} is never formed.

- "azuma" (Azuma 1967, Tohoku Math. J. 19; Hoeffding 1963, JASA 58, Lemma 1 applied to each
  conditional increment): with Δ = b − a and m fixed before the data,
  (1/m) Σ E[ℓ_t | F_{t−1}] ≤ ℓ̄ + Δ √((K ln 2 + ln(choices/δ)) / (2m)). `azuma_bound` reports
  the time-uniform form of this (a λ grid and Ville's inequality), which also holds when m
  depends on the data, as it does for documents of random length.
- "bernstein", variance-adaptive: see `bernstein_bound`. It too holds at every m at once.

Smoothed log loss (Lotfi et al. 2024, "Non-vacuous generalization bounds for large language
models", ICML): p̃ = (1 − α) p + α/V, ℓ_α = −log₂ p̃ ∈ [−log₂(1 − α + α/V), log₂(V/α)].

Subsampling: the mean over s units drawn with replacement bounds the mean over all units by
kl⁻¹ of the Chernoff bound (Hoeffding 1963, Thm 1); `with_subsample` joins that claim to a bound
computed from the subsample's upper value, the two δ shares adding up.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from bounds.formulas import _validate
from bounds.formulas.errors import InvalidInput
from bounds.formulas.kl import kl_inv
from bounds.formulas.result import Bound

_LN2 = math.log(2.0)

#: α values for the smoothed log loss: 2^−1, 2^−2, …, 2^−10 (ln 10 ≈ 2.3 nats as `choices`).
#: Trading the smoothing cost (ℓ_α exceeds −log₂ p by up to −log₂(1 − α) ≈ 1.44 α bits) against
#: the range width (≈ log₂(V/α), which the deviation term multiplies) puts the best α near
#: √(C/(2m)) for a complexity of C nats over m tokens; this grid covers that optimum for C/m
#: from about 2·10⁻⁶ to 0.5, the range where a token-level bound can be non-vacuous, and the
#: objective is flat enough in ln α that a factor-2 step loses little.
DEFAULT_ALPHA_GRID: tuple[float, ...] = tuple(2.0**-k for k in range(1, 11))


def _lambda_grid() -> np.ndarray:
    grid = 2.0 ** (-np.arange(1, 41) / 2.0)
    grid.setflags(write=False)
    return grid


#: λ values for `bernstein_bound`: 2^{−k/2} for k = 1, …, 40, i.e. 0.707 down to 9.5·10⁻⁷
#: (ln 40 ≈ 3.7 nats). For small λ, ψ(λ) ≈ λ²/2 and the best λ is about √(2C/V) ≥ √(2C/m);
#: with C ≥ ln(40/δ) ≈ 6.7 nats this stays above 2^{−20} up to m ≈ 10¹³ tokens, and large λ
#: serve the low-variance case. With the excess ≈ λV/(2m) + C/(λm), a λ off the best by a
#: factor r costs (r + 1/r)/2 of the best excess: at most 1.5 % on a half-octave grid (r = 2^{1/4}).
DEFAULT_LAMBDA_GRID: np.ndarray = _lambda_grid()


def _azuma_grid() -> np.ndarray:
    grid = 2.0 ** (np.arange(-40, 9) / 2.0)
    grid.setflags(write=False)
    return grid


#: λ values for `azuma_bound`: 2^{k/2} for k = −40, …, 8, i.e. 9.5·10⁻⁷ up to 16 (ln 49 ≈ 3.9
#: nats). The best λ is √(8C/m) for C nats over m tokens: inside the grid from C/m ≈ 10⁻¹³ (far
#: beyond any corpus) to C/m = 32, where the bound is vacuous anyway.
AZUMA_LAMBDA_GRID: np.ndarray = _azuma_grid()

# Terms of the series for ψ kept when λ ≤ 1/2 (ratio r² ≤ 1/9 between terms; 9^{−18} < 2^{−57}).
_PSI_SERIES_TERMS = 18


@dataclass(frozen=True)
class Subsample:
    """The upper confidence value of a population mean estimated from a subsample.

    With probability ≥ 1 − δ over the draws, the mean over all units is at most `upper`.
    """

    sample_mean: float
    s: int
    delta: float
    upper: float
    loss_range: tuple[float, float] = (0.0, 1.0)


def _alpha(alpha: float) -> float:
    alpha = _validate.real(alpha, "alpha")
    if not 0.0 < alpha < 1.0:
        raise InvalidInput(f"alpha must lie strictly between 0 and 1, got {alpha!r}")
    return alpha


def _vocab_size(vocab_size: int) -> int:
    vocab_size = _validate.count(vocab_size, "vocab_size")
    if vocab_size < 2:
        raise InvalidInput(f"vocab_size must be at least 2, got {vocab_size}")
    return vocab_size


def _log_smoothed(log_prob, alpha: float, vocab_size: int):
    """ln p̃ = logaddexp(ln(1 − α) + ln p, ln α − ln V), the one expression used everywhere."""
    return np.logaddexp(math.log1p(-alpha) + log_prob, math.log(alpha) - math.log(vocab_size))


def smoothed_loss_range(alpha: float, vocab_size: int) -> tuple[float, float]:
    """[−log₂(1 − α + α/V), log₂(V/α)] in bits, the range of the smoothed log loss ℓ_α.

    The ends are the loss at p = 1 and at p = 0, computed by the same log-space expression as
    `smoothed_log_loss`, so every loss it returns lies in the range exactly. The width is
    log₂(1 + (1 − α)V/α) (Lotfi et al. 2024).
    """
    alpha, vocab_size = _alpha(alpha), _vocab_size(vocab_size)
    low = -float(_log_smoothed(0.0, alpha, vocab_size)) / _LN2
    high = -float(_log_smoothed(-np.inf, alpha, vocab_size)) / _LN2
    return low, high


def smoothed_log_loss(log_prob, alpha: float, vocab_size: int) -> np.ndarray:
    """ℓ_α = −log₂((1 − α) p + α/V) in bits, from ln p in nats (vectorised, log space).

    `log_prob` may be −inf (p = 0) or so small that p underflows; the loss is then log₂(V/α).
    """
    alpha, vocab_size = _alpha(alpha), _vocab_size(vocab_size)
    log_prob = np.asarray(log_prob, dtype=np.float64)
    if np.isnan(log_prob).any():
        raise InvalidInput("log_prob contains NaN")
    if (log_prob > 0.0).any():
        raise InvalidInput("log_prob must be a log-probability (≤ 0)")
    return -_log_smoothed(log_prob, alpha, vocab_size) / _LN2


def _mean_in_range(mean_loss: float, loss_range: tuple[float, float]) -> tuple[float, float, float]:
    low, high = _validate.check_loss_range(loss_range)
    mean_loss = _validate.real(mean_loss, "mean_loss")
    if not low <= mean_loss <= high:
        raise InvalidInput(
            f"mean_loss must lie in the loss range [{low:g}, {high:g}], got {mean_loss!r}"
        )
    return mean_loss, low, high


def _union_terms(code_bits: float, delta: float, choices: int) -> dict[str, float]:
    """The ledger of the union over hypotheses and choices, shared by both token bounds."""
    return {
        "code_bits": code_bits,
        "choices": float(choices),
        "choice_nats": math.log(choices),
        "log_inv_delta": -math.log(delta),
    }


def azuma_bound(
    mean_loss: float,
    m: int,
    code_bits: float,
    delta: float = 0.05,
    *,
    loss_range: tuple[float, float] = (0.0, 1.0),
    choices: int = 1,
) -> Bound:
    """Azuma–Hoeffding bound on the mean conditional expected loss of m tokens, at any m.

    On the [0, 1] scale X_t = (ℓ_t − a)/(b − a), μ_t = E[X_t | F_{t−1}]:

        (1/m) Σ μ_t ≤ X̄ + λ/8 + (K ln 2 + ln |Λ| + ln(choices/δ)) / (λ m)

    for every λ of the grid Λ = AZUMA_LAMBDA_GRID, every hypothesis and every choice at once,
    w.p. ≥ 1 − δ; the best λ is reported (term "lambda") and mapped back to [a, b].

    Proof. Given F_{t−1}, μ_t − X_t has mean 0 and lies in an interval of width 1, so
    E[exp(λ(μ_t − X_t)) | F_{t−1}] ≤ exp(λ²/8) (Hoeffding 1963, JASA 58, Lemma 1) and
    Π_{t≤m} exp(λ(μ_t − X_t) − λ²/8) is a nonnegative supermartingale (Azuma 1967, Tohoku
    Math. J. 19). Ville's inequality bounds the chance that it ever exceeds 1/δ' by δ', so the
    claim holds at every m at once — m may depend on the data (documents of random length).
    The union over hypotheses, λ and choices takes δ' = δ·2^{−K}/(|Λ|·choices). With m fixed
    in advance the best real λ gives the familiar Δ √((K ln 2 + ln(choices/δ))/(2m)); the
    half-octave grid costs ln |Λ| nats and at most (2^{1/4} + 2^{−1/4})/2 − 1 < 1.5 % of the
    deviation when the best λ lies inside the grid.

    Parameters
    ----------
    mean_loss : ℓ̄ = (1/m) Σ ℓ_t, on the loss's own scale.
    m : number of scored tokens.
    code_bits : K, the prefix-free code length of the hypothesis in bits.
    delta : confidence budget.
    loss_range : (a, b), the range of every ℓ_t.
    choices : number of equally weighted alternatives the report was selected from.
    """
    m = _validate.count(m, "m", positive=True)
    grid = AZUMA_LAMBDA_GRID
    # λ²/8 per token (Hoeffding's lemma) in place of Bernstein's ψ(λ)(X_t − c_t)².
    observed = (mean_loss, m, code_bits, delta, loss_range, choices)
    return _martingale_bound("azuma", *observed, grid, grid**2 * m / 8.0, lambda best: {})


def check_lambda_grid(lambda_grid) -> np.ndarray:
    """Return the λ grid as a float64 array of distinct values in (0, 1)."""
    return _grid_with_psi(lambda_grid)[0]


def _grid_with_psi(lambda_grid) -> tuple[np.ndarray, np.ndarray]:
    """The checked λ grid and ψ on it."""
    grid = np.asarray(lambda_grid, dtype=np.float64)
    if grid.ndim != 1 or grid.size == 0:
        raise InvalidInput("lambda_grid must be a non-empty sequence of numbers")
    return _checked_grid_with_psi(grid.tobytes())


@lru_cache(maxsize=16)
def _checked_grid_with_psi(grid_bytes: bytes) -> tuple[np.ndarray, np.ndarray]:
    # Cached because a report computes many bounds on one grid; arrays built from bytes are
    # read-only, so the cached values cannot be changed by a caller.
    grid = np.frombuffer(grid_bytes, dtype=np.float64)
    if not np.isfinite(grid).all() or (grid <= 0.0).any() or (grid >= 1.0).any():
        raise InvalidInput("lambda_grid values must lie strictly between 0 and 1")
    if np.unique(grid).size != grid.size:
        raise InvalidInput("lambda_grid values must be distinct")
    psi = _psi(grid)
    psi.setflags(write=False)
    return grid, psi


def _psi(lam: np.ndarray) -> np.ndarray:
    """ψ(λ) = −ln(1 − λ) − λ for λ ∈ (0, 1), accurate to a few ulps.

    −log1p(−λ) − λ cancels for small λ (relative error ≈ 2ε/λ). With r = λ/(2 − λ) and
    ln(1 − λ) = −2 atanh(r), ψ(λ) = λ²/(2 − λ) + 2 Σ_{k≥1} r^{2k+1}/(2k + 1), a sum of positive
    terms; for λ ≤ 1/2, r ≤ 1/3 and the series is cut where its rest is below 2^{−56} of it.
    """
    lam = np.asarray(lam, dtype=np.float64)
    ratio = lam / (2.0 - lam)
    ratio_squared = ratio * ratio
    inner = np.zeros_like(lam)
    for k in range(_PSI_SERIES_TERMS, 0, -1):
        inner = inner * ratio_squared + 1.0 / (2 * k + 1)
    series = lam * lam / (2.0 - lam) + 2.0 * ratio * ratio_squared * inner
    return np.where(lam <= 0.5, series, -np.log1p(-lam) - lam)


def bernstein_bound(
    mean_loss: float,
    m: int,
    code_bits: float,
    delta: float = 0.05,
    *,
    square_sum: float,
    loss_range: tuple[float, float] = (0.0, 1.0),
    lambda_grid=DEFAULT_LAMBDA_GRID,
    choices: int = 1,
) -> Bound:
    """Empirical-Bernstein (variance-adaptive) bound on the mean conditional expected loss.

    On the [0, 1] scale X_t = (ℓ_t − a)/(b − a), with μ_t = E[X_t | F_{t−1}], a forecast
    c_t ∈ [0, 1] fixed by F_{t−1} (predictable; the model's own forecast of its loss), fixed
    λ ∈ (0, 1), ψ(λ) = −ln(1 − λ) − λ and V = Σ_t (X_t − c_t)²:

        (1/m) Σ μ_t ≤ X̄ + (ψ(λ) V + K ln 2 + ln |Λ| + ln(choices) + ln(1/δ)) / (λ m)

    for every λ of the grid Λ, every hypothesis and every choice at once, w.p. ≥ 1 − δ;
    the best λ of the grid is reported (term "lambda") and the result is mapped back to [a, b].

    Proof. For ξ ≥ −1 and λ ∈ [0, 1), exp(λξ − ψ(λ)ξ²) ≤ 1 + λξ (Fan, Grama & Liu 2015,
    Stoch. Proc. Appl. 125, Lemma 4.1; the empirical-Bernstein boundary of Howard, Ramdas,
    McAuliffe & Sekhon 2021, Ann. Statist. 49, "Time-uniform, nonparametric, nonasymptotic
    confidence sequences"). Take ξ_t = c_t − X_t ≥ −1. Then
    exp(λ(μ_t − X_t) − ψ(λ)(X_t − c_t)²) = e^{λ(μ_t − c_t)} exp(λξ_t − ψ(λ)ξ_t²)
    ≤ e^{λ(μ_t − c_t)} (1 + λ(c_t − X_t)), whose expectation given F_{t−1} is
    e^{−u}(1 + u) ≤ 1 with u = λ(c_t − μ_t). So M_m = Π_{t≤m} exp(λ(μ_t − X_t) − ψ(λ)(X_t − c_t)²)
    is a nonnegative supermartingale with M_0 = 1, and by Ville's inequality
    P(∃m: M_m ≥ 1/δ') ≤ δ'. Off that event λ Σ(μ_t − X_t) − ψ(λ)V < ln(1/δ'); dividing by λm
    gives the bound at δ'. The union over hypotheses, λ and choices takes
    δ' = δ·2^{−K}/(|Λ|·choices). Since the claim holds at every m, m may depend on the data.

    Parameters
    ----------
    mean_loss : ℓ̄ = (1/m) Σ ℓ_t, on the loss's own scale [a, b].
    m : number of scored tokens.
    code_bits : K, the prefix-free code length of the hypothesis in bits.
    delta : confidence budget.
    square_sum : V = Σ (X_t − c_t)² on the [0, 1] scale; 0 ≤ V ≤ m.
    loss_range : (a, b), the range of every ℓ_t.
    lambda_grid : λ values in (0, 1) fixed before the data; its size costs ln |Λ| nats.
    choices : number of equally weighted alternatives the report was selected from.
    """
    m = _validate.count(m, "m", positive=True)
    square_sum = _validate.nonnegative(square_sum, "square_sum")
    if square_sum > m:
        raise InvalidInput(
            f"square_sum is a sum of m squares in [0, 1], so at most m = {m}; got {square_sum!r}"
        )
    grid, psi = _grid_with_psi(lambda_grid)
    observed = (mean_loss, m, code_bits, delta, loss_range, choices)
    return _martingale_bound(
        "bernstein",
        *observed,
        grid,
        psi * square_sum,
        lambda best: {"square_sum": square_sum, "psi": float(psi[best])},
    )


def _martingale_bound(
    method: str,
    mean_loss: float,
    m: int,
    code_bits: float,
    delta: float,
    loss_range: tuple[float, float],
    choices: int,
    grid: np.ndarray,
    variance_nats: np.ndarray,
    extra_terms: Callable[[int], dict[str, float]],
) -> Bound:
    """X̄ + (variance_nats(λ) + K ln 2 + ln |Λ| + ln(choices/δ)) / (λ m) at the best λ of the
    grid, on the [0, 1] scale and mapped back to [a, b]: the form both token bounds share."""
    code_bits = _validate.nonnegative(code_bits, "code_bits")
    delta = _validate.delta(delta)
    choices = _validate.count(choices, "choices", positive=True)
    mean_loss, low, high = _mean_in_range(mean_loss, loss_range)
    width = high - low
    complexity_nats = code_bits * _LN2
    terms = _union_terms(code_bits, delta, choices)
    terms["lambda_grid_size"] = float(grid.size)
    terms["grid_nats"] = math.log(grid.size)
    total_nats = (
        complexity_nats + terms["grid_nats"] + terms["choice_nats"] + terms["log_inv_delta"]
    )
    unit_excess = (variance_nats + total_nats) / (grid * m)
    best = int(np.argmin(unit_excess))
    terms |= extra_terms(best)
    terms["lambda"] = float(grid[best])
    terms["range_width"] = width
    terms["deviation"] = width * float(unit_excess[best])
    return Bound(
        value=mean_loss + terms["deviation"],
        method=method,
        empirical_risk=mean_loss,
        n=m,
        delta=delta,
        complexity_nats=complexity_nats,
        terms=terms,
        delta_shares={"martingale": delta},
        loss_range=(low, high),
    )


def subsample_upper(
    sample_mean: float,
    s: int,
    delta: float,
    loss_range: tuple[float, float] = (0.0, 1.0),
) -> Subsample:
    """Upper confidence value of a population mean from s units drawn with replacement.

    The s units are drawn independently and uniformly from the n units, by draws fixed without
    looking at any loss, so each draw's loss has the mean over all n units as its expectation
    (with other fixed probabilities q, the bounded mean is the q-weighted one). By the Chernoff
    bound for the mean of s i.i.d. values in [0, 1] (Hoeffding 1963, Thm 1), w.p. ≥ 1 − δ
        mean ≤ a + (b − a) · kl⁻¹((sample_mean − a)/(b − a), ln(1/δ)/s).
    """
    s = _validate.count(s, "s", positive=True)
    delta = _validate.delta(delta)
    sample_mean, low, high = _mean_in_range(sample_mean, loss_range)
    unit = (sample_mean - low) / (high - low)
    upper = low + (high - low) * float(kl_inv(unit, -math.log(delta) / s))
    # kl⁻¹ ≤ 1; the mapping back may round one ulp past b, and b bounds the mean anyway.
    return Subsample(
        sample_mean=sample_mean,
        s=s,
        delta=delta,
        upper=min(upper, high),
        loss_range=(low, high),
    )


def with_subsample(bound: Bound, subsample: Subsample) -> Bound:
    """The joint claim of a bound computed from a subsample's upper value and the subsample.

    If the bound was evaluated at an empirical risk ≥ `subsample.upper` and every method used
    here is nondecreasing in the empirical risk, then w.p. ≥ 1 − (δ_bound + δ_subsample) the
    true risk is at most `bound.value` (union of the two failure events). The Bernstein form is
    refused: it also depends on the square sum, which a subsample does not bound.
    """
    if bound.method == "bernstein":
        raise InvalidInput(
            "the Bernstein bound also depends on square_sum, which a subsample does not bound"
        )
    if tuple(bound.loss_range) != tuple(subsample.loss_range):
        raise InvalidInput(
            f"the bound's loss range {bound.loss_range} differs from the subsample's "
            f"{subsample.loss_range}"
        )
    if bound.empirical_risk < subsample.upper:
        raise InvalidInput(
            f"the bound must start from the subsample's upper value {subsample.upper!r} or "
            f"more, but starts from {bound.empirical_risk!r}"
        )
    if "subsample" in bound.delta_shares:
        raise InvalidInput("the bound already has a δ share named 'subsample'")
    total = bound.delta + subsample.delta
    if not total < 1.0:
        raise InvalidInput(f"the δ shares add up to {total:g}, which is not below 1")
    terms = {
        **bound.terms,
        "sample_mean": subsample.sample_mean,
        "sample_size": float(subsample.s),
        "subsample_upper": subsample.upper,
    }
    shares = {**bound.delta_shares, "subsample": subsample.delta}
    return dataclasses.replace(bound, delta=total, terms=terms, delta_shares=shares)
