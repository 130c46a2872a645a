"""bounds: certified generalization bounds from a model's compressed description length.

The formulas here are pure numpy/scipy and import no torch; the pipeline (`certify`,
`reproduce`, `sweep`, which need torch) is loaded on first use.
"""

from __future__ import annotations

from bounds.formulas.binomial import binom_tail_inv, log_binom_cdf
from bounds.formulas.catoni import DEFAULT_BETA_GRID
from bounds.formulas.errors import InvalidInput
from bounds.formulas.kl import kl, kl_inv
from bounds.formulas.ledger import Ledger
from bounds.formulas.occam import OCCAM_METHODS, elias_delta_bits, occam_bound
from bounds.formulas.pac_bayes import PAC_BAYES_METHODS, log_xi, pac_bayes_bound
from bounds.formulas.result import Bound
from bounds.formulas.sequence import (
    AZUMA_LAMBDA_GRID,
    DEFAULT_ALPHA_GRID,
    DEFAULT_LAMBDA_GRID,
    Subsample,
    azuma_bound,
    bernstein_bound,
    smoothed_log_loss,
    smoothed_loss_range,
    subsample_upper,
    with_subsample,
)
from bounds.formulas.test_set import test_set_bound
from bounds.reports.certificate import Certificate

__version__ = "0.1.0"

__all__ = [
    "AZUMA_LAMBDA_GRID",
    "DEFAULT_ALPHA_GRID",
    "DEFAULT_BETA_GRID",
    "DEFAULT_LAMBDA_GRID",
    "OCCAM_METHODS",
    "PAC_BAYES_METHODS",
    "Bound",
    "Certificate",
    "InvalidInput",
    "Ledger",
    "Subsample",
    "azuma_bound",
    "bernstein_bound",
    "binom_tail_inv",
    "certify",
    "certify_lm",
    "elias_delta_bits",
    "kl",
    "kl_inv",
    "log_binom_cdf",
    "log_xi",
    "occam_bound",
    "pac_bayes_bound",
    "reproduce",
    "smoothed_log_loss",
    "smoothed_loss_range",
    "subsample_upper",
    "sweep",
    "test_set_bound",
    "with_subsample",
]


def __getattr__(name: str):
    # The pipeline needs torch; load it on first use so `import bounds` stays light.
    if name in ("certify", "certify_lm", "reproduce"):
        from bounds.pipeline import certify

        return getattr(certify, name)
    if name == "sweep":
        from bounds.pipeline.sweep import sweep

        return sweep
    raise AttributeError(f"module 'bounds' has no attribute {name!r}")
