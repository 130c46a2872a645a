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

import copy
import dataclasses
import hashlib
import platform
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from bounds.formulas.ledger import Ledger
from bounds.formulas.result import Bound
from bounds.formulas.sequence import DEFAULT_ALPHA_GRID
from bounds.pipeline import distributed
from bounds.pipeline.decoder import Architecture, Decoder, wrapped_network
from bounds.reports.certificate import Certificate, prior_caveat
from bounds.reports.progress import progress_bar
from bounds.tasks import Task, task_named


def state_digest(state: Mapping[str, torch.Tensor]) -> str:
    """sha256 of tensor names, dtypes, shapes and bytes: equal digests mean equal weights."""
    digest = hashlib.sha256()
    for name, tensor in state.items():
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(
            tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
        )
    return digest.hexdigest()


def network_parameters(model: torch.nn.Module) -> int:
    """Parameters of the network that is evaluated; for a subspace model, the wrapped one."""
    return sum(parameter.numel() for parameter in wrapped_network(model).parameters())


def describe_prior(prior: Any, architecture: Architecture | None = None) -> dict[str, Any]:
    """The prior's description and fingerprint, with the architecture the decoder builds."""
    if prior is None:
        description = {"kind": "none", "fingerprint": None, "note": "θ0 = 0; layout in the code"}
    else:
        description = dict(prior.describe())
        description["fingerprint"] = prior.fingerprint()
    if architecture is not None:
        description["architecture"] = architecture.describe()
    return description


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


@dataclass(frozen=True)
class Choice:
    """The code word chosen from the grid and what every candidate scored."""

    code: Any
    candidates: list[dict[str, Any]]


def choose_code(
    model: torch.nn.Module,
    decoder: Decoder,
    prior: Any,
    grid: Sequence[Mapping[str, Any]],
    score: Callable[[torch.nn.Module], Any],
    headline: Callable[[int, Any], float],
    floor: Callable[[int], float],
    describe: Callable[[Any], dict[str, Any]],
    *,
    quiet: bool,
) -> Choice:
    """Compress with every configuration of `grid` and keep the smallest headline bound.

    `decoder(state)` builds a candidate's model; `score(decoded_model)` evaluates it;
    `headline(bits, evaluation)` is its bound; `floor(bits)` is the best bound any
    evaluation could give with that many bits; `describe(evaluation)` is what the
    certificate lists of each candidate. The
    choice is paid for by the grid index in the code word, so any rule is honest; this one is
    fixed in advance. Candidates come shortest first; one whose floor is no better than the
    best bound so far cannot win (the bound grows with the loss), so it is not evaluated.
    Different configurations can decode to the same weights (one tensor coded "global" or
    "per tensor"); such a candidate reuses the evaluation instead of repeating it.
    """
    from quantize import search

    best_so_far = [float("inf")]
    evaluated: dict[str, Any] = {}

    def evaluate_state(state: Mapping[str, torch.Tensor]) -> Any:
        digest = state_digest(state)
        if digest not in evaluated:
            evaluated[digest] = score(decoder(state))
        return evaluated[digest]

    def record(candidate) -> None:
        if candidate.risk is not None:
            best_so_far[0] = min(best_so_far[0], headline(candidate.bits, candidate.risk))
        steps.advance()

    with progress_bar("quantization search", len(grid), quiet) as steps:
        result = search(
            model,
            evaluate_state,
            grid,
            prior,
            progress=record,
            skip=lambda code: floor(code.bits) >= best_so_far[0],
        )
    candidates = [
        {
            "index": c.index,
            "config": c.config,
            "bits": c.bits,
            "evaluated": c.risk is not None,
            **({} if c.risk is None else describe(c.risk)),
            "bound": None if c.risk is None else headline(c.bits, c.risk),
        }
        for c in result.candidates
    ]
    code = result.best(key=lambda c: (headline(c.bits, c.risk), c.bits)).code
    return Choice(code, candidates)


