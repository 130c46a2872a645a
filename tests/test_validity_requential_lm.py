"""Monte Carlo validity of the LM requential pipeline: each bound ≥ the exact risk of the student.

`bounds.certify_lm(teacher, S, code=RequentialCodes(SequencePrior(...)))` certifies a *student*
that the decoder re-trains from the teacher's coded tokens on sequences it generates itself
(quantize.requential_lm). The training corpus S enters the word only through the teacher, fitted
to S; the prior (student factory, seeds, schedule, sequence length, start token) is fixed before.

The source: documents of LENGTH tokens after a beginning-of-document token BOS (= V − 1, never
emitted), from a first-order chain over the other tokens whose transitions are known exactly:
every state has two successors, half of them clean (0.9 / 0.1) and half coin flips; the row of
BOS is the start law. The teacher memorizes S: after every context of the last ORDER tokens
that S holds (hashed) it predicts S's empirical next-token law there, so its own samples retrace
S's documents (most such contexts occur once in S). The student, a bigram table plus a hashed
table of logits over the same contexts, learns those documents from the teacher's samples and so
fits S's coin flips: its training loss on S falls below its exact conditional risk
(1/m) Σ_t Σ_y P(y | x_{t−1}) ℓ(forecast_t, y), computed here for the student decoded from the
certificate's word with ``RequentialCode.from_bytes``.

Establishes: the token-level bounds (Azuma and empirical Bernstein, top-1 error and the smoothed
bits at the α each reports) cover that exact risk in ≥ 1 − δ of the draws, while the same bounds
recomputed from the certificate's numbers with K = 0 do not. Decision rule as in
test_validity_pipeline.py: a valid bound's violation count exceeds the (1 − ALARM)-quantile of
Binomial(D, δ) with probability ≤ ALARM = 10⁻³. (The document-level bounds' target, an
expectation over all 2^LENGTH-ish documents through a hashed context, is not computed here;
test_validity_pipeline.py covers those bounds for parameter codes.)
"""

from __future__ import annotations

import math
from functools import cache

import numpy as np
import pytest
import torch
from scipy.stats import binom
from test_validity_pipeline import DELTA, recomputed  # the same δ, the same recomputation
from torch import nn

import bounds
from bounds import smoothed_log_loss
from bounds.pipeline.codes import RequentialCodes
from bounds.tasks.language.tokens import TokenCorpus
from quantize.requential import RequentialCode, Schedule
from quantize.requential_lm import SequencePrior

pytestmark = pytest.mark.usefixtures("one_thread")

ALARM = 1e-3
DRAWS = 30
STATES = 8  # chain states, token ids 0 … 7
VOCAB = STATES + 1
BOS = STATES
LENGTH = 64  # tokens per document after BOS, all scored
DOCUMENTS = 500
ORDER = 12  # tokens of context the hashed tables read
BUCKETS = 16381
SMOOTHING = 0.01
ALPHAS = (1 / 4, 1 / 16)
SCHEDULE = Schedule(
    chunk=16, steps_per_chunk=4, batch_size=16, lr=0.3, final_epochs=8, label_counts=(128,)
)


@cache
def chain() -> np.ndarray:
    """transition [V, V]: rows 0 … 7 the chain, row BOS the start law; no row emits BOS."""
    rng = np.random.default_rng(23)
    transition = np.zeros((VOCAB, VOCAB))
    for state in range(STATES):
        first, second = rng.choice(STATES, size=2, replace=False)
        share = 0.9 if state % 2 == 0 else 0.5
        transition[state, first], transition[state, second] = share, 1 - share
    transition[BOS, :STATES] = rng.dirichlet(np.ones(STATES))
    return transition


def draw_corpus(rng: np.random.Generator) -> tuple[TokenCorpus, np.ndarray]:
    """DOCUMENTS i.i.d. documents [BOS, x_1 … x_LENGTH] (inverse-CDF sampling)."""
    cumulative = np.cumsum(chain(), axis=1)
    ids = np.full((DOCUMENTS, LENGTH + 1), BOS, dtype=np.int64)
    for t in range(1, LENGTH + 1):
        ids[:, t] = (rng.random((DOCUMENTS, 1)) >= cumulative[ids[:, t - 1]]).sum(axis=1)
    ids = np.minimum(ids, STATES - 1)  # a cumulative sum rounded just below 1
    ids[:, 0] = BOS
    ends = np.arange(1, DOCUMENTS + 1) * (LENGTH + 1)
    corpus = TokenCorpus(ids.reshape(-1), ends - LENGTH - 1, ends, VOCAB, "markov chain with BOS")
    return corpus, ids


class HashedLM(nn.Module):
    """Causal LM: logits_t = B[x_t] + M[h_t], h_t a hash of the last ORDER tokens up to t."""

    def __init__(self) -> None:
        super().__init__()
        self.bigram = nn.Parameter(torch.zeros(VOCAB, VOCAB))
        self.memo = nn.Parameter(torch.zeros(BUCKETS, VOCAB))

    @staticmethod
    def buckets(ids: torch.Tensor) -> torch.Tensor:
        code = torch.zeros_like(ids)
        for lag in range(ORDER - 1, -1, -1):
            shifted = nn.functional.pad(ids, (lag, 0), value=VOCAB)[:, : ids.shape[1]]
            code = code * (VOCAB + 1) + shifted
        return code % BUCKETS

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.bigram[ids] + self.memo[self.buckets(ids)]


