"""Requential and prequential codes (quantize.requential): exact round trips, every bit counted,
corrupted words refused, and the prior's fingerprint."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
import torch

from bounds.pipeline.decoder import Architecture
from quantize.bitio import delta_bits
from quantize.errors import CodeError
from quantize.requential import RequentialCode, RequentialPrior, Schedule, encode

STUDENT = Architecture.from_spec("bounds.models.architectures:mnist1d_cnn:width=6")
SMALL = Schedule(
    chunk=16, steps_per_chunk=2, batch_size=16, lr=3e-3, final_epochs=1, label_counts=(48, 96, 160)
)
FROZEN = dataclasses.replace(SMALL, steps_per_chunk=0, final_epochs=0)  # the student never moves
TOTAL = 1 << 24


def make_prior(schedule: Schedule = SMALL, **changes) -> RequentialPrior:
    options = {
        "student": STUDENT.build,
        "student_fingerprint": STUDENT.fingerprint,
        "student_spec": STUDENT.spec,
        "init_seed": 0,
        "pool": torch.randn(200, 1, 40, generator=torch.Generator().manual_seed(5)),
        "schedule": schedule,
        "seed": 11,
        "classes": 10,
    }
    options.update(changes)
    return RequentialPrior(**options)


class Sharpened(torch.nn.Module):
    """A teacher unlike the student: another random CNN with its logits scaled up."""

    def __init__(self) -> None:
        super().__init__()
        self.network = Architecture.from_spec(
            "bounds.models.architectures:mnist1d_cnn:width=8"
        ).build(3)
        self.scale = 8.0

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.scale * self.network(inputs)


@pytest.fixture(scope="module")
def teacher() -> torch.nn.Module:
    return Sharpened().eval()


@pytest.fixture(scope="module")
def requential(teacher):
    prior = make_prior()
    return prior, encode(teacher, prior, 1)


def assert_same_student(first: torch.nn.Module, second: torch.nn.Module) -> None:
    a, b = first.state_dict(), second.state_dict()
    assert list(a) == list(b)
    for name in a:
        assert a[name].dtype == b[name].dtype and torch.equal(a[name], b[name]), name


def assert_round_trip(code: RequentialCode, prior: RequentialPrior) -> RequentialCode:
    word = code.to_bytes()
    assert sum(code.breakdown.values()) == code.bits
    words, grid = len(code.payload) // 4, len(prior.schedule.label_counts)
    # K = γ(1) + ⌈log₂ G⌉ + δ(W + 1) + 32 W + 64, counted here from the format alone.
    assert code.bits == 1 + (grid - 1).bit_length() + delta_bits(words + 1) + 32 * words + 64
    assert len(word) == math.ceil(code.bits / 8)  # K is what is written, up to the padding
    decoded = RequentialCode.from_bytes(word, prior)
    assert_same_student(code.student, decoded.student)
    assert decoded.bits == code.bits and decoded.breakdown == code.breakdown
    assert decoded.config == code.config and decoded.grid_index == code.grid_index
    assert np.array_equal(decoded.label_costs, code.label_costs)
    assert decoded.to_bytes() == word
    return decoded


def test_requential_round_trip_is_bit_identical(requential):
    prior, code = requential
    threads = torch.get_num_threads()
    decoded = assert_round_trip(code, prior)
    assert torch.get_num_threads() == threads  # the deterministic context is restored
    assert code.num_params == code.labels == 96
    assert code.config["family"] == "requential" and code.config["variant"] == "requential"
    assert code.config["bits_per_label"] == code.bits / 96
    assert decoded.expert_bits == code.expert_bits
    assert set(code.breakdown) == {"header", "grid_index", "length", "payload", "checksum"}
    assert code.breakdown["grid_index"] == 2  # ⌈log₂ 3⌉
    # The student that decodes is new and trained: not the initial network.
    initial = STUDENT.build(0)
    assert not torch.equal(initial[0].weight, decoded.student[0].weight)


def test_prequential_round_trip(teacher):
    prior = make_prior(dataclasses.replace(SMALL, variant="prequential"))
    code = encode(teacher, prior, 0)
    assert code.variant == "prequential" and code.expert_bits is None
    assert_round_trip(code, prior)


def flip(word: bytes, bit: int) -> bytes:
    data = bytearray(word)
    data[bit // 8] ^= 0x80 >> (bit % 8)
    return bytes(data)


@pytest.fixture(scope="module")
def short(teacher):
    prior = make_prior()
    return prior, encode(teacher, prior, 0)


def test_corrupted_payload_and_checksum_are_refused(short):
    prior, code = short
    word = code.to_bytes()
    parts = code.breakdown
    payload_start = parts["header"] + parts["grid_index"] + parts["length"]
    checksum_start = payload_start + parts["payload"]
    positions = [
        payload_start,
        payload_start + parts["payload"] // 2,
        checksum_start - 1,  # the payload's last bit
        checksum_start,
        code.bits - 1,
    ]
    for position in positions:
        with pytest.raises(CodeError, match="corrupted|checksum|truncated"):
            RequentialCode.from_bytes(flip(word, position), prior)


def test_truncated_padded_and_extended_words_are_refused(short):
    prior, code = short
    word = code.to_bytes()
    with pytest.raises(CodeError, match="truncated"):
        RequentialCode.from_bytes(word[:-1], prior)
    with pytest.raises(CodeError, match="truncated"):
        RequentialCode.from_bytes(word[:3], prior)
    with pytest.raises(CodeError, match="trailing"):
        RequentialCode.from_bytes(word + b"\x00", prior)
    if code.bits % 8:  # a set padding bit is not the word either
        with pytest.raises(CodeError, match="padding"):
            RequentialCode.from_bytes(flip(word, code.bits), prior)
    with pytest.raises(CodeError, match="version"):
        RequentialCode.from_bytes(flip(word, 0), prior)


def test_another_prior_is_refused(short):
    _, code = short
    with pytest.raises(CodeError, match="checksum|corrupted"):
        RequentialCode.from_bytes(code.to_bytes(), make_prior(seed=12))


def independent_tables(log_probs: np.ndarray) -> np.ndarray:
    """The documented table c_y = ⌊p_y (T − C)⌋ + 1, remainder to the first largest entry."""
    classes = log_probs.shape[1]
    weights = np.floor(np.exp(log_probs) * (TOTAL - classes)).astype(np.int64)
    for row in weights:
        row[np.argmax(row)] += TOTAL - classes - row.sum()
    return weights + 1


def test_payload_is_what_the_labels_cost(teacher):
    """With a frozen student the tables are known in advance: recompute the ideal length
    Σ −log₂(c_t / 2²⁴) independently and check the range coder wrote that many bits."""
    prior = make_prior(dataclasses.replace(FROZEN, variant="prequential"))
    code = encode(teacher, prior, 2)
    inputs = prior.pool[:160]
    with torch.no_grad():
        student = STUDENT.build(0).eval()
        log_p = torch.log_softmax(student(inputs).double(), dim=1).numpy()
        labels = teacher(inputs).argmax(dim=1).numpy()
    tables = independent_tables(log_p)
    assert (tables >= 1).all() and (tables.sum(axis=1) == TOTAL).all()
    ideal = float(np.sum(24 - np.log2(tables[np.arange(160), labels])))
    assert ideal > 160  # the teacher disagrees with the untrained student: bits to pay
    assert code.ideal_payload_bits == pytest.approx(ideal, abs=1e-3)
    payload = code.breakdown["payload"]
    assert payload == 8 * len(code.payload)
    assert ideal - 1 <= payload <= ideal + 64  # range coding: termination and whole words only
    assert code.agreements == int((labels == log_p.argmax(axis=1)).sum())


def test_requential_payload_matches_its_label_costs(requential):
    _, code = requential
    ideal = code.ideal_payload_bits
    assert ideal - 1 <= code.breakdown["payload"] <= ideal + 64
    # The mixture pays at most log₂ 8 = 3 bits (+ table rounding) over its best expert.
    assert ideal <= min(code.expert_bits.values()) + 3 + 1e-3 * code.labels


def gumbel(seed: int, index: int, classes: int) -> np.ndarray:
    """The documented shared noise, recomputed: g = −ln(−ln u), u from PCG64's raw words."""
    raw = np.random.PCG64(np.random.SeedSequence([seed, index])).random_raw(classes)
    return -np.log(-np.log(((raw >> np.uint64(11)).astype(np.float64) + 0.5) / 2.0**53))


