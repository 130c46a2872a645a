"""The one certify path: model → code word → decoded model → task losses → bounds.

The invariant (DESIGN.md): every bound is about the decoded model, and K counts every bit
of the code word that decodes to exactly those weights. The quantization configuration is
chosen after looking at the training data, so its index in the declared grid is in the
code word; the grid itself, the architecture and the prior are fixed before the data.

Every task (`bounds.tasks.Task`) and every code family (parameter codes from `quantize`,
opaque files) goes through `certify`; `reproduce` (behind `bounds verify`) decodes a word
and re-evaluates it through the same task.
"""

from __future__ import annotations

import dataclasses
import hashlib
import platform
import time
import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from bounds.formulas.ledger import Ledger
from bounds.formulas.result import Bound
from bounds.formulas.sequence import DEFAULT_ALPHA_GRID
from bounds.pipeline import distributed
from bounds.pipeline.codes import (
    CodeFamily,
    OpaqueFile,
    ParameterCodes,
    Scoring,
    network_parameters,
)
from bounds.reports.certificate import Certificate, prior_caveat
from bounds.tasks import Task, task_named


def versions() -> dict[str, str]:
    from importlib import metadata

    import numpy
    import scipy
    import zstandard

    from bounds import __version__

    return {
        "bounds": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "scipy": scipy.__version__,
        "constriction": metadata.version("constriction"),
        "zstandard": zstandard.__version__,
    }


