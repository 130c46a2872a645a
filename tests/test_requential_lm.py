"""Requential codes for language models (quantize.requential_lm): exact round trips, the
teacher's tokens are samples of its distribution, what they cost, corrupted words and other
priors refused, and a student that peeks at later tokens refused before any bound."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
import torch
from scipy.stats import chisquare

import bounds
from bounds.pipeline.codes import RequentialCodes
from bounds.pipeline.decoder import Architecture
from bounds.tasks.language.tokens import TokenCorpus
from quantize.bitio import delta_bits
from quantize.errors import CodeError
from quantize.requential import RequentialCode, Schedule, encode
from quantize.requential_lm import SequencePrior

pytestmark = pytest.mark.usefixtures("one_thread")

VOCAB = 8
LENGTH = 12
STUDENT = Architecture.from_spec(
    "bounds.models.architectures:byte_transformer:"
    f"vocab_size={VOCAB},context={LENGTH},width=16,depth=1,heads=2"
)
SMALL = Schedule(
    chunk=4, steps_per_chunk=2, batch_size=4, lr=3e-3, final_epochs=1, label_counts=(8, 16)
)
FROZEN = dataclasses.replace(SMALL, steps_per_chunk=0, final_epochs=0)  # the student never moves


def make_prior(schedule: Schedule = SMALL, **changes) -> SequencePrior:
    options = {
        "student": STUDENT.build,
        "student_fingerprint": STUDENT.fingerprint,
        "student_spec": STUDENT.spec,
        "init_seed": 0,
        "schedule": schedule,
        "seed": 11,
        "vocab_size": VOCAB,
        "sequence_length": LENGTH,
        "start_token": 0,
    }
    options.update(changes)
    return SequencePrior(**options)


class Sharpened(torch.nn.Module):
    """A teacher unlike the student: another random transformer with its logits scaled up."""

    def __init__(self) -> None:
        super().__init__()
        self.network = Architecture.from_spec(
            "bounds.models.architectures:byte_transformer:"
            f"vocab_size={VOCAB},context={LENGTH},width=16,depth=1,heads=2"
        ).build(3)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return 40.0 * self.network(ids)


class Unigram(torch.nn.Module):
    """The same next-token law q at every position, whatever the context."""

    def __init__(self, logits, *, noisy: bool = False) -> None:
        super().__init__()
        self.logits = torch.nn.Parameter(torch.as_tensor(logits, dtype=torch.float32))
        self.noisy = noisy

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        if self.noisy:  # draws from torch's global generator, as dropout would
            torch.rand(7)
        return self.logits.expand(*ids.shape, self.logits.shape[0]).clone()


UNIGRAM = np.log(np.array([0.3, 0.2, 0.15, 0.1, 0.1, 0.08, 0.05, 0.02]))


@pytest.fixture(scope="module")
def teacher() -> torch.nn.Module:
    return Sharpened().eval()


def assert_same_student(first: torch.nn.Module, second: torch.nn.Module) -> None:
    a, b = first.state_dict(), second.state_dict()
    assert list(a) == list(b)
    for name in a:
        assert torch.equal(a[name], b[name]), name


def assert_round_trip(code: RequentialCode, prior: SequencePrior) -> RequentialCode:
    word = code.to_bytes()
    words, grid = len(code.payload) // 4, len(prior.schedule.label_counts)
    assert code.bits == 1 + (grid - 1).bit_length() + delta_bits(words + 1) + 32 * words + 64
    assert len(word) == math.ceil(code.bits / 8)
    decoded = RequentialCode.from_bytes(word, prior)
    assert_same_student(code.student, decoded.student)
    assert decoded.config == code.config and decoded.bits == code.bits
    assert np.array_equal(decoded.label_costs, code.label_costs)
    assert decoded.to_bytes() == word
    return decoded


@pytest.mark.parametrize("variant", ["requential", "prequential"])
def test_round_trip_is_bit_identical(teacher, variant):
    prior = make_prior(dataclasses.replace(SMALL, variant=variant))
    code = encode(teacher, prior, 1)
    decoded = assert_round_trip(code, prior)
    assert code.labels == 16 and code.symbols == code.num_params == 16 * LENGTH
    assert code.config["sequences"] == 16 and code.config["tokens"] == 16 * LENGTH
    assert code.config["bits_per_token"] == code.bits / (16 * LENGTH)
    assert 0 <= code.teacher_agreement <= 1
    assert (decoded.expert_bits is None) == (variant == "prequential")
    initial = STUDENT.build(0)
    assert not torch.equal(initial.head.weight, decoded.student.head.weight)  # it was trained


def gumbel(seed: int, index: int, classes: int) -> np.ndarray:
    """The documented shared noise, recomputed: g = −ln(−ln u), u from PCG64's raw words."""
    raw = np.random.PCG64(np.random.SeedSequence([seed, index])).random_raw(classes)
    return -np.log(-np.log(((raw >> np.uint64(11)).astype(np.float64) + 0.5) / 2.0**53))


