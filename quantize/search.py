"""Search over a grid of configurations declared before the data.

The grid is part of the prior: it is fixed in advance and named by :func:`grid_fingerprint`.
Candidate i is compressed with ``grid_index=i, grid_size=len(grid)``, so its code word carries the
⌈log₂ |grid|⌉-bit index of its configuration, and picking the best candidate after evaluating
all of them on the training data keeps every code length honest.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from .code import Code
from .compress import QuantConfig, coded_state, encode_state

CONFIG_KEYS = ("levels", "scheme", "coder", "groups", "precision")


@dataclass(frozen=True)
class Candidate:
    """One configuration of the grid, its code word and what ``evaluate`` said of it."""

    index: int
    config: dict[str, Any]
    code: Code
    risk: Any

    @property
    def bits(self) -> int:
        return self.code.bits


@dataclass(frozen=True)
class SearchResult:
    """Every candidate of the grid, in grid order."""

    grid: tuple[dict[str, Any], ...]
    candidates: tuple[Candidate, ...]

    @property
    def fingerprint(self) -> str:
        return grid_fingerprint(self.grid)

    def best(self, key: Callable[[Candidate], Any] | None = None) -> Candidate:
        """The evaluated candidate minimising ``key`` (default: risk, then bits; risk must be
        a number). Skipped candidates (risk None) never win."""
        evaluated = [candidate for candidate in self.candidates if candidate.risk is not None]
        if not evaluated:
            raise ValueError("every candidate was skipped; nothing to choose from")
        if key is None:
            for candidate in evaluated:
                if not isinstance(candidate.risk, (int, float)) or math.isnan(candidate.risk):
                    raise ValueError(
                        "the default key needs evaluate() to return a number; pass key=..."
                    )

            def key(candidate: Candidate) -> tuple[float, int]:
                return (float(candidate.risk), candidate.bits)

        return min(evaluated, key=key)


def product_grid(
    levels: Iterable[int] = (4, 8, 16, 32),
    schemes: Iterable[str] = ("kmeans",),
    coders: Iterable[str] = ("auto",),
    groups: Iterable[str] = ("global", "tensor"),
    precisions: Iterable[str] = ("float16",),
) -> list[dict[str, Any]]:
    """Every combination levels × scheme × coder × groups × precision, in that nesting order."""
    return [
        {"levels": lv, "scheme": sc, "coder": co, "groups": gr, "precision": pr}
        for lv, sc, co, gr, pr in itertools.product(levels, schemes, coders, groups, precisions)
    ]


def default_grid() -> list[dict[str, Any]]:
    """4, 8, 16 or 32 k-means levels, one global codebook or one per tensor (8 candidates)."""
    return product_grid()


def full_configs(grid: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The grid's configurations with every field given (defaults filled in), checked."""
    return [_full_config(config).as_dict() for config in grid]


def grid_fingerprint(grid: Sequence[Mapping[str, Any]]) -> str:
    """sha256 of the grid's canonical JSON (full configurations, sorted keys, in grid order)."""
    text = json.dumps(full_configs(grid), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def search(
    weights: Any,
    evaluate: Callable[[dict[str, torch.Tensor]], Any],
    grid: Sequence[Mapping[str, Any]],
    prior: Any = None,
    *,
    progress: Callable[[Candidate], None] | None = None,
    skip: Callable[[Code], bool] | None = None,
) -> SearchResult:
    """Compress ``weights`` with every configuration of ``grid`` and evaluate each decoded model.

    ``evaluate(decoded_state_dict)`` returns the training risk (or anything ``best(key)`` can
    rank). ``grid`` is a list of configuration dicts with keys among levels, scheme, coder,
    groups, precision (missing keys take :func:`quantize.compress` defaults).

    Candidates are evaluated from the shortest code word up; ``skip(code)``, asked just before
    each evaluation, may spare one that cannot win (for example, whose bound with zero
    errors is already no better than the best so far). A skipped candidate has risk None.
    Candidates are returned in grid order.
    """
    grid = tuple(dict(config) for config in grid)
    if not grid:
        raise ValueError("the grid is empty")
    configs = [_full_config(config) for config in grid]
    state, prior = coded_state(weights, prior)
    codes = [
        encode_state(state, prior, config, grid_index=index, grid_size=len(grid))
        for index, config in enumerate(configs)
    ]
    candidates: list[Candidate | None] = [None] * len(grid)
    for index in sorted(range(len(grid)), key=lambda i: (codes[i].bits, i)):
        code = codes[index]
        risk = None if skip is not None and skip(code) else evaluate(code.decode())
        candidates[index] = Candidate(index, configs[index].as_dict(), code, risk)
        if progress is not None:
            progress(candidates[index])
    return SearchResult(grid, tuple(candidates))


def _full_config(config: Mapping[str, Any]) -> QuantConfig:
    unknown = set(config) - set(CONFIG_KEYS)
    if unknown:
        raise ValueError(f"unknown grid keys {sorted(unknown)}; allowed: {CONFIG_KEYS}")
    return QuantConfig(**config)