def test_self_teacher_agrees_everywhere_and_costs_almost_nothing(teacher):
    prior = make_prior(FROZEN)
    own = STUDENT.build(0)  # the student's own initial distribution, as the teacher
    same = encode(own, prior, 2)
    assert same.agreements == same.labels == 160
    assert_round_trip(same, prior)
    other = encode(teacher, prior, 2)
    # Independently: the teacher's Gumbel draws versus the student's under the same noise.
    inputs = prior.pool[:160]
    with torch.no_grad():
        log_p = torch.log_softmax(STUDENT.build(0).eval()(inputs).double(), dim=1).numpy()
        log_q = torch.log_softmax(teacher(inputs).double(), dim=1).numpy()
    noise = np.stack([gumbel(11, i, 10) for i in range(160)])
    agreed = (log_p + noise).argmax(axis=1) == (log_q + noise).argmax(axis=1)
    assert other.agreements == int(agreed.sum()) < 160
    assert same.ideal_payload_bits < 0.1 * same.labels
    assert same.breakdown["payload"] <= 64
    assert other.ideal_payload_bits / other.labels > 10 * same.ideal_payload_bits / same.labels
    assert other.bits > same.bits


def test_fingerprint_names_every_part_of_the_prior():
    base = make_prior()
    prints = {base.fingerprint()}
    variants = [
        make_prior(pool=base.pool + 1e-3),
        make_prior(seed=12),
        make_prior(init_seed=1),
        make_prior(dataclasses.replace(SMALL, lr=1e-3)),
        make_prior(dataclasses.replace(SMALL, label_counts=(48, 96))),
        make_prior(dataclasses.replace(SMALL, variant="prequential")),
        make_prior(classes=11),
        make_prior(student_spec="another:factory"),
    ]
    for prior in variants:
        prints.add(prior.fingerprint())
    assert len(prints) == 1 + len(variants)
    assert make_prior().fingerprint() == base.fingerprint()
    description = json.loads(json.dumps(base.describe()))
    assert description["kind"] == "requential" and description["fingerprint"] == base.fingerprint()
    assert description["pool"]["size"] == 200 and len(description["pool"]["sha256"]) == 64
    assert description["schedule"]["label_counts"] == [48, 96, 160]


def test_bad_arguments(teacher):
    prior = make_prior(dataclasses.replace(SMALL, label_counts=(48, 400)))
    with pytest.raises(ValueError, match="pool"):
        encode(teacher, prior, 1)
    with pytest.raises(ValueError, match="grid"):
        encode(teacher, prior, 2)
    with pytest.raises(ValueError, match="variant"):
        Schedule(variant="other")
    with pytest.raises(ValueError, match="distinct"):
        Schedule(label_counts=(10, 10))
    with pytest.raises(ValueError, match="lr"):
        Schedule(lr=float("nan"))