class Stopwatch:
    """Seconds spent by stage; `time(stage, work)` runs `work()` and adds its duration."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    def time(self, stage: str, work: Callable[[], Any]) -> Any:
        start = time.perf_counter()
        result = work()
        self.seconds[stage] = self.seconds.get(stage, 0.0) + time.perf_counter() - start
        return result


def certify(
    model: torch.nn.Module,
    train_data,
    *,
    task: Task | None = None,
    code: CodeFamily | None = None,
    prior: Any = None,
    test_data=None,
    delta: float = 0.05,
    grid: Sequence[Mapping[str, Any]] | None = None,
    qat_epochs: int = 0,
    qat_lr: float = 1e-4,
    search: str | None = None,
    methods: Sequence[str] | None = None,
    device: str = "cpu",
    batch_size: int | None = None,
    architecture: Any = None,
    opaque: Any = None,
    quiet: bool = True,
) -> Certificate:
    """Certify the generalization of `model` from its description length, for any task and
    any code family.

    `task` (default: classification with `methods` and `batch_size`, see
    `bounds.tasks.classification.task.Classification`) says how a model is evaluated and
    which bounds are reported; `code` (a `bounds.pipeline.codes.CodeFamily`; default: the
    parameter codes of `quantize` over `grid`, the task's grid by default, with `prior`,
    `architecture` and `qat_epochs` fine-tuning; or, with `opaque`, that pre-quantized file)
    turns the model into a word and decodes it. The float model is evaluated on `train_data`;
    the family selects a word (each candidate evaluated; the choice among a declared grid is
    paid for by its index in the word); the model the decoder makes of the word's bytes is
    evaluated, and every (loss, method) bound is computed at confidence 1 − δ. With
    `test_data`, the decoded model's held-out losses get their own test-set bounds (separate
    claims at δ).

    The parameter codes build the decoded model from `architecture` (a
    ``module:factory[:key=value,...]`` spec or a zero-argument factory; see
    :class:`bounds.pipeline.decoder.Architecture`; default: what a built-in factory or a
    Hugging Face config declares) and the decoded tensors, never from the trained object.
    With `opaque` (a :class:`quantize.opaque.OpaqueCode`), `prior` is the declared loader's
    description (a dict with a fingerprint) and `architecture` only a label.
    """
    Ledger(delta)  # validates δ before any work
    quiet = quiet or not distributed.is_main()
    task = _task(task, methods, batch_size, device, quiet)
    if code is None:
        code = _family(task, grid, prior, architecture, opaque, qat_epochs, qat_lr, search)
    elif any(value for value in (prior, grid, architecture, opaque, qat_epochs, search)):
        raise ValueError(
            "prior, grid, architecture, opaque, qat_epochs and search belong to the code family"
        )
    data = task.prepare(train_data, code.grid_size())
    clock = Stopwatch()

    float_eval = clock.time("float_evaluation", lambda: _float_evaluation(task, model, data))

    def headline(bits: int, evaluation: Any) -> float:
        loss, method = task.headline
        return task.bounds(data, evaluation, bits, delta)[loss][method].value

    scoring = Scoring(
        lambda candidate: task.evaluate(candidate, data, "candidate"),
        headline,
        lambda bits: task.floor(data, float_eval, bits, delta),
        lambda evaluation: {"losses": task.summary(evaluation)["losses"]},
        clock.time,
        quiet,
        None if not hasattr(task, "training_loader") else lambda: task.training_loader(train_data),
        _screen(task, data, float_eval, delta),
    )
    chosen = code.select(model, scoring)
    word = chosen.code

    decoded_eval = chosen.evaluation
    if decoded_eval is None:
        decoded_eval = clock.time(
            "evaluation", lambda: task.evaluate(chosen.decoded, data, "decoded model")
        )
    bounds = clock.time("bound", lambda: task.bounds(data, decoded_eval, word.bits, delta))
    test = None
    if test_data is not None:
        test_eval = clock.time(
            "test_evaluation", lambda: task.evaluate(chosen.decoded, test_data, "test set")
        )
        test = {
            "summary": task.summary(test_eval),
            "bounds": task.held_out(test_data, test_eval, bounds, delta),
        }
    section, rows = task.describe(data, decoded_eval)
    loss, method = task.headline
    return Certificate(
        task=task.name,
        task_settings=task.settings(),
        claim=task.claim(bounds[loss][method], section, word.bits, delta)
        + chosen.note
        + prior_caveat(chosen.prior),
        data=section,
        train={"float": task.summary(float_eval), "decoded": task.summary(decoded_eval)},
        bounds=bounds,
        headline=task.headline,
        labels=dict(task.labels),
        risks=dict(task.risks),
        code_bits=word.bits,
        num_params=getattr(word, "num_params", None) or network_parameters(chosen.network),
        model_params=network_parameters(chosen.network),
        code_breakdown=dict(word.breakdown),
        code_config=dict(getattr(word, "config", None) or opaque_config(word)),
        code_sha256=hashlib.sha256(chosen.word).hexdigest(),
        grid_index=getattr(word, "grid_index", 0),
        grid=chosen.grid,
        grid_fingerprint=chosen.grid_fingerprint,
        candidates=chosen.candidates,
        prior=chosen.prior,
        architecture=chosen.architecture,
        delta=delta,
        data_rows=rows,
        test=test,
        qat=chosen.qat,
        search=chosen.search,
        timings=clock.seconds,
        versions=versions(),
        code=word,
    )


#: The float models' evaluations, by module object, with the key they were made under.
_FLOAT_EVALUATIONS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _float_evaluation(task: Task, model: Any, data: Any) -> Any:
    """The float model's evaluation, made once per module object and `task.evaluation_key`
    (its tensors bit for bit, the data, the settings): a sweep that certifies one trained
    model under several codes (students of several widths, say) scores it once. It enters
    no bound: the bounds are the decoded model's, always evaluated afresh."""
    key_of = getattr(task, "evaluation_key", None)
    if key_of is None or not isinstance(model, torch.nn.Module):
        return task.evaluate(model, data, "float model")
    key = key_of(model, data)
    made = _FLOAT_EVALUATIONS.get(model)
    if made is not None and made[0] == key:
        return made[1]
    evaluation = task.evaluate(model, data, "float model")
    _FLOAT_EVALUATIONS[model] = (key, evaluation)
    return evaluation


def _family(task, grid, prior, architecture, opaque, qat_epochs, qat_lr, search) -> CodeFamily:
    """The code family the classic arguments describe: an opaque file, or parameter codes."""
    if opaque is not None:
        if qat_epochs or search is not None:
            raise ValueError(
                "an opaque code word is certified as it is: it has no search and no fine-tuning"
            )
        return OpaqueFile(prior, code=opaque, architecture=architecture)
    return ParameterCodes(
        task.default_grid() if grid is None else grid,
        prior=prior,
        architecture=architecture,
        qat_epochs=qat_epochs,
        qat_lr=qat_lr,
        search=search or "screened",
    )


def _screen(task: Task, data: Any, float_eval: Any, delta: float):
    """The task's screen for the search (`bounds.pipeline.search.Screen`), or None."""
    if not hasattr(task, "screen"):
        return None
    from bounds.pipeline.search import SCREEN_MISS, SCREEN_SEED

    return task.screen(data, float_eval, delta, seed=SCREEN_SEED, miss=SCREEN_MISS)


