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
from .test_set import test_set_bound

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_BETA_GRID",
    "OCCAM_METHODS",
    "PAC_BAYES_METHODS",
    "Bound",
    "Certificate",
    "InvalidInput",
    "Ledger",
    "binom_tail_inv",
    "certify",
    "elias_delta_bits",
    "kl",
    "kl_inv",
    "log_binom_cdf",
    "log_xi",
    "occam_bound",
    "pac_bayes_bound",
    "reproduce",
    "sweep",
    "test_set_bound",
]


def __getattr__(name: str):
    # The pipeline needs torch; load it on first use so `import bounds` stays light.
    if name in ("certify", "reproduce"):
        from . import pipeline

        return getattr(pipeline, name)
    if name == "sweep":
        from .model_sweep import sweep

        return sweep
    raise AttributeError(f"module 'bounds' has no attribute {name!r}")