class Memorizer(nn.Module):
    """The teacher: S's empirical next-token law after each context it saw (hashed, counts
    plus SMOOTHING), and ln(bigram counts + ½) after contexts it did not see."""

    def __init__(self, ids: np.ndarray) -> None:
        super().__init__()
        tensor = torch.from_numpy(ids)
        counts = np.zeros((VOCAB, VOCAB))
        np.add.at(counts, (ids[:, :-1], ids[:, 1:]), 1)
        self.register_buffer("bigram", torch.from_numpy(np.log(counts + 0.5)))
        seen = torch.zeros(BUCKETS, VOCAB, dtype=torch.float64)
        following = nn.functional.one_hot(tensor[:, 1:], VOCAB).double().reshape(-1, VOCAB)
        seen.index_add_(0, HashedLM.buckets(tensor)[:, :-1].reshape(-1), following)
        self.register_buffer("seen", seen)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        counts = self.seen[HashedLM.buckets(ids)]
        known = counts.sum(dim=-1, keepdim=True) > 0
        return torch.where(known, torch.log(counts + SMOOTHING), self.bigram[ids]).float()


def losses_of(logits: np.ndarray) -> dict[str, np.ndarray]:
    """Per-row losses for every next token y, [rows, V]: top-1 error (ties to the lower id,
    as the scorer breaks them) and the smoothed bits for each α."""
    log_p = logits - logits.max(axis=-1, keepdims=True)
    log_p = log_p - np.log(np.exp(log_p).sum(axis=-1, keepdims=True))
    top1 = np.ones_like(logits)
    np.put_along_axis(top1, logits.argmax(axis=-1)[..., None], 0.0, axis=-1)
    out = {"top1": top1}
    for alpha in ALPHAS:
        out[f"bits@{alpha}"] = smoothed_log_loss(log_p, alpha, VOCAB)
    return out


def targets(student: nn.Module, ids: np.ndarray) -> dict[str, tuple[float, float]]:
    """{loss: (empirical mean over the m scored tokens, (1/m) Σ_t E[ℓ_t | x_<t])}."""
    with torch.no_grad():
        logits = student(torch.from_numpy(ids)).double().numpy()[:, :-1].reshape(-1, VOCAB)
    previous, following = ids[:, :-1].reshape(-1), ids[:, 1:].reshape(-1)
    out = {}
    for name, loss in losses_of(logits).items():
        empirical = np.take_along_axis(loss, following[:, None], axis=1)[:, 0]
        conditional = (chain()[previous] * loss).sum(axis=1)
        out[name] = (math.fsum(empirical) / len(empirical), math.fsum(conditional) / len(empirical))
    return out


def test_requential_student_bounds_cover_its_exact_sequential_risk():
    prior = SequencePrior(
        lambda seed: HashedLM(), "hashed-lm", "hashed-lm", 0, SCHEDULE, 0, VOCAB, LENGTH, BOS
    )
    methods = ("token_azuma", "token_bernstein")
    violations: dict[tuple[str, str], int] = {}
    gaps, values = [], []
    for draw in range(DRAWS):
        corpus, ids = draw_corpus(np.random.default_rng([29, draw]))
        certificate = bounds.certify_lm(
            Memorizer(ids).eval(),
            corpus,
            context=LENGTH + 1,
            alphas=ALPHAS,
            delta=DELTA,
            batch_size=512,
            code=RequentialCodes(prior),
            quiet=True,
        )
        # The model the claims are about: what the decoder makes of the word.
        student = RequentialCode.from_bytes(certificate.code.to_bytes(), prior).student
        exact = targets(student, ids)
        summary = certificate.train["decoded"]
        assert summary["tokens"] == DOCUMENTS * LENGTH
        assert math.isclose(summary["top_k_error"]["1"], exact["top1"][0], rel_tol=1e-12)
        gaps.append(exact["top1"][1] - exact["top1"][0])
        for loss, by_method in certificate.bounds.items():
            for method in methods:
                bound = by_method[method]
                name = loss if loss == "top1" else f"bits@{bound.terms['alpha']}"
                empirical, target = exact[name]
                # The scorer's softmax is single precision, as the student's logits are.
                assert math.isclose(bound.empirical_risk, empirical, rel_tol=1e-7)
                assert recomputed(bound, certificate.code_bits) == bound.value
                for key, value in (
                    ((loss, method), bound.value),
                    ((loss, f"{method}, K = 0"), recomputed(bound, 0)),
                ):
                    violations[key] = violations.get(key, 0) + int(value < target)
                if loss == "top1" and method == "token_bernstein":
                    values.append(bound.value)
    allowed = int(binom.ppf(1 - ALARM, DRAWS, DELTA))
    report = (
        f"violations of {DRAWS} draws (allowed {allowed}): {violations}; mean top-1 gap "
        f"{np.mean(gaps):.3f}, mean Bernstein top-1 bound {np.mean(values):.3f}"
    )
    assert np.mean(gaps) > 0.015, report  # the student fits S's coin flips
    for loss in ("top1", "bits"):
        for method in methods:
            assert violations[(loss, method)] <= allowed, report
            assert violations[(loss, f"{method}, K = 0")] > allowed, report
    print(f"\nrequential LM: {report}")