def certify_lm(
    model: torch.nn.Module,
    corpus,
    *,
    context: int,
    stride: int | None = None,
    test_corpus=None,
    alphas: Sequence[float] = DEFAULT_ALPHA_GRID,
    top_k: Sequence[int] = (1,),
    subsample: int | None = None,
    seed: int = 0,
    batch_size: int = 8,
    device: str = "cpu",
    quiet: bool = True,
    **options: Any,
) -> Certificate:
    """`certify` with the language-modelling task (`bounds.tasks.language.task`): bits per
    token and top-k errors of a causal LM on a corpus; `options` go to `certify`."""
    from bounds.tasks.language.task import LanguageModelling

    task = LanguageModelling(
        context=context,
        stride=stride,
        alphas=tuple(alphas),
        top_k=tuple(top_k),
        subsample=subsample,
        seed=seed,
        batch_size=batch_size,
        device=device,
        quiet=quiet or not distributed.is_main(),
    )
    return certify(model, corpus, task=task, test_data=test_corpus, quiet=quiet, **options)


def _task(
    task: Task | None,
    methods: Sequence[str] | None,
    batch_size: int | None,
    device: str,
    quiet: bool,
) -> Task:
    """The task to certify with: `task`, or classification with `methods` and `batch_size`."""
    from bounds.tasks.classification.task import DEFAULT_METHODS, Classification

    if task is None:
        return Classification(
            methods=tuple(methods or DEFAULT_METHODS),
            batch_size=batch_size or 1024,
            device=device,
            quiet=quiet,
        )
    given = [name for name, value in (("methods", methods), ("batch_size", batch_size)) if value]
    if given:
        raise ValueError(f"{', '.join(given)} belong to the task; set them on the task object")
    if not isinstance(task, Task):
        raise ValueError(f"{type(task).__name__} does not have the methods of bounds.tasks.Task")
    return task


def opaque_config(code: Any) -> dict[str, Any]:
    """How an opaque word was made: the file it frames, by size and sha256."""
    return {
        "kind": "opaque file",
        "file_bytes": code.raw_size,
        "file_sha256": code.raw_sha256,
        "frame": "Elias-δ(bytes + 1) · zstd frame",
    }


@dataclass(frozen=True)
class Reproduction:
    """What `reproduce` recomputed from a code word, and how it compares with a claim."""

    summary: dict[str, Any]
    code_bits: int
    code_sha256: str
    bounds: dict[str, dict[str, Bound]]
    report: list[str]
    mismatches: list[str]


def reproduce(
    word: bytes,
    model: torch.nn.Module | None,
    train_data,
    *,
    certificate: Mapping[str, Any] | None = None,
    task: Task | None = None,
    prior: Any = None,
    delta: float | None = None,
    architecture: Any = None,
    load_opaque: Callable[[bytes], torch.nn.Module] | None = None,
    code: CodeFamily | None = None,
    device: str = "cpu",
    quiet: bool = True,
) -> Reproduction:
    """Decode `word`, re-evaluate the decoded model through the task, recompute every bound.

    The decoded model is a fresh `architecture` skeleton of `model`'s kind holding the
    decoded tensors (only `model`'s kind and prior are used, never its trained tensors). With
    a `certificate` (its JSON dict) the task, its settings and δ come from it, and every
    number it states about the code word, the prior, the data, the decoded model's losses
    and the bounds must match exactly; differences are listed in `mismatches`. Without one,
    `task` (default: classification) and `delta` (default 0.05) are used. A corrupted word
    raises quantize.CodeError. An opaque word (`bounds compute --code-file`) is the framed
    file: `load_opaque(file bytes)` is its declared decoder and `prior` its description.
    """
    if certificate is not None:
        task, delta = _claimed_task(certificate, task)
    task = _runtime(_task(task, None, None, device, quiet), device, quiet)
    delta = 0.05 if delta is None else delta
    opaque = certificate is not None and _is_opaque(certificate)
    if code is None:
        family: CodeFamily = (
            OpaqueFile(prior or {}, load=load_opaque)
            if opaque
            else ParameterCodes([{}], prior=prior, architecture=architecture)
        )
    else:
        family = code
    decoding = family.decode(word, model)
    code_word, decoded, prior_description = decoding.code, decoding.decoded, decoding.prior
    grid_size = 1 if certificate is None else int(certificate["grid"]["size"])
    data = task.prepare(train_data, grid_size)
    evaluation = task.evaluate(decoded, data, "decoded model")
    bounds = task.bounds(data, evaluation, code_word.bits, delta)
    summary = task.summary(evaluation)
    section, _ = task.describe(data, evaluation)
    sha256 = hashlib.sha256(word).hexdigest()
    report = [
        f"code word: {code_word.bits} bits, sha256 {sha256}",
        "decoded model: "
        + ", ".join(f"{loss} {value:.6f}" for loss, value in summary["losses"].items()),
    ]
    report += [
        f"{loss} {method} bound: {bound.value:.6f}"
        for loss, by_method in bounds.items()
        for method, bound in by_method.items()
    ]
    mismatches: list[str] = []
    if certificate is not None:
        found = {
            "code": {"sha256": sha256, "bits": code_word.bits},
            "prior": prior_description,
            "data": section,
            "train": {"decoded": summary},
            "bounds": {
                loss: {method: bound.to_dict() for method, bound in by_method.items()}
                for loss, by_method in bounds.items()
            },
        }
        if opaque:
            found["code"]["config"] = opaque_config(code_word)
        claimed, recomputed = _facts(certificate), _facts(found)
        mismatches = [
            f"{key}: certificate says {claimed.get(key)}, recomputed {value}"
            for key, value in recomputed.items()
            if claimed.get(key) != value
        ]
        mismatches += [
            f"{key}: certificate says {claimed[key]}, not recomputed"
            for key in claimed.keys() - recomputed.keys()
        ]
        report.append("certificate: " + ("MISMATCH" if mismatches else "verified"))
    return Reproduction(
        summary=summary,
        code_bits=code_word.bits,
        code_sha256=sha256,
        bounds=bounds,
        report=report,
        mismatches=mismatches,
    )


