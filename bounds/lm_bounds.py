"""Every bound of a language model from per-document loss sums (numpy only).

Two risks, stated exactly (each reported bound is its own claim at δ):

- document level: documents are i.i.d.; a document's loss is the mean loss of its scored
  tokens; the bound is on the expected document loss of a new document (Occam bound with the
  loss mapped to [0, 1]: kl inversion, and the Hoeffding form for comparison; Langford 2005).
- token level: the bound is on (1/m) Σ_t E[ℓ_t | x_<t], the average over the m training tokens
  of the conditional expected loss of each token given everything before it in the stream
  (the sequential risk; Azuma and empirical-Bernstein martingale forms, bounds.sequence).

The smoothed log loss is reported for the best α of the declared grid; every α's claim is
made at δ/|A| (its `choices` term), so the minimum holds at δ. With a subsample, the sampled
estimate is first turned into an upper bound on the full-corpus empirical risk with its own δ
share (bounds.sequence.subsample_upper), and that upper value enters the bound.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .ledger import Ledger
from .occam import occam_bound
from .result import Bound
from .sequence import azuma_bound, bernstein_bound, smoothed_loss_range, subsample_upper

LM_METHODS = ("document_kl", "document_hoeffding", "token_azuma", "token_bernstein")
SUBSAMPLE_SHARE = 0.5  # of δ, when the empirical risk is estimated from a subsample


@dataclass(frozen=True)
class DocumentLosses:
    """Per-document sums of one loss over the evaluated documents, with its range.

    `sums[d]`: Σ ℓ over the scored tokens of document d; `squares[d]`: Σ (X − c)² of the
    [0, 1]-scaled loss X and the model's forecast c (bounds.sequence.bernstein_bound);
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
    evaluated once, in order (no sampling).
    """

    documents: int
    tokens: int
    uniform: np.ndarray | None = None
    weighted: np.ndarray | None = None

    @property
    def sampled(self) -> bool:
        return self.uniform is not None


def _mean(values: np.ndarray) -> float:
    return math.fsum(values.tolist()) / len(values)


def loss_bounds(
    losses: DocumentLosses,
    sampling: Sampling,
    code_bits: float,
    delta: float,
    *,
    choices: int = 1,
) -> dict[str, Bound]:
    """The four LM bounds (LM_METHODS) of one loss for a hypothesis coded in K bits."""
    ledger = Ledger(delta)
    subsample_delta = ledger.take("subsample", delta * SUBSAMPLE_SHARE) if sampling.sampled else 0
    main_delta = ledger.take_rest("bound")
    doc_means = losses.sums / losses.tokens
    unit_squares = losses.squares / losses.tokens  # per-token mean of (X − c)², in [0, 1]

    def estimate(values: np.ndarray, draws: np.ndarray | None, share: float, loss_range):
        """(empirical value for the bound, its sample mean, the subsample terms)."""
        if draws is None:
            return _mean(values), None
        sample = subsample_upper(_mean(values[draws]), len(draws), share / choices, loss_range)
        return sample.upper, sample

    def finish(bound: Bound, samples: list) -> Bound:
        if not samples:
            return bound
        terms = dict(bound.terms)
        for name, sample in samples:
            terms |= {
                f"{name}_sample_mean": sample.sample_mean,
                f"{name}_sample_upper": sample.upper,
                f"{name}_delta_per_choice": sample.delta,
            }
        terms["sample_size"] = len(sampling.uniform)
        shares = {**bound.delta_shares, "subsample": subsample_delta}
        return dataclasses.replace(
            bound, delta=math.fsum(shares.values()), delta_shares=shares, terms=terms
        )

    bounds: dict[str, Bound] = {}
    risk, sample = estimate(doc_means, sampling.uniform, subsample_delta, losses.loss_range)
    for method in ("kl", "hoeffding"):
        bound = occam_bound(
            sampling.documents,
            code_bits,
            main_delta,
            risk=risk,
            method=method,
            loss_range=losses.loss_range,
            choices=choices,
        )
        bounds[f"document_{method}"] = finish(bound, [("risk", sample)] if sample else [])

    if sampling.sampled:
        # Drawn in proportion to scored tokens, a document's mean is an unbiased draw of the
        # token-level mean; the squares need their own share as Bernstein uses them too.
        half = subsample_delta / 2
        risk, risk_sample = estimate(doc_means, sampling.weighted, half, losses.loss_range)
        square_mean, square_sample = estimate(unit_squares, sampling.weighted, half, (0.0, 1.0))
        samples = [("risk", risk_sample), ("square", square_sample)]
    else:
        risk = math.fsum(losses.sums.tolist()) / sampling.tokens
        square_mean = math.fsum(losses.squares.tolist()) / sampling.tokens
        samples = []
    bounds["token_azuma"] = finish(
        azuma_bound(
            risk,
            sampling.tokens,
            code_bits,
            main_delta,
            loss_range=losses.loss_range,
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
            square_sum=square_mean * sampling.tokens,
            loss_range=losses.loss_range,
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
