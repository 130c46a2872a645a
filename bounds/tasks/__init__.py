"""Tasks: what is evaluated, which losses, and which bounds a certificate reports.

A task plugs into the one certify path (`bounds.pipeline.certify`) through the small
`Task` protocol below; the pipeline never looks inside an evaluation. Two are built in:
`Classification` (labelled examples, 0-1 error, Occam bounds) and `LanguageModelling`
(documents of tokens, bits per token and top-k errors, token- and document-level bounds).
A third needs only the protocol's methods; `tests/test_task_plugin.py` adds one.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol, runtime_checkable

from bounds.formulas.result import Bound


@runtime_checkable
class Task(Protocol):
    """A kind of learning problem, as the certify path sees it.

    `name` identifies the task in certificates; `settings()` is the JSON-able dict it was
    built from (``type(task)(**task.settings())`` rebuilds it, which is how `reproduce`
    evaluates again); `headline` is the (loss, method) of the claim, fixed in advance.
    Evaluations are opaque to the pipeline; in a process group `evaluate` must return the
    same result on every rank as one process would.

    Three methods are optional. ``training_loader(data)``: the loader quantization-aware
    fine-tuning trains on. ``screen(data, evaluation, delta, *, seed, miss)``: a
    `bounds.pipeline.search.Screen` that estimates a candidate's headline bound from a
    seeded subsample of the training data, so that the search evaluates only the most
    promising candidates on all of it (None, or no such method: every candidate that can
    still win is evaluated in full). ``evaluation_key(model, data)``: a string naming all
    that `evaluate` depends on besides the module object itself (its tensors, the data, the
    settings), so that certifying one trained module again, under another code, reuses its
    evaluation (no such method: it is evaluated every time).
    """

    name: str
    headline: tuple[str, str]

    def settings(self) -> dict[str, Any]:
        """The keyword arguments that rebuild this task (JSON-able)."""
        ...

    def default_grid(self) -> list[dict[str, Any]]:
        """The quantization grid used when the caller declares none."""
        ...

    def prepare(self, data: Any, candidates: int) -> Any:
        """The data as it is evaluated (checked; e.g. a seeded subsample); `candidates` is the
        number of code words chosen among on it (a subsample's claim must cover them all)."""
        ...

    def evaluate(self, model: Any, data: Any, description: str) -> Any:
        """Losses of `model` on prepared `data`."""
        ...

    def bounds(
        self, data: Any, evaluation: Any, code_bits: int, delta: float
    ) -> dict[str, dict[str, Bound]]:
        """Every (loss, method) bound for the model evaluated on prepared `data`, coded in
        `code_bits` bits."""
        ...

    def floor(self, data: Any, evaluation: Any, code_bits: int, delta: float) -> float:
        """A value no headline bound with `code_bits` bits on prepared `data` can go below
        (`evaluation` is any evaluation on them); the search skips candidates at or above."""
        ...

    def summary(self, evaluation: Any) -> dict[str, Any]:
        """JSON-able summary; its ``losses`` maps each loss to its empirical mean."""
        ...

    def held_out(
        self, data: Any, evaluation: Any, bounds: Mapping[str, Mapping[str, Bound]], delta: float
    ) -> dict[str, Bound]:
        """A bound per loss on the held-out `data` (as given, not prepared), each its own
        claim at δ; `bounds` are the training bounds (e.g. to fix a smoothing chosen there)."""
        ...

    def describe(self, data: Any, evaluation: Any) -> tuple[dict[str, Any], list[tuple[str, str]]]:
        """What was evaluated: a JSON-able section, and (quantity, value) rows for people."""
        ...

    def claim(self, bound: Bound, data: Mapping[str, Any], code_bits: int, delta: float) -> str:
        """The sentence the headline bound supports."""
        ...

    labels: Mapping[str, str]
    risks: Mapping[str, str]


def task_named(name: str, settings: Mapping[str, Any]) -> Task:
    """A built-in task from a certificate's ``task`` section."""
    from bounds.tasks.classification.task import Classification
    from bounds.tasks.language.task import LanguageModelling

    kinds = {"classify": Classification, "lm": LanguageModelling}
    if name not in kinds:
        raise ValueError(f"unknown task {name!r} in the certificate: built in are {sorted(kinds)}")
    try:
        task = kinds[name](**settings)
    except (TypeError, ValueError) as error:
        raise ValueError(f"the certificate's {name} settings are not readable: {error}") from None
    missing = sorted(set(task.settings()) - set(settings))
    if missing:  # a default would silently stand in for what the claim was made with
        raise ValueError(f"the certificate's {name} settings lack {missing}")
    return task
