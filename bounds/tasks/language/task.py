"""Language modelling: documents of tokens, bits per token and top-k errors.

The losses of `bounds.formulas.corpus`: the α-smoothed log loss p̃ = (1 − α)p + α/V, whose
bits lie in a bounded range (Lotfi et al. 2024; best α of the declared grid, paid for by a
union), and top-k errors, each bounded at the document level (Occam over n i.i.d. documents)
and at the token level (time-uniform Azuma and empirical-Bernstein forms over the m scored
tokens of the training stream; Lotfi et al. NeurIPS 2024, Finzi et al. ICLR 2025).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from bounds.formulas.corpus import (
    DocumentLosses,
    Sampling,
    loss_bounds,
    smoothed_bounds,
)
from bounds.formulas.result import Bound
from bounds.formulas.sequence import DEFAULT_ALPHA_GRID, bernstein_bound, smoothed_loss_range
from bounds.pipeline import distributed

DEFAULT_TOP_K = (1,)
#: The search screens every candidate on ⌈D / SCREEN_DOCUMENT_SHARE⌉ drawn documents.
SCREEN_DOCUMENT_SHARE = 8

RISKS = {
    "document_kl": "expected loss of a new document (mean over its tokens); documents i.i.d.",
    "document_hoeffding": "as document_kl, Hoeffding form",
    "token_azuma": "mean over the m training tokens of E[loss | preceding tokens] (sequential)",
    "token_bernstein": "as token_azuma, variance-adaptive (empirical Bernstein)",
}


@dataclass(frozen=True)
class Plan:
    """What is evaluated: the documents, and how they were drawn from the corpus."""

    corpus: Any
    sampling: Sampling
    subsample: int | None
    seed: int
    source: str


def plan_evaluation(corpus, subsample: int | None, seed: int, candidates: int = 1) -> Plan:
    """Every document once, or s documents drawn twice with replacement (seeded): uniformly
    for the document-level bounds and in proportion to scored tokens for the token level.
    Each distinct drawn document is evaluated once. `candidates`: how many code words will be
    chosen among by their losses on the draws (bounds.formulas.corpus.Sampling)."""
    lengths = (corpus.ends - corpus.starts - 1).astype(np.int64)
    documents, tokens = len(lengths), int(lengths.sum())
    if subsample is None:
        return Plan(corpus, Sampling(documents, tokens), None, seed, corpus.source)
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
    return Plan(corpus.subset(distinct), sampling, subsample, seed, corpus.source)


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


@dataclass(frozen=True)
class LanguageModelling:
    """A causal LM mapping token ids [B, T] to logits [B, T, V] (or an output with .logits).

    Windows of `context` tokens slide by `stride` (default `context`) through each document;
    every token but a document's first is scored once. With `subsample` = s, s documents are
    drawn (seed `seed`) instead of scoring the whole corpus, with half of δ for the sampling;
    the seed must be fixed before any result is seen. The headline is the token-level
    Bernstein bound on bits per token, fixed in advance.
    """

    context: int = 256
    stride: int | None = None
    alphas: tuple[float, ...] = DEFAULT_ALPHA_GRID
    top_k: tuple[int, ...] = DEFAULT_TOP_K
    subsample: int | None = None
    seed: int = 0
    batch_size: int = 8
    device: str = field(default="cpu", compare=False)
    quiet: bool = field(default=True, compare=False)

    name = "lm"
    headline = ("bits", "token_bernstein")
    risks = RISKS

    def __post_init__(self) -> None:
        object.__setattr__(self, "stride", self.context if self.stride is None else self.stride)
        object.__setattr__(self, "alphas", tuple(float(a) for a in self.alphas))
        object.__setattr__(self, "top_k", tuple(int(k) for k in self.top_k))
        if not self.alphas:
            raise ValueError("the α grid is empty: give at least one smoothing value")

    @property
    def labels(self) -> dict[str, str]:
        return {"bits": "bits per token"} | {f"top{k}": f"top-{k} error" for k in self.top_k}

    def settings(self) -> dict[str, Any]:
        return {
            "context": self.context,
            "stride": self.stride,
            "alphas": list(self.alphas),
            "top_k": list(self.top_k),
            "subsample": self.subsample,
            "seed": self.seed,
            "batch_size": self.batch_size,
        }

    def default_grid(self) -> list[dict[str, Any]]:
        """8, 16 or 32 k-means levels, one codebook or one per tensor (6 configurations)."""
        from quantize import product_grid

        return product_grid(levels=(8, 16, 32), schemes=("kmeans",))

    def prepare(self, data: Any, candidates: int) -> Plan:
        return plan_evaluation(data, self.subsample, self.seed, candidates=max(1, candidates))

    def evaluate(
        self, model: Any, data: Any, description: str, *, causality_check: bool = True
    ) -> Any:
        """evaluate_lm of the plan's documents. Under torchrun every rank must hold the same
        weights, corpus and settings (checked before scoring), each rank scores its share of
        the batches, a failure on any rank is raised on all, and the per-window sums are
        added up exactly (each row is filled on one rank)."""
        from bounds.tasks.language.evaluate import evaluate_lm

        corpus = data.corpus if isinstance(data, Plan) else data
        shard = distributed.shard()
        # The cheap check first, so that misconfigured ranks stop before the long scoring.
        distributed.run_checked(lambda: None, lambda _: self._agreed(model, corpus))
        evaluation = distributed.run_checked(
            lambda: evaluate_lm(
                model,
                corpus,
                shard=shard,
                description=description,
                causality_check=causality_check,
                **self._scoring(),
            )
        )
        if shard is None:
            return evaluation
        summed = {k: distributed.sum_disjoint(v) for k, v in evaluation.arrays().items()}
        return evaluation.with_arrays(summed)

    def _scoring(self) -> dict[str, Any]:
        """The keyword arguments of `evaluate_lm` that this task fixes."""
        names = ("context", "stride", "alphas", "top_k", "batch_size", "device", "quiet")
        return {name: getattr(self, name) for name in names}

    def evaluation_key(self, model: Any, data: Any) -> str:
        """What `evaluate` depends on besides the module: its tensors and the documents
        (sha256 of each), the settings and torch's thread count (`bounds.tasks.Task`)."""
        import torch

        corpus = data.corpus if isinstance(data, Plan) else data
        return repr((sorted(self._agreed(model, corpus).items()), torch.get_num_threads()))

    def _agreed(self, model: Any, corpus: Any) -> dict[str, Any]:
        """What all ranks must share for their per-window sums to add up to one evaluation."""
        import torch

        from bounds.tasks.classification.evaluate import weights_digest
        from bounds.tasks.language.evaluate import corpus_digest

        # A plain callable has no tensors to compare; a module's are hashed bit for bit.
        weights = weights_digest(model) if isinstance(model, torch.nn.Module) else None
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

    def bounds(
        self, data: Plan, evaluation: Any, code_bits: int, delta: float
    ) -> dict[str, dict[str, Bound]]:
        return all_bounds(
            evaluation.per_document(),
            self.alphas,
            self.top_k,
            evaluation.vocab_size,
            data.sampling,
            code_bits,
            delta,
        )

    def floor(self, data: Plan, evaluation: Any, code_bits: int, delta: float) -> float:
        # No evaluation does better than the least loss with no forecast error on any token,
        # with all of δ for the bound (a subsample's share only raises the bound). The
        # bound is monotone in the mean and in V, so this is below every headline.
        vocab_size = evaluation.vocab_size
        return min(
            bernstein_bound(
                smoothed_loss_range(alpha, vocab_size)[0],
                data.sampling.tokens,
                code_bits,
                delta,
                square_sum=0.0,
                loss_range=smoothed_loss_range(alpha, vocab_size),
                choices=len(self.alphas),
            ).value
            for alpha in self.alphas
        )

    def screen(self, data: Plan, evaluation: Any, delta: float, *, seed: int, miss: float) -> Any:
        """Bits per token of s = ⌈D/8⌉ of the D documents, drawn with replacement in
        proportion to their scored tokens (seed `seed`): each draw's mean loss is an unbiased
        draw of the corpus's token mean. Estimate: the headline token Bernstein bound with
        the draws' mean smoothed loss and mean squared forecast error in place of the
        corpus's (best α). Optimistic: the same with the mean at its Hoeffding lower limit
        (miss probability `miss` per α) and no forecast error at all. None when the task
        already evaluates a subsample or the draws would not be a small part of the corpus."""
        import math

        from bounds.pipeline.search import Screen

        documents, tokens = data.sampling.documents, data.sampling.tokens
        size = math.ceil(documents / SCREEN_DOCUMENT_SHARE)
        if data.sampling.sampled or 2 * size > documents:
            return None
        plan = plan_evaluation(data.corpus, size, seed)
        ranges = [smoothed_loss_range(alpha, evaluation.vocab_size) for alpha in self.alphas]
        margin = math.sqrt(math.log(1 / miss) / (2 * size))

        def draws(sampled: Any) -> tuple[np.ndarray, np.ndarray]:
            """Per α: the draws' mean smoothed loss (bits) and mean squared forecast error."""
            drawn = plan.sampling.weighted
            counts = sampled.tokens[drawn][:, None]
            means = sampled.smoothed_bits[drawn] / counts
            return means.mean(axis=0), (sampled.smoothed_square[drawn] / counts).mean(axis=0)

        def headline(bits: int, means: Any, squares: Any) -> float:
            return min(
                bernstein_bound(
                    float(np.clip(mean, *loss_range)),
                    tokens,
                    bits,
                    delta,
                    square_sum=float(square) * tokens,
                    loss_range=loss_range,
                    choices=len(self.alphas),
                ).value
                for mean, square, loss_range in zip(means, squares, ranges, strict=True)
            )

        def optimistic(bits: int, sampled: Any, best: Any) -> float:
            means, _ = draws(sampled)
            widths = [high - low for low, high in ranges]
            lower = [mean - width * margin for mean, width in zip(means, widths, strict=True)]
            return headline(bits, lower, np.zeros(len(ranges)))

        return Screen(
            # No causality check: a screen only ranks; the chosen word's full evaluation checks.
            evaluate=lambda model: self.evaluate(
                model, plan, "screening candidate", causality_check=False
            ).per_document(),
            estimate=lambda bits, sampled: headline(bits, *draws(sampled)),
            optimistic=optimistic,
            describe=lambda sampled: {
                "n": size,
                "losses": {"bits": float(draws(sampled)[0].min())},
            },
            size=size,
            seed=seed,
            miss=miss,
            unit="documents drawn in proportion to their tokens",
        )

    def summary(self, evaluation: Any) -> dict[str, Any]:
        """Token-weighted means over the evaluated documents."""
        per_document = evaluation.per_document()
        tokens = int(per_document.tokens.sum())
        bits = float(per_document.log_loss_bits.sum() / tokens)
        top_k_error = {
            str(k): float(per_document.topk_errors[:, i].sum() / tokens)
            for i, k in enumerate(self.top_k)
        }
        return {
            "documents": len(per_document.tokens),
            "tokens": tokens,
            "bits": bits,
            "smoothed_bits": {
                str(float(alpha)): float(per_document.smoothed_bits[:, i].sum() / tokens)
                for i, alpha in enumerate(self.alphas)
            },
            "top_k_error": top_k_error,
            "losses": {"bits": bits} | {f"top{k}": rate for k, rate in top_k_error.items()},
        }

    def held_out(
        self, data: Any, evaluation: Any, bounds: Mapping[str, Mapping[str, Bound]], delta: float
    ) -> dict[str, Bound]:
        """Document-level test-set bounds on every held-out document, α fixed by the
        training data's headline bound."""
        alpha = bounds[self.headline[0]][self.headline[1]].terms["alpha"]
        test_plan = plan_evaluation(data, None, self.seed)
        test_bounds = all_bounds(
            evaluation.per_document(),
            (alpha,),
            self.top_k,
            evaluation.vocab_size,
            test_plan.sampling,
            0,
            delta,
        )
        return {loss: by_method["document_kl"] for loss, by_method in test_bounds.items()}

    def describe(self, data: Plan, evaluation: Any) -> tuple[dict[str, Any], list[tuple[str, str]]]:
        section = {
            "source": data.source,
            "documents": data.sampling.documents,
            "scored_tokens": data.sampling.tokens,
            "vocab_size": evaluation.vocab_size,
        }
        sampled = data.subsample
        evaluated = "every token"
        if sampled:
            distinct = len(evaluation.per_document().tokens)
            evaluated = f"{sampled} documents drawn twice (seed {data.seed}), {distinct} distinct"
        rows = [
            ("documents n", f"{section['documents']:,}"),
            ("scored tokens m", f"{section['scored_tokens']:,}"),
            ("context / stride", f"{self.context} / {self.stride}"),
            ("evaluated", evaluated),
            ("bits bounds", "α-smoothed log loss, best α of the grid (the claim names it)"),
            (
                "headline",
                "token Bernstein on bits per token, fixed in advance (another row can be "
                "tighter on a given run; picking it after seeing both would need its own δ)",
            ),
        ]
        return section, rows

    def claim(self, bound: Bound, data: Mapping[str, Any], code_bits: int, delta: float) -> str:
        return (
            f"With probability at least {1 - delta:g}, the decoded model's average "
            f"conditional loss over the {data['scored_tokens']} training tokens is at "
            f"most {bound.value:.4f} bits per token (smoothed with α = {bound.terms['alpha']:g}; "
            f"token-level Bernstein bound, K = {code_bits} bits)."
        )
