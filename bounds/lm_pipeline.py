"""The language-model pipeline: model → code word → decoded model → token losses → bounds.

The same chain as `bounds.certify`, with a corpus of documents instead of labelled examples
and the losses of bounds.lm_bounds: the smoothed log loss (bits per token, best α of the
declared grid) and top-k errors, each bounded at the document level and at the token level.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from . import distributed
from .architecture import Decoder
from .ledger import Ledger
from .lm_bounds import DocumentLosses, Sampling, loss_bounds, smoothed_bounds
from .lm_certificate import LMCertificate, LossSummary
from .pipeline import (
    Stopwatch,
    _versions,
    choose_code,
    decoded_model,
    describe_prior,
    network_parameters,
    opaque_config,
)
from .result import Bound
from .sequence import DEFAULT_ALPHA_GRID, bernstein_bound, smoothed_loss_range

DEFAULT_TOP_K = (1,)
HEADLINE = ("bits", "token_bernstein")


def lm_default_grid() -> list[dict[str, Any]]:
    """8, 16 or 32 k-means levels, one codebook or one per tensor (6 configurations)."""
    from quantize import product_grid

    return product_grid(levels=(8, 16, 32), schemes=("kmeans",))


@dataclass(frozen=True)
class Plan:
    """What is evaluated: the documents, and how they are drawn from the corpus."""

    corpus: Any
    sampling: Sampling
    subsample: int | None
    seed: int


def plan_evaluation(corpus, subsample: int | None, seed: int, candidates: int = 1) -> Plan:
    """Every document once, or s documents drawn twice with replacement (seeded): uniformly
    for the document-level bounds and in proportion to scored tokens for the token level.
    Each distinct drawn document is evaluated once. `candidates`: how many code words will be
    chosen among by their losses on the draws (bounds.lm_bounds.Sampling)."""
    lengths = (corpus.ends - corpus.starts - 1).astype(np.int64)
    documents, tokens = len(lengths), int(lengths.sum())
    if subsample is None:
        return Plan(corpus, Sampling(documents, tokens), None, seed)
    if isinstance(subsample, bool) or not isinstance(subsample, int) or subsample < 1:
        raise ValueError(f"the subsample size must be a positive integer, got {subsample!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"the subsample seed must be a non-negative integer, got {seed!r}")
    rng = np.random.default_rng(seed)
    uniform = rng.integers(0, documents, size=subsample)
    weighted = rng.choice(documents, size=subsample, p=lengths / tokens)
    distinct = np.unique(np.concatenate([uniform, weighted]))
    sampling = Sampling(
        documents,
        tokens,
        uniform=np.searchsorted(distinct, uniform),
        weighted=np.searchsorted(distinct, weighted),
        candidates=candidates,
    )
    return Plan(corpus.subset(distinct), sampling, subsample, seed)


def all_bounds(per_document, alphas, top_k, vocab_size, sampling, code_bits, delta):
    """{loss: {method: Bound}} for the smoothed bits (α union) and each top-k error."""
    bounds = {
        "bits": smoothed_bounds(
            per_document.smoothed_bits,
            per_document.smoothed_square,
            per_document.tokens,
            alphas,
            vocab_size,
            sampling,
            code_bits,
            delta,
        )
    }
    for column, k in enumerate(top_k):
        losses = DocumentLosses(
            per_document.topk_errors[:, column].astype(np.float64),
            per_document.topk_square[:, column],
            per_document.tokens,
            (0.0, 1.0),
        )
        bounds[f"top{k}"] = loss_bounds(losses, sampling, code_bits, delta)
    return bounds


def summarize(evaluation, alphas: Sequence[float], top_k: Sequence[int]) -> LossSummary:
    """Token-weighted means over the evaluated documents."""
    per_document = evaluation.per_document()
    tokens = int(per_document.tokens.sum())
    return LossSummary(
        documents=len(per_document.tokens),
        tokens=tokens,
        bits=float(per_document.log_loss_bits.sum() / tokens),
        smoothed_bits={
            float(alpha): float(per_document.smoothed_bits[:, i].sum() / tokens)
            for i, alpha in enumerate(alphas)
        },
        top_k_error={
            int(k): float(per_document.topk_errors[:, i].sum() / tokens)
            for i, k in enumerate(top_k)
        },
    )


@dataclass(frozen=True)
class Settings:
    """How a model is scored: window context and stride, the α grid, the top-k list, and the
    batching (float32 kernels may round by batch shape, so it is part of what is reproduced)."""

    context: int
    stride: int
    alphas: tuple[float, ...]
    top_k: tuple[int, ...]
    batch_size: int
    device: str
    quiet: bool

    def evaluate(self, module: torch.nn.Module, corpus, description: str):
        """evaluate_lm with these settings; under torchrun each rank scores its share of the
        batches and the per-window sums are added up exactly (each row is filled on one rank).

        Under torchrun every rank must hold the same weights, corpus and settings (checked
        before scoring), and a failure on any rank is raised on all of them."""
        from .lm_eval import evaluate_lm

        shard = distributed.shard()
        # The cheap check first, so that misconfigured ranks stop before the long scoring
        # (computed only in a process group).
        distributed.run_checked(lambda: None, lambda _: self.agreed(module, corpus))
        evaluation = distributed.run_checked(
            lambda: evaluate_lm(
                module,
                corpus,
                context=self.context,
                stride=self.stride,
                alphas=self.alphas,
                top_k=self.top_k,
                batch_size=self.batch_size,
                device=self.device,
                quiet=self.quiet,
                shard=shard,
                description=description,
            )
        )
        if shard is None:
            return evaluation
        summed = {k: distributed.sum_disjoint(v) for k, v in evaluation.arrays().items()}
        return evaluation.with_arrays(summed)

    def agreed(self, module: torch.nn.Module, corpus) -> dict[str, Any]:
        """What all ranks must share for their per-window sums to add up to one evaluation."""
        from .evaluate import weights_digest
        from .lm_eval import corpus_digest

        # A plain callable has no tensors to compare; a module's are hashed bit for bit.
        weights = weights_digest(module) if isinstance(module, torch.nn.Module) else None
        return {
            "the model weights": weights,
            "the corpora (documents, tokens, sha256 of the ids)": (
                corpus.num_documents,
                corpus.num_tokens,
                corpus_digest(corpus),
            ),
            "the evaluation settings (context, stride, alphas, top_k, batch size)": (
                self.context,
                self.stride,
                self.alphas,
                self.top_k,
                self.batch_size,
            ),
        }


def certify_lm(
    model: torch.nn.Module,
    corpus,
    *,
    context: int,
    stride: int | None = None,
    prior: Any = None,
    test_corpus=None,
    delta: float = 0.05,
    grid: Sequence[Mapping[str, Any]] | None = None,
    alphas: Sequence[float] = DEFAULT_ALPHA_GRID,
    top_k: Sequence[int] = DEFAULT_TOP_K,
    subsample: int | None = None,
    seed: int = 0,
    batch_size: int = 8,
    device: str = "cpu",
    architecture: Any = None,
    opaque: Any = None,
    quiet: bool = True,
) -> LMCertificate:
    """Certify a causal language model's bits per token and top-k errors on `corpus`.

    `model` maps token ids [B, T] to logits [B, T, V]. Windows of `context` tokens slide by
    `stride` (default `context`) through each document; every token but a document's first
    is scored once. The code is chosen from `grid` (default `lm_default_grid()`) by the
    token-level Bernstein bound on bits per token; with `subsample` = s, s documents are drawn
    (seed `seed`) instead of evaluating the whole corpus, with half of δ for the sampling;
    the seed must be fixed before any result is seen (trying seeds and keeping the best is a
    selection no δ share pays for). With `test_corpus`, the decoded model's held-out losses
    are reported with a document-level test-set bound each. `architecture` and `opaque`: as
    in `bounds.certify` (the decoded model is built from the declared architecture).
    """
    from quantize import grid_fingerprint
    from quantize.compress import coded_state

    Ledger(delta)  # validates δ before any work
    settings = Settings(
        context=context,
        stride=context if stride is None else stride,
        alphas=tuple(float(a) for a in alphas),
        top_k=tuple(int(k) for k in top_k),
        batch_size=batch_size,
        device=device,
        quiet=quiet or not distributed.is_main(),
    )
    if not settings.alphas:
        raise ValueError("the α grid is empty: give at least one smoothing value")
    grid = [] if opaque is not None else list(lm_default_grid() if grid is None else grid)
    if opaque is None and not grid:
        raise ValueError("the search grid is empty: give at least one configuration")
    plan = plan_evaluation(corpus, subsample, seed, candidates=max(1, len(grid)))
    clock = Stopwatch()

    def run(module: torch.nn.Module, data, description: str):
        return settings.evaluate(module, data, description)

    float_eval = clock.time("float_evaluation", lambda: run(model, plan.corpus, "float model"))
    vocab_size = float_eval.vocab_size
    alphas, top_k = settings.alphas, settings.top_k

    def bounds_of(bits: int, evaluation) -> dict[str, dict[str, Bound]]:
        return all_bounds(
            evaluation.per_document(), alphas, top_k, vocab_size, plan.sampling, bits, delta
        )

    def headline(bits: int, evaluation) -> float:
        loss, method = HEADLINE
        return bounds_of(bits, evaluation)[loss][method].value

    def floor(bits: int) -> float:
        # No evaluation does better than the least loss with no forecast error on any token,
        # with all of δ for the bound (a subsample's share only raises the bound). The
        # bound is monotone in the mean and in V, so this is below every headline.
        return min(
            bernstein_bound(
                smoothed_loss_range(alpha, vocab_size)[0],
                plan.sampling.tokens,
                bits,
                delta,
                square_sum=0.0,
                loss_range=smoothed_loss_range(alpha, vocab_size),
                choices=len(alphas),
            ).value
            for alpha in alphas
        )

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
                lambda candidate: run(candidate, plan.corpus, "candidate"),
                headline,
                floor,
                lambda evaluation: {"bits_per_token": summarize(evaluation, alphas, top_k).bits},
                quiet=settings.quiet,
            ),
        )
        code, candidates = choice.code, choice.candidates
        decoded, word = decoded_model(decoder, code, prior)

    quantized_eval = clock.time("evaluation", lambda: run(decoded, plan.corpus, "decoded model"))
    bounds = clock.time("bound", lambda: bounds_of(code.bits, quantized_eval))
    test = None
    if test_corpus is not None:
        test_eval = clock.time("test_evaluation", lambda: run(decoded, test_corpus, "test set"))
        test_plan = plan_evaluation(test_corpus, None, seed)
        test_bounds = all_bounds(
            test_eval.per_document(),
            (bounds[HEADLINE[0]][HEADLINE[1]].terms["alpha"],),  # α fixed by the training data
            top_k,
            vocab_size,
            test_plan.sampling,
            0,
            delta,
        )
        test = {
            "summary": summarize(test_eval, alphas, top_k),
            "bounds": {loss: by_method["document_kl"] for loss, by_method in test_bounds.items()},
        }

    return LMCertificate(
        train_float=summarize(float_eval, alphas, top_k),
        train_quantized=summarize(quantized_eval, alphas, top_k),
        corpus={
            "source": corpus.source,
            "documents": plan.sampling.documents,
            "scored_tokens": plan.sampling.tokens,
            "context": settings.context,
            "stride": settings.stride,
            "vocab_size": vocab_size,
            "subsample": plan.subsample,
            "subsample_seed": plan.seed if plan.subsample else None,
            "batch_size": settings.batch_size,
        },
        alphas=alphas,
        top_k=top_k,
        bounds=bounds,
        test=test,
        code_bits=code.bits,
        model_params=network_parameters(evaluated_params),
        code_breakdown=dict(code.breakdown),
        code_config=opaque_config(code) if opaque is not None else dict(code.config),
        code_sha256=hashlib.sha256(word).hexdigest(),
        grid=grid,
        grid_fingerprint=grid_fingerprint(grid),
        candidates=candidates,
        prior=prior_description,
        architecture=label,
        delta=delta,
        timings=clock.seconds,
        versions=_versions(),
        code=code,
    )


@dataclass(frozen=True)
class LMReproduction:
    """What `reproduce_lm` recomputed from a code word, and how it compares with the claim."""

    summary: LossSummary
    code_bits: int
    code_sha256: str
    bounds: dict[str, dict[str, Bound]]
    report: list[str]
    mismatches: list[str]


def _claimed_settings(certificate: Mapping[str, Any]) -> dict[str, Any]:
    """The evaluation settings and δ a certificate states, checked for presence and type."""
    if not isinstance(certificate, Mapping) or certificate.get("task") != "lm":
        raise ValueError("the certificate is not a language-model certificate (task 'lm')")
    try:
        corpus = certificate["corpus"]
        settings = {
            "delta": float(certificate["delta"]),
            "context": int(corpus["context"]),
            "stride": int(corpus["stride"]),
            "alphas": tuple(float(a) for a in certificate["alphas"]),
            "top_k": tuple(int(k) for k in certificate["top_k"]),
            "subsample": None if corpus["subsample"] is None else int(corpus["subsample"]),
            "seed": int(corpus["subsample_seed"] or 0),
            "batch_size": corpus.get("batch_size"),
            "grid_size": int(certificate["grid"]["size"]),
            "opaque": certificate["code"]["config"].get("kind") == "opaque file",
        }
    except (KeyError, TypeError, ValueError, AttributeError) as error:
        raise ValueError(f"the certificate lacks a readable LM setting: {error!r}") from None
    return settings


def reproduce_lm(
    word: bytes,
    model: torch.nn.Module,
    corpus,
    *,
    certificate: Mapping[str, Any],
    prior: Any = None,
    load_opaque: Callable[[bytes], torch.nn.Module] | None = None,
    quiet: bool = True,
    device: str = "cpu",
    batch_size: int = 8,
    architecture: Any = None,
) -> LMReproduction:
    """Decode `word` into a fresh `architecture` skeleton of `model`'s kind (its trained
    tensors are never used), re-score `corpus` and recompute every bound.

    The evaluation settings come from `certificate` (its JSON dict): context, stride, α grid,
    top-k list, subsample size and seed, δ, the grid size (for the subsample's union over the
    candidates) and the batch size (`batch_size` is used only when the certificate states
    none). Every number the certificate states about the code word, the corpus, the decoded
    model's losses and the bounds must match exactly; differences are listed in `mismatches`,
    as by `bounds.pipeline.reproduce`. A corrupted word raises quantize.CodeError.

    For an opaque certificate (`bounds compute --code-file`) the word is the framed file;
    `load_opaque(file bytes)` is the declared decoder and `prior` its description (a dict).
    """
    from quantize import Code
    from quantize.compress import coded_state
    from quantize.opaque import OpaqueCode

    stated = _claimed_settings(certificate)
    if stated["opaque"]:
        if load_opaque is None:
            raise ValueError("the certificate is for an opaque code word: give its loader")
        code = OpaqueCode.from_bytes(word)
        decoded = load_opaque(code.contents())
        prior_description = dict(prior or {})
        config_found = opaque_config(code)
    else:
        decoder = Decoder(model, architecture)
        _, prior = coded_state(model, prior)
        code = Code.from_bytes(word, prior)
        decoded = decoder(code.decode(prior))
        prior_description = describe_prior(prior, decoder.architecture)
        config_found = None
    settings = Settings(
        context=stated["context"],
        stride=stated["stride"],
        alphas=stated["alphas"],
        top_k=stated["top_k"],
        batch_size=batch_size if stated["batch_size"] is None else int(stated["batch_size"]),
        device=device,
        quiet=quiet,
    )
    plan = plan_evaluation(
        corpus, stated["subsample"], stated["seed"], candidates=max(1, stated["grid_size"])
    )
    evaluation = settings.evaluate(decoded, plan.corpus, "decoded model")
    bounds = all_bounds(
        evaluation.per_document(),
        settings.alphas,
        settings.top_k,
        evaluation.vocab_size,
        plan.sampling,
        code.bits,
        stated["delta"],
    )
    summary = summarize(evaluation, settings.alphas, settings.top_k)
    sha256 = hashlib.sha256(word).hexdigest()
    report = [
        f"code word: {code.bits} bits, sha256 {sha256}",
        f"decoded model: {summary.bits:.6f} bits per token on {summary.tokens} scored tokens "
        f"of {summary.documents} documents",
    ]
    report += [
        f"{loss} {method} bound: {bound.value:.6f}"
        for loss, by_method in bounds.items()
        for method, bound in by_method.items()
    ]
    found = {
        "code sha256": sha256,
        "code bits": code.bits,
        "prior fingerprint": prior_description.get("fingerprint"),
        "documents": plan.sampling.documents,
        "scored tokens": plan.sampling.tokens,
        "evaluated tokens": summary.tokens,
        "decoded bits per token": summary.bits,
    }
    if config_found is not None:
        found["opaque file sha256"] = config_found["file_sha256"]
    if "architecture" in prior_description:
        found["architecture fingerprint"] = prior_description["architecture"]["fingerprint"]
    found |= {f"decoded top-{k} error": rate for k, rate in summary.top_k_error.items()}
    found |= {
        f"{loss} {method} bound": bound.value
        for loss, by_method in bounds.items()
        for method, bound in by_method.items()
    }
    claimed = _claimed_values(certificate)
    mismatches = [
        f"{key}: certificate says {claimed.get(key)}, recomputed {value}"
        for key, value in found.items()
        if claimed.get(key) != value
    ]
    mismatches += [
        f"{key}: certificate says {claimed[key]}, not recomputed" for key in claimed.keys() - found
    ]
    report.append("certificate: " + ("MISMATCH" if mismatches else "verified"))
    return LMReproduction(
        summary=summary,
        code_bits=code.bits,
        code_sha256=sha256,
        bounds=bounds,
        report=report,
        mismatches=mismatches,
    )


def _claimed_values(certificate: Mapping[str, Any]) -> dict[str, Any]:
    """The numbers of an LM certificate that `reproduce_lm` recomputes, by the same names."""
    try:
        quantized = certificate["train"]["quantized"]
        claimed = {
            "code sha256": certificate["code"]["sha256"],
            "code bits": certificate["code"]["bits"],
            "prior fingerprint": certificate["prior"].get("fingerprint"),
            "documents": certificate["corpus"]["documents"],
            "scored tokens": certificate["corpus"]["scored_tokens"],
            "evaluated tokens": quantized["tokens"],
            "decoded bits per token": quantized["bits"],
        }
        config = certificate["code"]["config"]
        if config.get("kind") == "opaque file":
            claimed["opaque file sha256"] = config["file_sha256"]
        architecture = certificate["prior"].get("architecture")
        if architecture is not None:
            claimed["architecture fingerprint"] = architecture["fingerprint"]
        claimed |= {f"decoded top-{k} error": v for k, v in quantized["top_k_error"].items()}
        claimed |= {
            f"{loss} {method} bound": bound["value"]
            for loss, by_method in certificate["bounds"].items()
            for method, bound in by_method.items()
        }
    except (KeyError, TypeError, AttributeError) as error:
        raise ValueError(f"the certificate lacks a field it must state: {error!r}") from None
    return claimed
