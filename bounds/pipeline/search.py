"""Choosing a code word from a declared grid, at the cost of a few full evaluations.

The choice is paid for by the grid index in the word (⌈log₂ G⌉ bits), so any selection rule
leaves every bound valid; the rule decides only how tight the certified bound is and how long
the search takes. Two rules, fixed before the data is seen:

- **exhaustive**: every candidate, shortest word first, is evaluated on the whole training
  set unless its floor (its bound with no loss at all) is no better than the best so far.
- **screened** (the default where the task offers a screen): every candidate is evaluated on
  a seeded subsample of the training set; they are ranked by the estimated bound (exact K,
  subsample risk) and the most promising are evaluated on the whole set, at most
  `MAX_FULL_EVALUATIONS`, until every unevaluated candidate is ruled out: its floor or its
  *optimistic* bound (exact K, a lower confidence limit of its risk) is no better than the
  best exact bound less `TOLERANCE` (10⁻⁴, the reports' precision). If the limit stops the
  search first, the choice was made on the estimate, and the report says so.

Different configurations can decode to the same weights (one tensor coded "global" or "per
tensor"); such candidates share one evaluation.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from bounds.reports.progress import progress_bar

#: Search rules, in the order `certify(search=...)` accepts them.
RULES = ("screened", "exhaustive")
#: Full-set evaluations of candidates the screened rule makes at most.
MAX_FULL_EVALUATIONS = 2
#: A candidate that could improve on the best exact bound by no more than this (the reports'
#: precision) is not worth a full evaluation.
TOLERANCE = 1e-4
#: The screen: the seed of the subsample that ranks the candidates (each task chooses its
#: size), and the miss probability of the lower confidence limit that rules candidates out.
SCREEN_SEED = 0
SCREEN_MISS = 1e-3


@dataclass(frozen=True)
class Screen:
    """A cheap estimate of a candidate's headline bound, from a subsample of the training set.

    `evaluate(model)` scores a model on the subsample; `estimate(bits, evaluation)` is the
    headline bound with the subsample's risk in place of the full set's; `optimistic(bits,
    evaluation, best)` is the headline bound at a lower confidence limit of the full set's
    risk (miss probability `miss`), a value the full evaluation falls below only rarely;
    `best` is None or (subsample evaluation, full evaluation) of the best candidate evaluated
    in full so far, against which the limit may be paired. `describe(evaluation)` is what the
    certificate lists. `size` drawn items (`unit`: "training examples", "documents") with `seed`.
    """

    evaluate: Callable[[torch.nn.Module], Any]
    estimate: Callable[[int, Any], float]
    optimistic: Callable[[int, Any, tuple[Any, Any] | None], float]
    describe: Callable[[Any], dict[str, Any]]
    size: int
    seed: int
    miss: float
    unit: str = "training examples"


@dataclass(frozen=True)
class Choice:
    """The code word chosen from the grid, what every candidate scored, how it was chosen,
    and the full-set evaluation of the chosen candidate (keyed by its weights' digest)."""

    code: Any
    candidates: list[dict[str, Any]]
    search: dict[str, Any]
    evaluation: Any
    digest: str


def state_digest(state: Mapping[str, torch.Tensor]) -> str:
    """sha256 of tensor names, dtypes, shapes and bytes: equal digests mean equal weights."""
    digest = hashlib.sha256()
    for name, tensor in state.items():
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(
            tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
        )
    return digest.hexdigest()


class _Evaluations:
    """Evaluations by weights' digest, so that equal decoded weights are evaluated once."""

    def __init__(self, decoder: Callable[[Any], torch.nn.Module], score: Callable) -> None:
        self.decoder, self.score, self.done = decoder, score, {}

    def __call__(self, state: Mapping[str, torch.Tensor]) -> Any:
        digest = state_digest(state)
        if digest not in self.done:
            self.done[digest] = self.score(self.decoder(state))
        return self.done[digest]


def choose_code(
    model: torch.nn.Module,
    decoder: Callable[[Any], torch.nn.Module],
    prior: Any,
    grid: Sequence[Mapping[str, Any]],
    scoring: Any,
    *,
    rule: str = "screened",
) -> Choice:
    """Compress `model` with every configuration of `grid` and keep the smallest headline
    bound among the candidates evaluated on the whole training set, by `rule` (see the module
    docstring). `scoring` is the certify path's `Scoring`: `evaluate`, `headline(bits,
    evaluation)`, `floor(bits)`, `describe(evaluation)`, `screen` (or None) and `quiet`."""
    if rule not in RULES:
        raise ValueError(f"unknown search rule {rule!r}; use one of {RULES}")
    full = _Evaluations(decoder, scoring.evaluate)
    if rule == "screened" and scoring.screen is not None and len(grid) > MAX_FULL_EVALUATIONS:
        return _screened(model, full, prior, grid, scoring)
    return _exhaustive(model, full, prior, grid, scoring)


def _exhaustive(model, full: _Evaluations, prior, grid, scoring) -> Choice:
    from quantize import search

    best_so_far = [float("inf")]

    def record(candidate) -> None:
        if candidate.risk is not None:
            best_so_far[0] = min(best_so_far[0], scoring.headline(candidate.bits, candidate.risk))
        steps.advance()

    with progress_bar("quantization search", len(grid), scoring.quiet) as steps:
        result = search(
            model,
            full,
            grid,
            prior,
            progress=record,
            skip=lambda code: scoring.floor(code.bits) >= best_so_far[0],
        )
    exact = {c.index: c.risk for c in result.candidates if c.risk is not None}
    search_report = {"rule": "exhaustive", "full_evaluations": len(full.done), "settled": True}
    return _chosen(result.candidates, exact, {}, full, scoring, search_report)


def _screened(model, full: _Evaluations, prior, grid, scoring) -> Choice:
    from quantize import search

    screen = scoring.screen
    sampled = _Evaluations(full.decoder, screen.evaluate)
    with progress_bar("screening candidates", len(grid), scoring.quiet) as steps:
        result = search(model, sampled, grid, prior, progress=lambda _: steps.advance())
    candidates = result.candidates
    estimated = {c.index: screen.estimate(c.bits, c.risk) for c in candidates}
    exact: dict[int, Any] = {}
    best: int | None = None  # the index of the best exact bound so far

    def bound(index: int) -> float:
        return scoring.headline(candidates[index].bits, exact[index])

    def optimistic(index: int) -> float:
        reference = None if best is None else (candidates[best].risk, exact[best])
        return screen.optimistic(candidates[index].bits, candidates[index].risk, reference)

    def ruled_out(index: int) -> bool:
        """Certainly no better than the best (its floor), or unless its subsample misled by
        more than the confidence limit (its optimistic bound), by more than TOLERANCE."""
        best_bound = bound(best) - TOLERANCE
        floor = scoring.floor(candidates[index].bits)
        return floor >= best_bound or optimistic(index) >= best_bound

    with progress_bar("full evaluation of the best", MAX_FULL_EVALUATIONS, scoring.quiet) as steps:
        for c in sorted(candidates, key=lambda c: (estimated[c.index], c.bits, c.index)):
            if len(full.done) >= MAX_FULL_EVALUATIONS:
                break
            if best is not None and ruled_out(c.index):
                continue
            exact[c.index] = full(c.code.decode())
            if best is None or bound(c.index) < bound(best):
                best = c.index
            steps.advance()
    optimistic_bounds = {c.index: optimistic(c.index) for c in candidates}
    open_candidates = [
        c.index for c in candidates if c.index not in exact and not ruled_out(c.index)
    ]
    search_report = {
        "rule": "screened",
        "sample": screen.size,
        "sample_unit": screen.unit,
        "seed": screen.seed,
        "miss": screen.miss,
        "full_evaluations": len(full.done),
        "settled": not open_candidates,
        "not_excluded": open_candidates,
    }
    screened = {
        c.index: {
            **screen.describe(c.risk),
            "estimated_bound": estimated[c.index],
            "optimistic_bound": optimistic_bounds[c.index],
            "floor": scoring.floor(c.bits),
        }
        for c in candidates
    }
    return _chosen(candidates, exact, screened, full, scoring, search_report)


def _chosen(candidates, exact, screened, full: _Evaluations, scoring, search_report) -> Choice:
    """The candidate with the smallest exact headline bound (then the shortest word)."""

    def bound(index: int) -> float | None:
        if index not in exact:
            return None
        return scoring.headline(candidates[index].bits, exact[index])

    rows = [
        {
            "index": c.index,
            "config": c.config,
            "bits": c.bits,
            "evaluated": c.index in exact,
            **({} if c.index not in exact else scoring.describe(exact[c.index])),
            "bound": bound(c.index),
            **({"screen": screened[c.index]} if c.index in screened else {}),
        }
        for c in candidates
    ]
    if not exact:
        raise ValueError("every candidate was skipped; nothing to choose from")
    index = min(exact, key=lambda i: (bound(i), candidates[i].bits, i))
    state = candidates[index].code.decode()
    return Choice(candidates[index].code, rows, search_report, exact[index], state_digest(state))
