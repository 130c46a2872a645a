"""The pipeline: trained model → code word → decoded model → training errors → bounds.

The invariant (DESIGN.md): every bound is about the decoded model, and K counts every bit
of the code word that decodes to exactly those weights. The quantization configuration is
chosen after looking at the training data, so its index in the declared grid is in the
code word; the grid itself, the architecture and the prior are fixed before the data.
"""

from __future__ import annotations

import copy
import hashlib
import platform
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import DataLoader

from . import distributed
from .architecture import Architecture, Decoder, wrapped_network
from .certificate import Certificate, TestResult, TrainResult
from .evaluate import Evaluation, as_loader, evaluate
from .occam import OCCAM_METHODS, occam_bound
from .progress import progress_bar
from .test_set import test_set_bound

DEFAULT_METHODS = ("binomial", "kl", "catoni")


def default_grid() -> list[dict[str, Any]]:
    """4, 8, 16 or 32 levels × k-means or uniform × one codebook or one per tensor (16)."""
    from quantize import product_grid

    return product_grid(levels=(4, 8, 16, 32), schemes=("kmeans", "uniform"))


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


def _versions() -> dict[str, str]:
    import constriction
    import numpy
    import scipy
    import zstandard

    from . import __version__

    return {
        "bounds": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "scipy": scipy.__version__,
        "constriction": getattr(constriction, "__version__", "unknown"),
        "zstandard": zstandard.__version__,
    }


def occam_bounds(n: int, code_bits: int, errors: int, delta: float, methods: Sequence[str]):
    """Every requested Occam bound for k errors out of n with a K-bit code."""
    unknown = set(methods) - set(OCCAM_METHODS)
    if unknown or not methods:
        raise ValueError(f"methods must be a non-empty subset of {OCCAM_METHODS}")
    return {m: occam_bound(n, code_bits, delta, errors=errors, method=m) for m in methods}


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
    prior: Any = None,
    test_data=None,
    delta: float = 0.05,
    grid: Sequence[Mapping[str, Any]] | None = None,
    qat_epochs: int = 0,
    qat_lr: float = 1e-4,
    methods: Sequence[str] = DEFAULT_METHODS,
    device: str = "cpu",
    batch_size: int = 1024,
    architecture: Any = None,
    opaque: Any = None,
    quiet: bool = True,
) -> Certificate:
    """Certify the generalization error of `model` from its compressed size.

    Evaluates the float model on `train_data`; compresses it with every configuration of
    `grid` (default `default_grid()`) and evaluates each decoded model; keeps the one with
    the smallest binomial Occam bound (its grid index is in the code word); optionally
    fine-tunes it with quantization-aware training for `qat_epochs`; and bounds the decoded
    model's true error with each of `methods` at confidence 1 − δ. With `test_data`, the
    decoded model's held-out error gets its own test-set bound (a separate claim at δ).

    The decoded model is built from `architecture` (a ``module:factory[:key=value,...]``
    spec or a zero-argument factory; see :class:`bounds.architecture.Architecture`; default:
    what a built-in factory or a Hugging Face config declares) and the decoded tensors, never
    from the trained object, so nothing the trained model carries outside its coded tensors
    reaches the bound.

    With `opaque` (a :class:`quantize.opaque.OpaqueCode`), the model is what a declared
    loader made of a pre-quantized file, and that file is the code word as it is: no search
    and no fine-tuning; `prior` is then the loader's description (a dict with a fingerprint)
    and `architecture` only a label.
    """
    from quantize import Code, finetune, grid_fingerprint
    from quantize.compress import coded_state

    occam_bounds(1, 0, 0, delta, methods)  # validate δ and methods before any work
    quiet = quiet or not distributed.is_main()
    if opaque is not None and qat_epochs:
        raise ValueError("an opaque code word is certified as it is; it cannot be fine-tuned")
    grid = [] if opaque is not None else list(default_grid() if grid is None else grid)
    clock = Stopwatch()

    def run(module: torch.nn.Module, data, description: str) -> Evaluation:
        return evaluate(
            module, data, device=device, batch_size=batch_size, quiet=quiet, description=description
        )

    float_eval = clock.time("float_evaluation", lambda: run(model, train_data, "float model"))
    n = float_eval.n

    def headline(bits: int, evaluation: Evaluation) -> float:
        return occam_bound(n, bits, delta, errors=evaluation.errors, method="binomial").value

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
                lambda decoded: run(decoded, train_data, "candidate"),
                headline,
                lambda bits: occam_bound(n, bits, delta, errors=0, method="binomial").value,
                lambda evaluation: {"errors": evaluation.errors},
                quiet=quiet,
            ),
        )
        code, candidates = choice.code, choice.candidates
        if qat_epochs > 0:
            qat["lr"] = qat_lr
            tuned = copy.deepcopy(model)
            # A seeded order makes `bounds compute` give the same certificate on every run.
            order = torch.Generator().manual_seed(0)
            loader = DataLoader(
                as_loader(train_data).dataset, batch_size=256, shuffle=True, generator=order
            )
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

    quantized_eval = clock.time("evaluation", lambda: run(decoded, train_data, "decoded model"))
    bounds = clock.time(
        "bound", lambda: occam_bounds(n, code.bits, quantized_eval.errors, delta, methods)
    )
    test = None
    if test_data is not None:
        test_eval = clock.time("test_evaluation", lambda: run(decoded, test_data, "test set"))
        test = TestResult(
            m=test_eval.n,
            errors=test_eval.errors,
            loss=test_eval.mean_loss,
            bound=test_set_bound(test_eval.n, test_eval.errors, delta),
        )

    return Certificate(
        train=TrainResult(
            n=n,
            float_errors=float_eval.errors,
            quantized_errors=quantized_eval.errors,
            float_loss=float_eval.mean_loss,
            quantized_loss=quantized_eval.mean_loss,
        ),
        bounds=bounds,
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
        test=test,
        qat=qat,
        timings=clock.seconds,
        versions=_versions(),
        code=code,
    )


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

    n: int
    errors: int
    code_bits: int
    code_sha256: str
    bounds: dict[str, Any]
    report: list[str]
    mismatches: list[str]


