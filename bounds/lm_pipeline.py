"""The language-model pipeline: model → code word → decoded model → token losses → bounds.

The same chain as `bounds.certify`, with a corpus of documents instead of labelled examples
and the losses of bounds.lm_bounds: the smoothed log loss (bits per token, best α of the
declared grid) and top-k errors, each bounded at the document level and at the token level.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from . import distributed
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
from .sequence import DEFAULT_ALPHA_GRID, smoothed_loss_range

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


def plan_evaluation(corpus, subsample: int | None, seed: int) -> Plan:
    """Every document once, or s documents drawn twice with replacement (seeded): uniformly
    for the document-level bounds and in proportion to scored tokens for the token level.
    Each distinct drawn document is evaluated once."""
    lengths = (corpus.ends - corpus.starts - 1).astype(np.int64)
    documents, tokens = len(lengths), int(lengths.sum())
    if subsample is None:
        return Plan(corpus, Sampling(documents, tokens), None, seed)
    if isinstance(subsample, bool) or not isinstance(subsample, int) or subsample < 1:
        raise ValueError(f"the subsample size must be a positive integer, got {subsample!r}")
    rng = np.random.default_rng(seed)
    uniform = rng.integers(0, documents, size=subsample)
    weighted = rng.choice(documents, size=subsample, p=lengths / tokens)
    distinct = np.unique(np.concatenate([uniform, weighted]))
    sampling = Sampling(
        documents,
        tokens,
        uniform=np.searchsorted(distinct, uniform),
        weighted=np.searchsorted(distinct, weighted),
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
    architecture: str | None = None,
    opaque: Any = None,
    quiet: bool = True,
) -> LMCertificate:
    """Certify a causal language model's bits per token and top-k errors on `corpus`.

    `model` maps token ids [B, T] to logits [B, T, V]. Windows of `context` tokens slide by
    `stride` (default `context`) through each document; every token but a document's first
    is scored once. The code is chosen from `grid` (default `lm_default_grid()`) by the
    token-level Bernstein bound on bits per token; with `subsample` = s, s documents are drawn
    (seed `seed`) instead of evaluating the whole corpus, with half of δ for the sampling.
    With `test_corpus`, the decoded model's held-out losses are reported with a
    document-level test-set bound each. `opaque`: as in `bounds.certify`.
    """
    from quantize import grid_fingerprint
    from quantize.compress import coded_state

    from .lm_eval import evaluate_lm

    Ledger(delta)  # validates δ before any work
    quiet = quiet or not distributed.is_main()
    stride = context if stride is None else stride
    alphas, top_k = tuple(float(a) for a in alphas), tuple(int(k) for k in top_k)
    grid = [] if opaque is not None else list(lm_default_grid() if grid is None else grid)
    plan = plan_evaluation(corpus, subsample, seed)
    clock = Stopwatch()

    def run(module: torch.nn.Module, data, description: str):
        shard = distributed.shard()
        evaluation = evaluate_lm(
            module,
            data,
            context=context,
            stride=stride,
            alphas=alphas,
            top_k=top_k,
            batch_size=batch_size,
            device=device,
            quiet=quiet,
            shard=shard,
            description=description,
        )
        if shard is None:
            return evaluation
        # Each window's row is filled on one rank only, so the sum is exact.
        summed = {k: distributed.sum_disjoint(v) for k, v in evaluation.arrays().items()}
        return evaluation.with_arrays(summed)

    float_eval = clock.time("float_evaluation", lambda: run(model, plan.corpus, "float model"))
    vocab_size = float_eval.vocab_size

    def bounds_of(bits: int, evaluation) -> dict[str, dict[str, Bound]]:
        return all_bounds(
            evaluation.per_document(), alphas, top_k, vocab_size, plan.sampling, bits, delta
        )

    def headline(bits: int, evaluation) -> float:
        loss, method = HEADLINE
        return bounds_of(bits, evaluation)[loss][method].value

    def floor(bits: int) -> float:
        # No evaluation does better than the least loss with no forecast error on any token.
        tokens = plan.sampling.tokens
        least = np.array([[smoothed_loss_range(alpha, vocab_size)[0] for alpha in alphas]])
        full = Sampling(plan.sampling.documents, tokens)
        return smoothed_bounds(
            least * tokens,
            np.zeros_like(least),
            np.array([tokens]),
            alphas,
            vocab_size,
            full,
            bits,
            delta,
        )[HEADLINE[1]].value

    if opaque is not None:
        code, candidates, word, decoded = opaque, [], opaque.to_bytes(), model
        prior_description = dict(prior)
    else:
        _, prior = coded_state(model, prior)
        prior_description = describe_prior(prior)
        choice = clock.time(
            "search",
            lambda: choose_code(
                model,
                prior,
                grid,
                lambda candidate: run(candidate, plan.corpus, "candidate"),
                headline,
                floor,
                lambda evaluation: {"bits_per_token": summarize(evaluation, alphas, top_k).bits},
                quiet=quiet,
            ),
        )
        code, candidates = choice.code, choice.candidates
        decoded, word = decoded_model(model, code, prior)

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
            "context": context,
            "stride": stride,
            "vocab_size": vocab_size,
            "subsample": plan.subsample,
            "subsample_seed": plan.seed if plan.subsample else None,
        },
        alphas=alphas,
        top_k=top_k,
        bounds=bounds,
        test=test,
        code_bits=code.bits,
        model_params=network_parameters(model),
        code_breakdown=dict(code.breakdown),
        code_config=opaque_config(code) if opaque is not None else dict(code.config),
        code_sha256=hashlib.sha256(word).hexdigest(),
        grid=grid,
        grid_fingerprint=grid_fingerprint(grid),
        candidates=candidates,
        prior=prior_description,
        architecture=architecture or type(model).__qualname__,
        delta=delta,
        timings=clock.seconds,
        versions=_versions(),
        code=code,
    )
