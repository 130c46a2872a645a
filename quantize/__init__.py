"""Weights → self-delimiting code word → the exact decoded weights.

``compress`` quantizes and entropy codes a model into a :class:`Code` whose ``bits`` is a
prefix-free code length K; ``Code.decode`` returns the weights the bound is about. ``search``
tries a declared grid of configurations, ``finetune`` runs quantization-aware training.
Priors (fixed before the data) supply reference weights θ0 and the layout.
"""

from .code import Code
from .compress import QuantConfig, compress
from .errors import CodeError
from .finetune import finetune
from .priors import InitPrior, NoPrior, ReferencePrior
from .requential import RequentialCode, RequentialPrior, Schedule
from .requential import encode as encode_requential
from .search import Candidate, SearchResult, default_grid, grid_fingerprint, product_grid, search
from .stream import compress_safetensors
from .subspace import Subspace

__all__ = [
    "Candidate",
    "Code",
    "CodeError",
    "InitPrior",
    "NoPrior",
    "QuantConfig",
    "ReferencePrior",
    "RequentialCode",
    "RequentialPrior",
    "Schedule",
    "SearchResult",
    "Subspace",
    "compress",
    "compress_safetensors",
    "default_grid",
    "encode_requential",
    "finetune",
    "grid_fingerprint",
    "product_grid",
    "search",
]
