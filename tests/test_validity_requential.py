"""Monte Carlo validity of the whole requential pipeline: the bound ≥ the exact risk of the student.

test_validity_pipeline.py checks the parameter codes end to end; this file does the same for
`bounds.certify(teacher, S, code=RequentialCodes(prior))`, where the certified model is a
*student* that the decoder re-trains from the teacher's coded selections on an input pool
(quantize.requential). The training sample S enters the word only through the teacher, which is
fitted to S; everything else is the prior, fixed before any S is drawn: the student factory and
its init seed, an input pool drawn from the input distribution independently of S, the schedule,
the shared-randomness seed, the number of classes.

The task: one of M symbols with known P(x) and labels from a known p(y | x). FREQUENT symbols
carry FREQUENT_MASS of P with a clean majority label (FREQUENT_NOISE of the labels elsewhere);
the RARE others carry the rest with a weak majority (RARE_MAJORITY, the rest uniform over the
C classes), so a rare symbol of S is usually seen once and its label is mostly noise. The teacher
memorizes S (per-symbol label counts, sharpened; class 0 on symbols S does not hold); the student
is a per-symbol table of logits, initialized near "class 0" (the prior's default), that fits the
labels it is taught. A pool symbol that S holds costs the word its teacher label (noise, so about
log₂ C bits); the others cost little. The student thereby memorizes the noisy labels of the rare
symbols that S and the pool share: its training error on S falls far below its true risk
Σ_x P(x)(1 − p(f(x) | x)), which is computed exactly for the student decoded from the
certificate's word with ``RequentialCode.from_bytes(word, prior)`` (the errors it makes on S must
be the certificate's).

Establishes: the binomial, kl and Catoni bounds cover the exact risk of the decoded student in
≥ 1 − δ of the draws, while the binomial bound recomputed from the certificate's numbers with the
label bits under-counted (K = 0; K minus the payload, i.e. only the header, length and checksum)
does not. K/8 and K/4 are reported, not asserted (the memorized labels cost more than the gap
they open, so a fraction of K still covers the risk here).

Decision rule (as in test_validity_pipeline.py): if a bound holds w.p. ≥ 1 − δ on each of D
independent draws, its violation count is stochastically below Binomial(D, δ) and exceeds that
law's (1 − ALARM)-quantile with probability ≤ ALARM = 10⁻³; a negative control counts as invalid
when its count exceeds the same quantile. δ = 0.25 makes the bounds as tight as they get.
"""

from __future__ import annotations

import hashlib
from functools import cache

import numpy as np
import pytest
import torch
from scipy.stats import binom
from torch import nn

import bounds
from bounds import occam_bound
from bounds.pipeline.codes import RequentialCodes
from quantize.requential import RequentialCode, RequentialPrior, Schedule

DELTA = 0.25
ALARM = 1e-3
DRAWS = 30

CLASSES = 16  # C
FREQUENT = 32  # symbols 0…31
RARE = 1024  # symbols 32…1055
SYMBOLS = FREQUENT + RARE  # M
FREQUENT_MASS = 0.4
FREQUENT_NOISE = 0.02
RARE_MAJORITY = 0.3
EXAMPLES = 1024  # n, the size of S
POOL = 2048  # pool inputs, all of them labelled (N)
TEACHER_SCALE = 8.0  # logits per count: the teacher's selections are its memorized labels
DEFAULT_CLASS = 0  # the teacher's label for a symbol S does not hold, and the student's start
STUDENT_BIAS = 3.0  # the student's initial logit margin for DEFAULT_CLASS
SCHEDULE = Schedule(
    chunk=64, steps_per_chunk=4, batch_size=256, lr=0.3, final_epochs=2, label_counts=(POOL,)
)
STUDENT_INIT_SEED = 0
SHARED_SEED = 5


def allowed_violations(draws: int) -> int:
    """The (1 − ALARM)-quantile of Binomial(draws, δ): the most violations a valid bound
    shows except with probability ALARM."""
    return int(binom.ppf(1 - ALARM, draws, DELTA))


# Tiny models run fastest on one thread; several threads spin against each other.
pytestmark = pytest.mark.usefixtures("one_thread")


@cache
def symbol_task() -> tuple[np.ndarray, np.ndarray]:
    """(P(x) [M], p(y | x) [M, C]) as float64 arrays; fixed before any sample is drawn."""
    rng = np.random.default_rng(2026)
    frequent = np.arange(SYMBOLS) < FREQUENT
    probability = np.where(frequent, FREQUENT_MASS / FREQUENT, (1 - FREQUENT_MASS) / RARE)
    majority = rng.integers(0, CLASSES, size=SYMBOLS)
    clean = np.where(frequent, 1 - FREQUENT_NOISE, RARE_MAJORITY)
    conditional = np.repeat(((1 - clean) / (CLASSES - 1))[:, None], CLASSES, axis=1)
    conditional[np.arange(SYMBOLS), majority] = clean
    return probability, conditional


