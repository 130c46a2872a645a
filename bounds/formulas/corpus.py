"""Every bound of a language model from per-document loss sums (numpy only).

Two risks, stated exactly (each reported bound is its own claim at δ):

- document level: documents are i.i.d.; a document's loss is the mean loss of its scored
  tokens; the bound is on the expected document loss of a new document (Occam bound with the
  loss mapped to [0, 1]: kl inversion, and the Hoeffding form for comparison; Langford 2005).
- token level: the bound is on (1/m) Σ_t E[ℓ_t | x_<t], the average over the m training tokens
  of the conditional expected loss of each token given everything before it in the stream
  (the sequential risk; Azuma and empirical-Bernstein martingale forms, bounds.formulas.sequence).

The smoothed log loss is reported for the best α of the declared grid; every α's claim is
made at δ/|A| (its `choices` term), so the minimum holds at δ. With a subsample, the sampled
estimate is first turned into an upper bound on the full-corpus empirical quantity with its
own δ share (bounds.formulas.sequence.subsample_upper), and that upper value enters the bound; every
formula used here is nondecreasing in the empirical risk and in the square sum, so the joint
claim holds at the sum of the shares (union bound). When the code word was chosen among G
candidates by their losses on the same draws, each subsample claim is made for all G at once
(share / G each): the draws are independent of the candidates, which the training data fix,
but the choice among them is not.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from bounds.formulas.ledger import Ledger
from bounds.formulas.occam import occam_bound
from bounds.formulas.result import Bound
from bounds.formulas.sequence import (
    azuma_bound,
    bernstein_bound,
    smoothed_loss_range,
    subsample_upper,
)

LM_METHODS = ("document_kl", "document_hoeffding", "token_azuma", "token_bernstein")
SUBSAMPLE_SHARE = 0.5  # of δ, when the empirical risk is estimated from a subsample
#: How far (relative to the range's width) a mean may fall outside its loss range by float64
#: rounding of the per-document sums before it is an error rather than rounding.
ROUNDING_SLACK = 1e-9


@dataclass(frozen=True)
class DocumentLosses:
    """Per-document sums of one loss over the evaluated documents, with its range.

    `sums[d]`: Σ ℓ over the scored tokens of document d; `squares[d]`: Σ (X − c)² of the
    [0, 1]-scaled loss X and the model's forecast c (bounds.formulas.sequence.bernstein_bound);
    `tokens[d]`: scored tokens.
    """

    sums: np.ndarray
    squares: np.ndarray
    tokens: np.ndarray
    loss_range: tuple[float, float]


@dataclass(frozen=True)
class Sampling:
    """How the evaluated documents relate to the corpus the claim is about.

    `documents` and `tokens`: the corpus's size n (documents) and m (scored tokens).
    `uniform` / `weighted`: indices into the evaluated documents of s draws with replacement,
    uniform over documents / proportional to scored tokens; None when every document was
    evaluated once, in order (no sampling). `candidates`: how many hypotheses the reported
    one was chosen among by their losses on these draws (the size of the search grid); each
    subsample claim covers all of them.
    """

    documents: int
    tokens: int
    uniform: np.ndarray | None = None
    weighted: np.ndarray | None = None
    candidates: int = 1

    def __post_init__(self) -> None:
        for name in ("documents", "tokens", "candidates"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
                raise ValueError(f"Sampling.{name} must be a positive integer, got {value!r}")
        if (self.uniform is None) != (self.weighted is None):
            raise ValueError("give both the uniform and the weighted draws, or neither")
        if self.uniform is not None and len(self.uniform) != len(self.weighted):
            raise ValueError(
                f"the uniform and weighted draws must be equally many, got "
                f"{len(self.uniform)} and {len(self.weighted)}"
            )

    @property
    def sampled(self) -> bool:
        return self.uniform is not None


def _mean(values: np.ndarray) -> float:
    return math.fsum(values.tolist()) / len(values)


def _into_range(values, loss_range: tuple[float, float], what: str):
    """Means of losses in [a, b], with float64 rounding moved back into [a, b].

    The exact mean of losses in [a, b] lies in [a, b], but a sum of L losses divided by L can
    land an ulp or so outside (all of a document's tokens at the range's end, say); the bound
    formulas refuse such a value. Moving it to the end is exact arithmetic's answer and only
    raises a bound (or lowers it to b, which bounds the mean anyway); anything further out than
    ROUNDING_SLACK of the width is bad input.
    """
    low, high = loss_range
    array = np.asarray(values, dtype=np.float64)
    slack = ROUNDING_SLACK * (high - low)
    if np.isnan(array).any() or (array < low - slack).any() or (array > high + slack).any():
        raise ValueError(f"{what} lie outside the loss range [{low:g}, {high:g}]")
    clipped = np.clip(array, low, high)
    return float(clipped) if clipped.ndim == 0 else clipped


def loss_bounds(
    losses: DocumentLosses,
    sampling: Sampling,
    code_bits: float,
    delta: float,
    *,
    choices: int = 1,
) -> dict[str, Bound]:
    """The four LM bounds (LM_METHODS) of one loss for a hypothesis coded in K bits.

    Without sampling, δ goes to the bound; with it, SUBSAMPLE_SHARE·δ pays for the sampled
    estimates: all of it for the document mean (uniform draws), and half each for the token
    mean and the token square mean (weighted draws). Every claim is made at its share divided
    by `choices` (and the subsample claims also by `sampling.candidates`).
    """
    if not sampling.sampled and int(np.sum(losses.tokens)) != sampling.tokens:
        raise ValueError(
            f"without sampling the losses must cover all {sampling.tokens} scored tokens, "
            f"but they cover {int(np.sum(losses.tokens))}"
        )
    ledger = Ledger(delta)
    subsample_delta = ledger.take("subsample", delta * SUBSAMPLE_SHARE) if sampling.sampled else 0
    main_delta = ledger.take_rest("bound")
    loss_range = losses.loss_range
    doc_means = _into_range(losses.sums / losses.tokens, loss_range, "document mean losses")
    # Per-token mean of (X − c)² per document, in [0, 1].
    unit_squares = _into_range(losses.squares / losses.tokens, (0.0, 1.0), "mean squares")
    claims = choices * sampling.candidates

    def estimate(values: np.ndarray, draws: np.ndarray, share: float, value_range):
        """(upper value of the full-corpus mean, the subsample it comes from)."""
        sample_mean = _into_range(_mean(values[draws]), value_range, "sample means")
        sample = subsample_upper(sample_mean, len(draws), share / claims, value_range)
        return sample.upper, sample

    def finish(bound: Bound, samples: list) -> Bound:
        if not samples:
            return bound
        terms = dict(bound.terms)
        for name, sample in samples:
            terms |= {
                f"{name}_sample_mean": sample.sample_mean,
                f"{name}_sample_upper": sample.upper,
                f"{name}_sample_delta": sample.delta,
            }
        terms["sample_size"] = len(sampling.uniform)
        terms["sample_candidates"] = sampling.candidates
        shares = {**bound.delta_shares, "subsample": subsample_delta}
        return dataclasses.replace(
            bound, delta=math.fsum(shares.values()), delta_shares=shares, terms=terms
        )

    bounds: dict[str, Bound] = {}
    if sampling.sampled:
        risk, sample = estimate(doc_means, sampling.uniform, subsample_delta, loss_range)
        samples = [("risk", sample)]
    else:
        risk, samples = _into_range(_mean(doc_means), loss_range, "the mean loss"), []
    for method in ("kl", "hoeffding"):
        bound = occam_bound(
            sampling.documents,
            code_bits,
            main_delta,
            risk=risk,
            method=method,
            loss_range=loss_range,
            choices=choices,
        )
        bounds[f"document_{method}"] = finish(bound, samples)

    if sampling.sampled:
        # Drawn in proportion to scored tokens, a document's mean is an unbiased draw of the
        # token-level mean; the squares need their own share as Bernstein uses them too.
        half = subsample_delta / 2
        risk, risk_sample = estimate(doc_means, sampling.weighted, half, loss_range)
        square_mean, square_sample = estimate(unit_squares, sampling.weighted, half, (0.0, 1.0))
        square_sum = square_mean * sampling.tokens
        samples = [("risk", risk_sample), ("square", square_sample)]
    else:
        risk = math.fsum(losses.sums.tolist()) / sampling.tokens
        risk = _into_range(risk, loss_range, "the mean token loss")
        square_sum = _into_range(
            math.fsum(losses.squares.tolist()), (0.0, sampling.tokens), "the square sum"
        )
        samples = []
    bounds["token_azuma"] = finish(
        azuma_bound(
            risk,
            sampling.tokens,
            code_bits,
            main_delta,
            loss_range=loss_range,
            choices=choices,
        ),
        samples[:1],
    )
    bounds["token_bernstein"] = finish(
        bernstein_bound(
            risk,
            sampling.tokens,
            code_bits,
            main_delta,
            square_sum=square_sum,
            loss_range=loss_range,
            choices=choices,
        ),
        samples,
    )
    return bounds


def smoothed_bounds(
    sums: np.ndarray,
    squares: np.ndarray,
    tokens: np.ndarray,
    alphas: Sequence[float],
    vocab_size: int,
    sampling: Sampling,
    code_bits: float,
    delta: float,
) -> dict[str, Bound]:
    """Bits-per-token bounds: for each method, the best α of the grid (union over |A|).

    `sums`, `squares`: [documents, |A|] per-document sums of the smoothed log loss (bits) and
    of the scaled squared forecast errors, one column per α.
    """
    best: dict[str, Bound] = {}
    for column, alpha in enumerate(alphas):
        losses = DocumentLosses(
            sums[:, column],
            squares[:, column],
            tokens,
            smoothed_loss_range(alpha, vocab_size),
        )
        for method, bound in loss_bounds(
            losses, sampling, code_bits, delta, choices=len(alphas)
        ).items():
            bound = dataclasses.replace(bound, terms={**bound.terms, "alpha": alpha})
            if method not in best or bound.value < best[method].value:
                best[method] = bound
    return best