def decoded_model(decoder: Decoder, code: Any, prior: Any) -> tuple[torch.nn.Module, bytes]:
    """What the project's decoder makes of the code word's bytes, and those bytes."""
    from quantize import Code

    word = code.to_bytes()
    return decoder(Code.from_bytes(word, prior).decode(prior)), word


def certify(
    model: torch.nn.Module,
    train_data,
    *,
    task: Task | None = None,
    prior: Any = None,
    test_data=None,
    delta: float = 0.05,
    grid: Sequence[Mapping[str, Any]] | None = None,
    qat_epochs: int = 0,
    qat_lr: float = 1e-4,
    methods: Sequence[str] | None = None,
    device: str = "cpu",
    batch_size: int | None = None,
    architecture: Any = None,
    opaque: Any = None,
    quiet: bool = True,
) -> Certificate:
    """Certify the generalization of `model` from its compressed size, for any task.

    `task` (default: classification with `methods` and `batch_size`, see
    `bounds.tasks.classification.task.Classification`) says how the model is evaluated and
    which bounds are reported. The float model is evaluated on `train_data`; it is
    compressed with every configuration of `grid` (default: the task's) and each decoded
    model is evaluated; the word with the smallest headline bound is kept (its grid index is
    in the word); optionally it is fine-tuned with quantization-aware training for
    `qat_epochs` (tasks with a `training_loader`); every (loss, method) bound of the decoded
    model is computed at confidence 1 − δ. With `test_data`, the decoded model's held-out
    losses get their own test-set bounds (separate claims at δ).

    The decoded model is built from `architecture` (a ``module:factory[:key=value,...]``
    spec or a zero-argument factory; see :class:`bounds.pipeline.decoder.Architecture`;
    default: what a built-in factory or a Hugging Face config declares) and the decoded
    tensors, never from the trained object, so nothing the trained model carries outside its
    coded tensors reaches the bound.

    With `opaque` (a :class:`quantize.opaque.OpaqueCode`), the model is what a declared
    loader made of a pre-quantized file, and that file is the code word as it is: no search
    and no fine-tuning; `prior` is then the loader's description (a dict with a fingerprint)
    and `architecture` only a label.
    """
    from quantize import Code, finetune, grid_fingerprint
    from quantize.compress import coded_state

    Ledger(delta)  # validates δ before any work
    quiet = quiet or not distributed.is_main()
    task = _task(task, methods, batch_size, device, quiet)
    if opaque is not None and qat_epochs:
        raise ValueError("an opaque code word is certified as it is; it cannot be fine-tuned")
    if qat_epochs and not hasattr(task, "training_loader"):
        raise ValueError(f"quantization-aware fine-tuning is not available for {task.name}")
    grid = [] if opaque is not None else list(task.default_grid() if grid is None else grid)
    if opaque is None and not grid:
        raise ValueError("the search grid is empty: give at least one configuration")
    data = task.prepare(train_data, len(grid))
    clock = Stopwatch()

    float_eval = clock.time("float_evaluation", lambda: task.evaluate(model, data, "float model"))

    def headline(bits: int, evaluation: Any) -> float:
        loss, method = task.headline
        return task.bounds(data, evaluation, bits, delta)[loss][method].value

    qat: dict[str, Any] = {"epochs": qat_epochs}
    if opaque is not None:
        code, candidates, word, decoded = opaque, [], opaque.to_bytes(), model
        prior_description = dict(prior)
        label, evaluated_params = architecture or type(model).__qualname__, model
    else:
        decoder = Decoder(model, architecture)
        _, prior = coded_state(model, prior)
        prior_description = describe_prior(prior, decoder.architecture)
        label, evaluated_params = decoder.architecture.spec, decoder.skeleton
        choice = clock.time(
            "search",
            lambda: choose_code(
                model,
                decoder,
                prior,
                grid,
                lambda candidate: task.evaluate(candidate, data, "candidate"),
                headline,
                lambda bits: task.floor(data, float_eval, bits, delta),
                lambda evaluation: {"losses": task.summary(evaluation)["losses"]},
                quiet=quiet,
            ),
        )
        code, candidates = choice.code, choice.candidates
        if qat_epochs > 0:
            qat["lr"] = qat_lr
            tuned = copy.deepcopy(model)
            loader = task.training_loader(train_data)
            with progress_bar("quantization-aware fine-tuning", qat_epochs, quiet) as steps:
                code = clock.time(
                    "qat",
                    lambda: finetune(
                        tuned,
                        code,
                        loader,
                        qat_epochs,
                        qat_lr,
                        prior=prior,
                        progress=lambda epoch, loss: steps.advance(),
                    ),
                )
            if distributed.active():
                # Every rank fine-tunes alike on CPU, but GPU kernels need not be bitwise
                # deterministic: all ranks take rank 0's word.
                word = distributed.broadcast_object(code.to_bytes())
                code = Code.from_bytes(word, prior).with_config(code.config)
        # The bound is about what the project's decoder makes of the bytes, so evaluate that.
        decoded, word = decoded_model(decoder, code, prior)

    decoded_eval = clock.time("evaluation", lambda: task.evaluate(decoded, data, "decoded model"))
    bounds = clock.time("bound", lambda: task.bounds(data, decoded_eval, code.bits, delta))
    test = None
    if test_data is not None:
        test_eval = clock.time(
            "test_evaluation", lambda: task.evaluate(decoded, test_data, "test set")
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
        claim=task.claim(bounds[loss][method], section, code.bits, delta)
        + prior_caveat(prior_description),
        data=section,
        train={"float": task.summary(float_eval), "decoded": task.summary(decoded_eval)},
        bounds=bounds,
        headline=task.headline,
        labels=dict(task.labels),
        risks=dict(task.risks),
        code_bits=code.bits,
        num_params=network_parameters(model) if opaque is not None else code.num_params,
        model_params=network_parameters(evaluated_params),
        code_breakdown=dict(code.breakdown),
        code_config=opaque_config(code) if opaque is not None else dict(code.config),
        code_sha256=hashlib.sha256(word).hexdigest(),
        grid_index=0 if opaque is not None else code.grid_index,
        grid=grid,
        grid_fingerprint=grid_fingerprint(grid),
        candidates=candidates,
        prior=prior_description,
        architecture=label,
        delta=delta,
        data_rows=rows,
        test=test,
        qat=qat,
        timings=clock.seconds,
        versions=versions(),
        code=code,
    )


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
    from quantize import Code
    from quantize.opaque import OpaqueCode

    if certificate is not None:
        task, delta = _claimed_task(certificate, task)
    task = _runtime(_task(task, None, None, device, quiet), device, quiet)
    delta = 0.05 if delta is None else delta
    opaque = certificate is not None and _is_opaque(certificate)
    if opaque:
        if load_opaque is None:
            raise ValueError("the certificate is for an opaque code word: give its loader")
        code = OpaqueCode.from_bytes(word)
        decoded = load_opaque(code.contents())
        prior_description = dict(prior or {})
    else:
        from quantize.compress import coded_state

        decoder = Decoder(model, architecture)
        _, prior = coded_state(model, prior)
        code = Code.from_bytes(word, prior)
        decoded = decoder(code.decode(prior))
        prior_description = describe_prior(prior, decoder.architecture)
    grid_size = 1 if certificate is None else int(certificate["grid"]["size"])
    data = task.prepare(train_data, grid_size)
    evaluation = task.evaluate(decoded, data, "decoded model")
    bounds = task.bounds(data, evaluation, code.bits, delta)
    summary = task.summary(evaluation)
    section, _ = task.describe(data, evaluation)
    sha256 = hashlib.sha256(word).hexdigest()
    report = [
        f"code word: {code.bits} bits, sha256 {sha256}",
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
            "code": {"sha256": sha256, "bits": code.bits},
            "prior": prior_description,
            "data": section,
            "train": {"decoded": summary},
            "bounds": {
                loss: {method: bound.to_dict() for method, bound in by_method.items()}
                for loss, by_method in bounds.items()
            },
        }
        if opaque:
            found["code"]["config"] = opaque_config(code)
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
        code_bits=code.bits,
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