def test_tokens_are_the_teachers_gumbel_draws_and_samples_of_q():
    """Independently: token i of sequence j is argmax(log q + g(σ, j·L + i − 1)); over many
    tokens their frequencies follow q (chi-square), and prequential coding pays about the
    cross-entropy −Σ q log p of q under the frozen student's p per token."""
    log_q = UNIGRAM - np.log(np.exp(UNIGRAM).sum())
    prior = make_prior(
        dataclasses.replace(FROZEN, variant="prequential", label_counts=(64,)),
        student=lambda seed: Unigram(np.zeros(VOCAB)),
        student_fingerprint="uniform",
        student_spec="uniform",
    )
    code = encode(Unigram(UNIGRAM), prior, 0)
    assert_round_trip(code, prior)
    sequences = 64
    indexes = np.arange(sequences * LENGTH)
    expected = np.array([np.argmax(log_q + gumbel(11, int(i), VOCAB)) for i in indexes])
    counts = np.bincount(expected, minlength=VOCAB)
    assert chisquare(counts, np.exp(log_q) * len(expected)).pvalue > 1e-3
    # Under the uniform student every token costs log₂ 8 = 3 bits (table rounding aside).
    assert code.ideal_payload_bits == pytest.approx(3 * len(expected), rel=1e-5)
    # And the decoded sequences are those draws: retrain on them and compare the agreements.
    assert code.agreements == int((expected == 0).sum())  # argmax of a uniform p is token 0


def test_self_teacher_agrees_everywhere_and_costs_almost_nothing(teacher):
    prior = make_prior(FROZEN)
    same = encode(STUDENT.build(0), prior, 1)  # the student's own initial distribution
    assert same.agreements == same.symbols == 16 * LENGTH
    assert_round_trip(same, prior)
    other = encode(teacher, prior, 1)
    assert other.agreements < other.symbols
    assert same.ideal_payload_bits < 0.1 * same.symbols
    assert other.ideal_payload_bits > 10 * same.ideal_payload_bits


def test_a_teacher_that_draws_random_numbers_changes_nothing():
    prior = make_prior()
    quiet = encode(Unigram(UNIGRAM), prior, 0)
    noisy = encode(Unigram(UNIGRAM, noisy=True), prior, 0)
    assert quiet.to_bytes() == noisy.to_bytes()
    assert_same_student(quiet.student, noisy.student)


class Threads(torch.nn.Module):
    """`network`, noting the thread count torch uses for each of its forward passes."""

    def __init__(self, network: torch.nn.Module, seen: set[int]) -> None:
        super().__init__()
        self.network, self.seen = network, seen

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        self.seen.add(torch.get_num_threads())
        return self.network(ids)