def reproduce(
    word: bytes,
    model: torch.nn.Module,
    train_data,
    *,
    prior: Any = None,
    certificate: Mapping[str, Any] | None = None,
    delta: float | None = None,
    methods: Sequence[str] | None = None,
    device: str = "cpu",
    batch_size: int = 1024,
    architecture: Any = None,
    quiet: bool = True,
) -> Reproduction:
    """Decode `word` into a fresh `architecture` skeleton of `model`'s kind, re-evaluate, and
    recompute every bound (only `model`'s kind and prior are used, never its trained tensors).

    With a `certificate` (its JSON dict) δ and the methods come from it, and every number
    it states about the code word, the training errors and the bounds must match exactly;
    differences are listed in `mismatches`. A corrupted word raises quantize.CodeError.
    """
    from quantize import Code
    from quantize.compress import coded_state

    decoder = Decoder(model, architecture)
    _, prior = coded_state(model, prior)
    code = Code.from_bytes(word, prior)
    decoded = decoder(code.decode(prior))
    evaluation = evaluate(
        decoded,
        train_data,
        device=device,
        batch_size=batch_size,
        quiet=quiet,
        description="decoded model",
    )
    if certificate is not None:
        delta = certificate["delta"]
        methods = [bound["method"] for bound in certificate["bounds"]]
    bounds = occam_bounds(
        evaluation.n,
        code.bits,
        evaluation.errors,
        0.05 if delta is None else delta,
        methods or DEFAULT_METHODS,
    )
    sha256 = hashlib.sha256(word).hexdigest()
    report = [
        f"code word: {code.bits} bits, sha256 {sha256}",
        f"decoded model: {evaluation.errors} errors on {evaluation.n} training examples",
    ]
    report += [f"{name} bound: {bound.value:.6f}" for name, bound in bounds.items()]
    mismatches: list[str] = []
    if certificate is not None:
        claimed = {
            "code sha256": certificate["code"]["sha256"],
            "code bits": certificate["code"]["bits"],
            "training examples": certificate["train"]["n"],
            "training errors": certificate["train"]["quantized_errors"],
        }
        claimed |= {f"{b['method']} bound": b["value"] for b in certificate["bounds"]}
        found = {
            "code sha256": sha256,
            "code bits": code.bits,
            "training examples": evaluation.n,
            "training errors": evaluation.errors,
        }
        stated = (certificate.get("prior") or {}).get("architecture")
        if isinstance(stated, Mapping):
            claimed["architecture fingerprint"] = stated.get("fingerprint")
            found["architecture fingerprint"] = decoder.architecture.fingerprint
        found |= {f"{name} bound": bound.value for name, bound in bounds.items()}
        mismatches = [
            f"{key}: certificate says {claimed[key]}, recomputed {found[key]}"
            for key in claimed
            if claimed[key] != found[key]
        ]
        report.append("certificate: " + ("MISMATCH" if mismatches else "verified"))
    return Reproduction(
        n=evaluation.n,
        errors=evaluation.errors,
        code_bits=code.bits,
        code_sha256=sha256,
        bounds=bounds,
        report=report,
        mismatches=mismatches,
    )
