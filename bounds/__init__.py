"""bounds: certified generalization bounds from a model's compressed description length.

The formulas here are pure numpy/scipy and import no torch; the pipeline (`certify`,
`reproduce`, `sweep`, which need torch) is loaded on first use.
"""

from __future__ import annotations

from .binomial import binom_tail_inv, log_binom_cdf
from .catoni import DEFAULT_BETA_GRID
from .certificate import Certificate
from .errors import InvalidInput
from .kl import kl, kl_inv
from .ledger import Ledger
from .occam import OCCAM_METHODS, elias_delta_bits, occam_bound
from .pac_bayes import PAC_BAYES_METHODS, log_xi, pac_bayes_bound
from .result import Bound
from .sequence import (
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
from .test_set import test_set_bound

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
    if name in ("certify", "reproduce"):
        from . import pipeline

        return getattr(pipeline, name)
    if name == "certify_lm":
        from .lm_pipeline import certify_lm

        return certify_lm
    if name == "sweep":
        from .model_sweep import sweep

        return sweep
    raise AttributeError(f"module 'bounds' has no attribute {name!r}")