def draw_examples(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """`size` i.i.d. (symbol, label) pairs (inverse-CDF sampling of the labels)."""
    probability, conditional = symbol_task()
    x = rng.choice(SYMBOLS, size=size, p=probability)
    below = rng.random(size)[:, None] >= np.cumsum(conditional[x], axis=1)
    return x, np.minimum(below.sum(axis=1), CLASSES - 1)  # a cumulative sum rounded below 1


class SymbolTable(nn.Module):
    """The student: symbol (a float holding an integer) ↦ a row of C trainable logits."""

    def __init__(self, seed: int) -> None:
        super().__init__()
        start = 0.01 * torch.randn(SYMBOLS, CLASSES, generator=torch.Generator().manual_seed(seed))
        start[:, DEFAULT_CLASS] += STUDENT_BIAS
        self.logits = nn.Parameter(start)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits[x.long()]


class Memorizer(nn.Module):
    """The teacher fitted to S: logits TEACHER_SCALE · (label counts of the symbol in S), and
    DEFAULT_CLASS on the symbols S does not hold (ties between labels seen equally often make
    its selection a draw among them)."""

    def __init__(self, x: np.ndarray, y: np.ndarray) -> None:
        super().__init__()
        counts = np.zeros((SYMBOLS, CLASSES))
        np.add.at(counts, (x, y), 1)
        counts[counts.sum(axis=1) == 0, DEFAULT_CLASS] = 1
        self.register_buffer("table", torch.from_numpy(TEACHER_SCALE * counts).float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.table[x.long()]


@cache
def requential_prior() -> RequentialPrior:
    """Everything fixed before S: the student, the pool (inputs drawn from P(x) with their own
    seed, independently of every S), the schedule and the seeds."""
    pool, _ = draw_examples(np.random.default_rng(99), POOL)
    declared = (
        f"SymbolTable(M={SYMBOLS}, C={CLASSES}, default={DEFAULT_CLASS}, bias={STUDENT_BIAS})"
    )
    return RequentialPrior(
        SymbolTable,
        hashlib.sha256(declared.encode()).hexdigest(),
        f"tests/test_validity_requential.py:{declared}",
        STUDENT_INIT_SEED,
        torch.from_numpy(pool.astype(np.float32)),
        SCHEDULE,
        SHARED_SEED,
        CLASSES,
    )


def test_certify_covers_the_exact_risk_of_the_decoded_student():
    probability, conditional = symbol_task()
    prior = requential_prior()
    symbols = torch.arange(SYMBOLS, dtype=torch.float32)
    methods = ("binomial", "kl", "catoni")
    controls = ("K = 0", "K − payload")
    reported = ("K/8", "K/4")
    violations = dict.fromkeys(methods + controls + reported, 0)
    gaps, values, risks, sizes = [], [], [], []
    for draw in range(DRAWS):
        x, y = draw_examples(np.random.default_rng([17, draw]), EXAMPLES)
        teacher = Memorizer(x, y)
        certificate = bounds.certify(
            teacher,
            (torch.from_numpy(x.astype(np.float32)), torch.from_numpy(y)),
            code=RequentialCodes(prior),
            delta=DELTA,
            quiet=True,
        )
        # The student the claim is about: the word's bytes decoded (re-trained) by the project's
        # decoder under the prior, as `bounds verify` does.
        word = certificate.code.to_bytes()
        assert hashlib.sha256(word).hexdigest() == certificate.code_sha256
        code = RequentialCode.from_bytes(word, prior)
        assert code.bits == certificate.code_bits == sum(certificate.code_breakdown.values())
        assert code.breakdown == certificate.code_breakdown
        student = code.student
        for name, tensor in certificate.code.student.state_dict().items():
            assert torch.equal(tensor, student.state_dict()[name]), name
        with torch.no_grad():
            predicted = student(symbols).argmax(dim=-1).numpy()
        errors = int(np.count_nonzero(predicted[x] != y))
        decoded_summary = certificate.train["decoded"]
        assert decoded_summary["n"] == EXAMPLES
        assert errors == decoded_summary["errors"]  # the evaluated model is this one
        risk = float(np.sum(probability * (1 - conditional[np.arange(SYMBOLS), predicted])))
        gaps.append(risk - errors / EXAMPLES)
        values.append(certificate.bounds["error"]["binomial"].value)
        risks.append(risk)
        sizes.append(certificate.code_bits)

        assert certificate.delta == DELTA and set(certificate.bounds) == {"error"}
        for method in methods:
            violations[method] += certificate.bounds["error"][method].value < risk
        bits = certificate.code_bits
        undercounted = {
            "K = 0": 0,
            "K − payload": bits - certificate.code_breakdown["payload"],
            "K/8": bits / 8,
            "K/4": bits / 4,
        }
        for name, code_bits in undercounted.items():
            bound = occam_bound(EXAMPLES, code_bits, DELTA, errors=errors, method="binomial")
            violations[name] += bound.value < risk

    allowed = allowed_violations(DRAWS)
    report = (
        f"violations of {DRAWS} draws (allowed {allowed}): {violations}; mean risk "
        f"{np.mean(risks):.3f}, mean gap {np.mean(gaps):.3f}, mean binomial bound "
        f"{np.mean(values):.3f}, mean K {np.mean(sizes):.0f} bits"
    )
    # Memorization through the teacher opens a large gap between training error and true risk,
    # and the bound is still below 1.
    assert np.mean(gaps) > 0.2, report
    assert max(values) < 1.0, report
    for method in methods:
        assert violations[method] <= allowed, report
    for name in controls:
        assert violations[name] > allowed, report
    print(f"\nrequential certify: {report}")
