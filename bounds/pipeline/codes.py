"""Code families: how a model becomes a code word, and how the decoder turns it back.

A code family plugs into the one certify path (`bounds.pipeline.certify`) through two methods:

- ``select(model, scoring) -> Selection``: the code word to certify, the model the project's
  decoder makes of its bytes, and what every candidate scored (a family may choose among a
  declared grid; the index is then in the word, so any selection rule is honest);
- ``decode(word, model) -> Decoding``: the same decoder, for `bounds.reproduce`.

Built in: `ParameterCodes` (quantized, entropy-coded weights from `quantize`, searched over a
grid, optionally fine-tuned), `OpaqueFile` (a pre-quantized file is the word as it is) and
`RequentialCodes` (a student re-trained by the decoder from the teacher's coded selections).
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import torch

from bounds.pipeline import distributed
from bounds.pipeline.decoder import Architecture, Decoder, wrapped_network
from bounds.pipeline.search import Screen, choose_code, state_digest
from bounds.reports.progress import progress_bar


@dataclass(frozen=True)
class Scoring:
    """What a family's selection may use: `evaluate(model)` on the training data,
    `headline(bits, evaluation)` its headline bound, `floor(bits)` a value no evaluation beats,
    `describe(evaluation)` what a candidate lists, `time(stage, work)` the stopwatch,
    `training_loader()` (or None) for fine-tuning, and `screen` (or None), the task's cheap
    estimate from a subsample (`bounds.pipeline.search.Screen`)."""

    evaluate: Callable[[torch.nn.Module], Any]
    headline: Callable[[int, Any], float]
    floor: Callable[[int], float]
    describe: Callable[[Any], dict[str, Any]]
    time: Callable[[str, Callable[[], Any]], Any]
    quiet: bool
    training_loader: Callable[[], Any] | None = None
    screen: Screen | None = None


@dataclass(frozen=True)
class Selection:
    """The chosen code word and everything the certificate says about how it was made."""

    code: Any
    word: bytes
    decoded: torch.nn.Module
    candidates: list[dict[str, Any]]
    grid: list[dict[str, Any]]
    prior: dict[str, Any]
    architecture: str
    network: torch.nn.Module
    qat: dict[str, Any] = field(default_factory=dict)
    note: str = ""  # what the claim must add about the certified model
    search: dict[str, Any] = field(default_factory=dict)  # how the word was chosen
    # The decoded model's evaluation on the training data when the selection already made it
    # (on bitwise the same weights); None: certify evaluates the decoded model.
    evaluation: Any = None

    @property
    def grid_fingerprint(self) -> str:
        """sha256 of the declared grid's canonical JSON (sorted keys, in grid order)."""
        text = json.dumps(self.grid, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class Decoding:
    """What the decoder makes of a word: the code, the evaluated model, the prior named."""

    code: Any
    decoded: torch.nn.Module
    prior: dict[str, Any]


@runtime_checkable
class CodeFamily(Protocol):
    """A way to describe a model by a self-delimiting word whose length K is exact."""

    name: str

    def grid_size(self) -> int:
        """How many code words are chosen among (1 when the family makes one)."""
        ...

    def select(self, model: torch.nn.Module, scoring: Scoring) -> Selection: ...

    def decode(self, word: bytes, model: torch.nn.Module | None) -> Decoding: ...


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


def decoded_model(decoder: Decoder, code: Any, prior: Any) -> tuple[torch.nn.Module, bytes, str]:
    """What the project's decoder makes of the code word's bytes, those bytes, and the
    digest of the decoded weights."""
    from quantize import Code

    word = code.to_bytes()
    state = Code.from_bytes(word, prior).decode(prior)
    return decoder(state), word, state_digest(state)


class ParameterCodes:
    """Quantized, entropy-coded weights (`quantize`): every configuration of `grid` is
    compressed and the one with the best headline bound among those evaluated on the whole
    training set is kept, by the `search` rule (`bounds.pipeline.search`: "screened" ranks
    them on a subsample first, "exhaustive" evaluates all that can still win); with
    `qat_epochs` the chosen configuration is fine-tuned. The decoded model is a fresh
    skeleton of `architecture` holding the decoded tensors (`bounds.pipeline.decoder`)."""

    name = "parameters"

    def __init__(
        self,
        grid: Sequence[Mapping[str, Any]],
        *,
        prior: Any = None,
        architecture: Any = None,
        qat_epochs: int = 0,
        qat_lr: float = 1e-4,
        search: str = "screened",
    ) -> None:
        from bounds.pipeline.search import RULES
        from quantize.search import full_configs

        self.grid = full_configs(grid)
        if not self.grid:
            raise ValueError("the search grid is empty: give at least one configuration")
        if search not in RULES:
            raise ValueError(f"unknown search rule {search!r}; use one of {RULES}")
        self.prior, self.architecture = prior, architecture
        self.qat_epochs, self.qat_lr, self.search = qat_epochs, qat_lr, search

    def grid_size(self) -> int:
        return len(self.grid)

    def select(self, model: torch.nn.Module, scoring: Scoring) -> Selection:
        from quantize import Code, finetune
        from quantize.compress import coded_state

        decoder = Decoder(model, self.architecture)
        _, prior = coded_state(model, self.prior)
        choice = scoring.time(
            "search",
            lambda: choose_code(model, decoder, prior, self.grid, scoring, rule=self.search),
        )
        code, qat = choice.code, {"epochs": self.qat_epochs}
        if self.qat_epochs > 0:
            if scoring.training_loader is None:
                raise ValueError("quantization-aware fine-tuning is not available for this task")
            qat["lr"] = self.qat_lr
            tuned, loader = copy.deepcopy(model), scoring.training_loader()
            with progress_bar(
                "quantization-aware fine-tuning", self.qat_epochs, scoring.quiet
            ) as steps:
                code = scoring.time(
                    "qat",
                    lambda: finetune(
                        tuned,
                        code,
                        loader,
                        self.qat_epochs,
                        self.qat_lr,
                        prior=prior,
                        progress=lambda epoch, loss: steps.advance(),
                    ),
                )
            if distributed.active():
                # Every rank fine-tunes alike on CPU, but GPU kernels need not be bitwise
                # deterministic: all ranks take rank 0's word.
                word = distributed.broadcast_object(code.to_bytes())
                code = Code.from_bytes(word, prior).with_config(code.config)
        # The bound is about what the project's decoder makes of the bytes, so evaluate that
        # (the search's evaluation serves when it was made on bitwise the same weights).
        decoded, word, digest = decoded_model(decoder, code, prior)
        return Selection(
            code,
            word,
            decoded,
            choice.candidates,
            self.grid,
            describe_prior(prior, decoder.architecture),
            decoder.architecture.spec,
            decoder.skeleton,
            qat,
            search=choice.search,
            evaluation=choice.evaluation if digest == choice.digest else None,
        )

    def decode(self, word: bytes, model: torch.nn.Module | None) -> Decoding:
        from quantize import Code
        from quantize.compress import coded_state

        decoder = Decoder(model, self.architecture)
        _, prior = coded_state(model, self.prior)
        code = Code.from_bytes(word, prior)
        return Decoding(
            code, decoder(code.decode(prior)), describe_prior(prior, decoder.architecture)
        )


class OpaqueFile:
    """A pre-quantized file taken as the code word as it is (`quantize.opaque.OpaqueCode`):
    K = Elias-δ(bytes + 1) + 8·bytes of its zstd frame; the declared loader is the decoder,
    and `prior` its description (a dict with a fingerprint). `load(file bytes)` decodes."""

    name = "opaque"

    def __init__(
        self,
        prior: Mapping[str, Any],
        *,
        code: Any = None,
        load: Callable[[bytes], torch.nn.Module] | None = None,
        architecture: str | None = None,
    ) -> None:
        self.code, self.prior, self.load, self.architecture = code, dict(prior), load, architecture

    def grid_size(self) -> int:
        return 1

    def select(self, model: torch.nn.Module, scoring: Scoring) -> Selection:
        if self.code is None:
            raise ValueError("an opaque code family certifies the word it was given; give it")
        label = self.architecture or type(model).__qualname__
        word = self.code.to_bytes()
        return Selection(self.code, word, model, [], [], self.prior, label, model)

    def decode(self, word: bytes, model: torch.nn.Module | None) -> Decoding:
        from quantize.opaque import OpaqueCode

        if self.load is None:
            raise ValueError("the certificate is for an opaque code word: give its loader")
        code = OpaqueCode.from_bytes(word)
        return Decoding(code, self.load(code.contents()), self.prior)


class RequentialCodes:
    """Requential (or prequential) codes (`quantize.requential`; Qiu et al., arXiv 2607.11883,
    2026; Blier & Ollivier 2018): the given model is the *teacher*; the word records the
    teacher's selections among samples of a *student*'s own distribution (on an input pool
    fixed before the data, `quantize.requential.RequentialPrior`, or on the sequences a
    language-model student generates, `quantize.requential_lm.SequencePrior`), and the decoder
    re-trains the student from them. The certified
    model is that decoded student, whose description length does not grow with its size.
    Every label count N of the prior's declared grid is encoded and its student evaluated;
    the word with the best headline bound is kept (its grid index is in the word)."""

    name = "requential"

    def __init__(self, prior: Any, *, pool_spec: str | None = None) -> None:
        self.prior, self.pool_spec = prior, pool_spec

    def grid_size(self) -> int:
        return len(self.prior.schedule.label_counts)

    def describe(self) -> dict[str, Any]:
        description = dict(self.prior.describe())
        if self.pool_spec is not None:
            description["pool_spec"] = self.pool_spec
        return description

    def select(self, model: torch.nn.Module, scoring: Scoring) -> Selection:
        from quantize.requential import RequentialCode, encode

        counts, unit = self.prior.schedule.label_counts, self.prior.units[0]
        # With one count there is nothing to choose: only the decoded student is evaluated.
        choosing = len(counts) > 1
        candidates, best = [], None
        with progress_bar("requential encoding", len(counts), scoring.quiet) as steps:
            for index, labels in enumerate(counts):
                code = scoring.time("encode", lambda i=index: encode(model, self.prior, i))
                candidate = {"index": index, "config": {unit: labels}, "bits": code.bits}
                bound = None
                if choosing:
                    evaluation = scoring.evaluate(code.student)
                    bound = scoring.headline(code.bits, evaluation)
                    candidate.update(evaluated=True, **scoring.describe(evaluation), bound=bound)
                candidates.append(candidate)
                if best is None or (bound, code.bits) < best[0]:
                    best = ((bound, code.bits), code)
                steps.advance()
        word = best[1].to_bytes()
        # The bound is about what the decoder makes of the bytes: decode (re-train) them.
        decoded = scoring.time("decode", lambda: RequentialCode.from_bytes(word, self.prior))
        student = decoded.student
        evaluation = None
        if not choosing:
            evaluation = scoring.time("evaluation", lambda: scoring.evaluate(student))
            bound = scoring.headline(decoded.bits, evaluation)
            candidates[0].update(evaluated=True, **scoring.describe(evaluation), bound=bound)
        return Selection(
            decoded,
            word,
            student,
            candidates,
            [{unit: labels} for labels in counts],
            self.describe(),
            self.prior.student_spec,
            student,
            note=(
                " The certified model is the student the decoder re-trains from the word"
                " (its 'float' row is the teacher's)."
            ),
            evaluation=evaluation,
        )

    def decode(self, word: bytes, model: torch.nn.Module | None) -> Decoding:
        from quantize.requential import RequentialCode

        code = RequentialCode.from_bytes(word, self.prior)
        return Decoding(code, code.student, self.describe())