def _claimed_task(certificate: Mapping[str, Any], task: Task | None) -> tuple[Task, float]:
    """The task and δ a certificate states (a given `task` must be the one it names)."""
    try:
        name, settings = certificate["task"]["name"], dict(certificate["task"]["settings"])
        delta = float(certificate["delta"])
    except (KeyError, TypeError, ValueError) as error:
        raise ValueError(f"the certificate lacks a readable task or δ: {error!r}") from None
    if task is None:
        return task_named(name, settings), delta
    if task.name != name or task.settings() != settings:
        raise ValueError(f"the certificate is for the {name} task with settings {settings}")
    return task, delta


def _is_opaque(certificate: Mapping[str, Any]) -> bool:
    config = (certificate.get("code") or {}).get("config")
    return isinstance(config, Mapping) and config.get("kind") == "opaque file"


def _facts(section: Mapping[str, Any]) -> dict[str, Any]:
    """The numbers a certificate states that `reproduce` recomputes, by name."""
    try:
        facts = {
            "code sha256": section["code"]["sha256"],
            "code bits": section["code"]["bits"],
            "prior fingerprint": section["prior"].get("fingerprint"),
        }
        architecture = section["prior"].get("architecture")
        if architecture is not None:
            facts["architecture fingerprint"] = architecture["fingerprint"]
        config = section["code"].get("config") or {}
        if config.get("kind") == "opaque file":
            facts["opaque file sha256"] = config["file_sha256"]
        # The source names where the data was read from (a path), not what it holds.
        facts |= {f"data {k}": v for k, v in section["data"].items() if k != "source"}
        facts |= _flat("decoded", section["train"]["decoded"])
        facts |= {
            f"{loss} {method} bound": bound["value"]
            for loss, by_method in section["bounds"].items()
            for method, bound in by_method.items()
        }
    except (KeyError, TypeError, AttributeError) as error:
        raise ValueError(f"the certificate lacks a field it must state: {error!r}") from None
    return facts


def _flat(prefix: str, value: Any) -> dict[str, Any]:
    """{"prefix key.subkey": leaf} for a nested dict (every number a summary states)."""
    if not isinstance(value, Mapping):
        return {prefix: value}
    out: dict[str, Any] = {}
    for key, inner in value.items():
        out |= _flat(f"{prefix} {key}" if prefix.count(" ") == 0 else f"{prefix}.{key}", inner)
    return out


def _runtime(task: Task, device: str, quiet: bool) -> Task:
    """`task` evaluating on `device`, quiet or not (for dataclass tasks with those fields)."""
    names = {f.name for f in dataclasses.fields(task)} if dataclasses.is_dataclass(task) else set()
    changes = {k: v for k, v in (("device", device), ("quiet", quiet)) if k in names}
    return dataclasses.replace(task, **changes) if changes else task