def test_the_teacher_runs_on_the_callers_threads_and_the_student_on_one():
    """The decoder never runs the teacher, so its passes may use every thread; the student's
    must repeat bit for bit, on one."""
    student_threads, teacher_threads = set(), set()
    prior = make_prior(
        student=lambda seed: Threads(STUDENT.build(seed), student_threads),
        student_fingerprint="threads",
        student_spec="threads",
    )
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        code = encode(Threads(Sharpened().eval(), teacher_threads), prior, 0)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(threads)
    assert teacher_threads == {2} and student_threads == {1}
    decoded = RequentialCode.from_bytes(code.to_bytes(), prior)
    assert_same_student(code.student, decoded.student)


def flip(word: bytes, bit: int) -> bytes:
    data = bytearray(word)
    data[bit // 8] ^= 0x80 >> (bit % 8)
    return bytes(data)


def test_corrupted_words_and_other_priors_are_refused(teacher):
    prior = make_prior()
    code = encode(teacher, prior, 0)
    word = code.to_bytes()
    parts = code.breakdown
    payload_start = parts["header"] + parts["grid_index"] + parts["length"]
    for position in (payload_start, payload_start + parts["payload"] // 2, code.bits - 1):
        with pytest.raises(CodeError, match="corrupted|checksum|truncated"):
            RequentialCode.from_bytes(flip(word, position), prior)
    with pytest.raises(CodeError, match="truncated"):
        RequentialCode.from_bytes(word[:-1], prior)
    for other in (make_prior(seed=12), make_prior(start_token=1), make_prior(init_seed=1)):
        with pytest.raises(CodeError, match="checksum|corrupted"):
            RequentialCode.from_bytes(word, other)


def test_fingerprint_names_every_part_of_the_prior():
    base = make_prior()
    variants = [
        make_prior(seed=12),
        make_prior(init_seed=1),
        make_prior(start_token=3),
        make_prior(sequence_length=LENGTH - 1),
        make_prior(vocab_size=VOCAB + 1),
        make_prior(dataclasses.replace(SMALL, lr=1e-3)),
        make_prior(dataclasses.replace(SMALL, variant="prequential")),
        make_prior(student_spec="another:factory"),
    ]
    prints = {base.fingerprint(), *(prior.fingerprint() for prior in variants)}
    assert len(prints) == 1 + len(variants)
    description = json.loads(json.dumps(base.describe()))
    assert description["kind"] == "requential-lm"
    assert description["sequence_length"] == LENGTH and description["start_token"] == 0
    assert description["fingerprint"] == base.fingerprint()


def test_bad_arguments(teacher):
    with pytest.raises(ValueError, match="start_token 8"):
        make_prior(start_token=VOCAB)
    with pytest.raises(ValueError, match="sequence_length"):
        make_prior(sequence_length=0)
    with pytest.raises(ValueError, match="grid"):
        encode(teacher, make_prior(), 2)
    # A student whose context is shorter than the sequences: one clear message.
    with pytest.raises(ValueError, match="the student rejects token ids .*exceed the context"):
        encode(teacher, make_prior(sequence_length=LENGTH + 4), 0)
    with pytest.raises(ValueError, match=r"teacher returned logits of shape \(4, 1, 9\)"):
        encode(Unigram(np.zeros(VOCAB + 1)), make_prior(), 0)


class Peeking(torch.nn.Module):
    """A student that reads the next token: its logits at t favour x_{t+1}. Trained on its
    sequences it would score every training token perfectly, without the bits to show for it."""

    def __init__(self) -> None:
        super().__init__()
        self.gain = torch.nn.Parameter(torch.tensor(0.0))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        following = torch.roll(ids, -1, dims=1)
        return self.gain * 10 * torch.nn.functional.one_hot(following, VOCAB).float()


def markov_corpus(documents: int = 40, length: int = LENGTH) -> TokenCorpus:
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, VOCAB, size=documents * length)
    ends = np.arange(1, documents + 1) * length
    return TokenCorpus(tokens, ends - length, ends, VOCAB, "random tokens")


def test_a_student_that_peeks_is_refused_before_any_bound():
    prior = make_prior(
        student=lambda seed: Peeking(),
        student_fingerprint="peeking",
        student_spec="peeking",
    )
    with pytest.raises(ValueError, match="causal"):
        bounds.certify_lm(
            Unigram(UNIGRAM),
            markov_corpus(),
            context=LENGTH,
            code=RequentialCodes(prior),
            quiet=True,
        )


@pytest.fixture
def scored(monkeypatch) -> list[torch.nn.Module]:
    """The models the language task evaluates, in order, as certify runs."""
    from bounds.tasks.language.task import LanguageModelling

    models = []
    evaluate = LanguageModelling.evaluate

    def counting(self, model, data, description, **options):
        models.append(model)
        return evaluate(self, model, data, description, **options)

    monkeypatch.setattr(LanguageModelling, "evaluate", counting)
    return models


def test_one_sequence_count_evaluates_the_decoded_student_alone(teacher, scored):
    """With nothing to choose, the encoder's student is not scored: the training corpus is
    scored twice, for the teacher's row and for the student the decoder re-trained."""
    prior = make_prior(dataclasses.replace(SMALL, label_counts=(8,)))
    certificate = bounds.certify_lm(
        teacher, markov_corpus(), context=LENGTH, code=RequentialCodes(prior), quiet=True
    )
    decoded_student = certificate.code.student
    assert scored[0] is teacher and scored[1:] == [decoded_student]
    (candidate,) = certificate.candidates
    headline = certificate.bounds["bits"]["token_bernstein"].value
    assert candidate["evaluated"] and candidate["bound"] == headline
    assert candidate["bits"] == certificate.code_bits
    assert "evaluation" in certificate.timings and "decode" in certificate.timings


def test_a_sweep_of_students_scores_the_teacher_once(scored):
    """The teacher's row is made once per module object and tensors: certifying it again with
    another student reuses it; changed weights, or another object, are scored afresh."""
    teacher = Sharpened().eval()
    one_count = dataclasses.replace(SMALL, label_counts=(8,))

    def certify(seed: int, model: torch.nn.Module = teacher) -> bounds.Certificate:
        return bounds.certify_lm(
            model,
            markov_corpus(),
            context=LENGTH,
            code=RequentialCodes(make_prior(one_count, init_seed=seed)),
            quiet=True,
        )

    first, second = certify(0), certify(1)
    assert [model is teacher for model in scored] == [True, False, False]
    assert second.train["float"] == first.train["float"]
    assert "float_evaluation" in second.timings
    with torch.no_grad():
        teacher.network.head.weight[0] += 1.0
    changed = certify(0)
    assert scored[3] is teacher and changed.train["float"] != first.train["float"]
    twin = Sharpened().eval()
    twin.load_state_dict(teacher.state_dict())
    certify(0, twin)
    assert scored[5] is twin and len(scored) == 7


def test_certify_lm_certifies_the_decoded_student(teacher):
    prior = make_prior()
    certificate = bounds.certify_lm(
        teacher, markov_corpus(), context=LENGTH, code=RequentialCodes(prior), quiet=True
    )
    word = certificate.code.to_bytes()
    assert (
        certificate.code_bits
        == certificate.code.bits
        == RequentialCode.from_bytes(word, prior).bits
    )
    assert certificate.code_config["sequences"] in (8, 16)
    assert [c["config"] for c in certificate.candidates] == [{"sequences": 8}, {"sequences": 16}]
    assert certificate.num_params == certificate.code_config["sequences"] * LENGTH
    assert certificate.prior["kind"] == "requential-lm"
    claimed = json.loads(certificate.to_json())
    again = bounds.reproduce(
        word, None, markov_corpus(), certificate=claimed, code=RequentialCodes(prior)
    )
    assert again.mismatches == [] and again.code_bits == certificate.code_bits
    assert again.bounds["bits"]["token_bernstein"].value == pytest.approx(
        certificate.bounds["bits"]["token_bernstein"].value, rel=1e-12
    )
