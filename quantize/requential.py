"""Requential codes: a student classifier described by a teacher's selections among its own samples.

Requential coding (Qiu, Finzi, Zheng, Zhang, Wilson, "Requential Coding: Pushing the Limits of
Model Compression with Self-Generated Training Data", arXiv 2607.11883, 2026) and its predecessor
prequential coding (Blier & Ollivier, "The Description Length of Deep Learning Models", NeurIPS
2018) describe a model by the data it is trained on: the decoder re-runs the training and reads
each training label from the word just before it needs it, coded under the distribution of the
model trained so far. The certified model is the decoded *student*; the *teacher* (any trained
classifier) is only the encoder's oracle and never reaches the bound.

The prior (:class:`RequentialPrior`, fixed before the training sample, no bits): the student
architecture and its initialisation seed, an input pool X (unlabelled inputs independent of the
training sample), the shared-randomness seed σ, the :class:`Schedule`, the number of classes C.

The loop (encoder and decoder run it identically; the encoder knows the teacher, the decoder
reads the word). N = schedule.label_counts[grid index] pool inputs x_0 … x_{N−1} in pool order
are labelled in chunks of ``chunk``. For each chunk, the current student (fixed within the chunk)
gives logits ℓ on the chunk's inputs (one batched forward, eval mode, no grad) and

    log p = ℓ − max ℓ − log Σ_y exp(ℓ_y − max ℓ)          (float64, numpy; the same for the teacher
                                                          from its logits: log q)

Requential variant. Shared Gumbel noise for label i: u_y = (⌊r_y / 2¹¹⌋ + ½)·2⁻⁵³ with r the
first C raw 64-bit outputs of PCG64(SeedSequence([σ, i])), and g_y = −ln(−ln u_y). With the
perturbed scores z = log p + g, the student's own draw is s = argmax z (a sample of p: the
Gumbel-max trick, Gumbel 1954), the teacher's is t = argmax(log q + g) (a sample of q). Under this
coupling t = s whenever q = p, and t ≠ s needs (log q − log p)_y − (log q − log p)_s > Δ for some
y, with Δ = z_s − max_{y≠s} z_y the student's perturbed margin. The word codes t under a model of
what the decoder knows (p, g, the labels so far): the Bayesian mixture r = Σ_k w_k r_k (Merhav &
Feder, "Universal prediction", IEEE Trans. IT 44(6), 1998) of the experts
- r_k ∝ exp(a_k log p + b_k g) for (a_k, b_k) in EXPERTS: (1, 0) is p itself (coding the sample
  as prequential coding would), (1, b) tilts p toward the classes the shared noise favours, and
  (a, a) = softmax(z/β) with β = 1/a concentrates on the student's draw s as a grows;
- the agreement expert: the flag [t = s] under a Krichevsky–Trofimov estimate in the context
  b = bin of Δ among GAP_EDGES, P(t = s) = (2A_b + 1)/(2(A_b + D_b) + 2) with A_b, D_b the
  agreements and disagreements seen so far in that bin; on a disagreement, the rank ρ of t among
  the other classes sorted by z descending (ties by class index) under the Laplace estimate
  (n_ρ + 1)/(Σn + C − 1) of the ranks seen so far;
with weights w_k ∝ Π_{j<i} r_k(t_j) (uniform at the start, updated after every label). Since
−log₂ Σ_k (1/8) Π_j r_k(t_j) ≤ min_k −log₂ Π_j r_k(t_j) + 3, the labels cost at most 3 bits more
than under the best single expert in hindsight (before table rounding): never more than 3 bits
above coding the teacher's samples under p (whose expected cost is H(q) + KL(q‖p) per label), and
nothing but the flags when the teacher's draws are the student's (q = p gives t = s always).
Bits: Σ_i −log₂(c_i(t_i) / T), c_i the integer table of r (below).

Prequential variant. No shared noise: t = argmax_y q_y (the teacher's prediction, ties to the
lowest class) coded under the student's own table, −log₂ p̂(t) bits (p̂: the integer table below).
This is Blier & Ollivier's prequential code of the teacher's labels.

Training (both variants). The student starts as ``prior.student(init_seed)`` and is trained with
Adam (lr, default betas, no weight decay) on the cross-entropy of (x_j, t_j) for the labels decoded
so far: after each chunk ``steps_per_chunk`` steps, each on ``min(batch_size, n)`` of the n decoded
labels drawn without replacement (``torch.randperm(n)``, one torch generator seeded with σ);
after the last chunk ``final_epochs`` epochs over all N labels in a fresh ``randperm(N)`` order
each, in batches of ``batch_size`` (the last one smaller). Torch's global generator (dropout) is
seeded with σ, torch runs the student on one thread with deterministic algorithms (settings
restored after); the teacher, which the decoder never runs, keeps the caller's threads.

Integer tables. Every symbol is range coded (constriction's ``RangeEncoder``, Bamler 2022,
arXiv:2201.01741) under an integer frequency table c with c_y ≥ 1 and Σ c = T = 2²⁴, so
P(y) = c_y / T exactly: constriction's fast quantization maps the weights w_y = c_y − 1 (whose sum
is 2²⁴ − K for K symbols) to left cumulatives Σ_{j<y} w_j + y = Σ_{j<y} c_j, exactly, because its
scale is then (2²⁴ − K)/Σw = 1 and integer-valued floats below 2⁵³ add exactly. The table of a
distribution r (p for prequential coding, the mixture for requential coding) is
c_y = ⌊r_y (T − C)⌋ + 1 with the remainder T − Σc added to the first most probable class
(:func:`integer_table`); every probability is at least 2⁻²⁴, so a label costs at most 24 bits.

The word (MSB first; γ, δ: Elias codes, :mod:`quantize.bitio`):

==============  ===============================================================================
header          γ(format version = 1): 1 bit
grid_index      the index of N in ``schedule.label_counts``, ⌈log₂ G⌉ bits (none if G = 1)
length          δ(W + 1), W the number of 32-bit words of the range coder's output
payload         the W words, big-endian: 32·W bits
checksum        the first 64 bits of sha256("bounds.requential.checksum/1" · the prior's
                fingerprint · the canonical fingerprint of the final student's state dict)
==============  ===============================================================================

K = 1 + ⌈log₂ G⌉ + |δ(W + 1)| + 32 W + 64 bits, and the word is prefix-free (every field is
self-delimiting), so K is a prefix-free code length. The payload exceeds the ideal length
Σ −log₂(c_symbol / T) by the range coder's termination, at most about 32 bits plus the rounding
up to a whole word. The decoder rejects a word with bytes beyond the last one K needs, non-zero
padding bits, a payload that differs from the encoder's output for the labels it decodes to (it
re-encodes them: every payload bit counts, and each student has exactly one word), or a checksum
that differs from the one of the student it decoded: a corrupted word, another prior, or a
decoder that drifts (another platform or torch build) stops with a
:class:`~quantize.errors.CodeError` instead of certifying another model.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import constriction
import numpy as np
import torch
from torch import nn

from .bitio import BitReader, BitWriter, ceil_log2, delta_bits, gamma_bits
from .errors import CodeError
from .priors import Fingerprinter, fingerprint_state_dict

FORMAT_VERSION = 1
VARIANTS = ("requential", "prequential")
PRECISION = 24  # constriction's default model precision: probabilities are c / 2**24
TOTAL = 1 << PRECISION
CHECKSUM_BITS = 64
WORD_BITS = 32
#: Edges of the bins of the perturbed margin Δ that select the agreement flag's context.
GAP_EDGES = (0.5, 1.0, 2.0, 4.0, 8.0)
PARTS = ("header", "grid_index", "length", "payload", "checksum")
#: The parametric experts (a, b) of the requential mixture: r ∝ exp(a·log p + b·g).
EXPERTS = ((1.0, 0.0), (1.0, 0.25), (1.0, 0.5), (1.0, 1.0), (2.0, 2.0), (4.0, 4.0), (16.0, 16.0))

_family = constriction.stream.model.Categorical(perfect=False)
_queue = constriction.stream.queue


# --- schedule and prior ------------------------------------------------------------------------


@dataclass(frozen=True)
class Schedule:
    """How the student is trained from the decoded labels, and the declared grid of N."""

    chunk: int = 64  # labels per chunk; the student is fixed within a chunk
    steps_per_chunk: int = 4  # Adam steps after each chunk, on minibatches of all labels so far
    batch_size: int = 64
    lr: float = 3e-3
    final_epochs: int = 10  # after the last label, epochs over all N labels
    label_counts: tuple[int, ...] = (1000, 2000, 4000)  # the declared grid of N
    variant: str = "requential"  # or "prequential"

    def __post_init__(self) -> None:
        object.__setattr__(self, "label_counts", tuple(self.label_counts))
        for name in ("chunk", "batch_size"):
            _check_int(name, getattr(self, name), minimum=1)
        for name in ("steps_per_chunk", "final_epochs"):
            _check_int(name, getattr(self, name), minimum=0)
        if isinstance(self.lr, bool) or not isinstance(self.lr, (int, float)):
            raise ValueError(f"lr must be a number, got {self.lr!r}")
        if not (0 < self.lr < math.inf):
            raise ValueError(f"lr must be positive and finite, got {self.lr}")
        if not self.label_counts:
            raise ValueError("label_counts must declare at least one N")
        for count in self.label_counts:
            _check_int("every label count", count, minimum=1)
        if len(set(self.label_counts)) != len(self.label_counts):
            raise ValueError(f"label_counts must be distinct, got {self.label_counts}")
        if self.variant not in VARIANTS:
            raise ValueError(f"variant must be one of {VARIANTS}, got {self.variant!r}")

    def count(self, grid_index: int) -> int:
        """N of a grid index; ValueError if the index is outside the grid."""
        if isinstance(grid_index, bool) or not isinstance(grid_index, (int, np.integer)):
            raise ValueError(f"grid_index must be an int, got {grid_index!r}")
        if not 0 <= grid_index < len(self.label_counts):
            raise ValueError(
                f"grid_index {grid_index} is outside the grid of {len(self.label_counts)} N"
            )
        return self.label_counts[grid_index]

    def to_dict(self) -> dict[str, Any]:
        """JSON-able fields (label_counts as a list)."""
        out = asdict(self)
        out["label_counts"] = list(self.label_counts)
        out["lr"] = float(self.lr)
        return out


class RequentialPrior:
    """Everything fixed before the training sample: the student architecture and its init seed,
    the input pool (unlabelled inputs independent of the training sample), the shared-randomness
    seed, the schedule, the number of classes. It costs no bits; :meth:`fingerprint` names it."""

    def __init__(
        self,
        student: Callable[[int], nn.Module],
        student_fingerprint: str,
        student_spec: str,
        init_seed: int,
        pool: torch.Tensor,
        schedule: Schedule,
        seed: int,
        classes: int,
    ) -> None:
        _check_prior(student, student_fingerprint, student_spec, init_seed, schedule, seed)
        _check_int("classes", classes, minimum=2)
        if not torch.is_tensor(pool) or pool.dim() < 1 or not pool.is_floating_point():
            raise ValueError("pool must be a floating tensor [P, ...] of unlabelled inputs")
        if not bool(torch.isfinite(pool).all()):
            raise ValueError("the pool holds non-finite inputs")
        self.student = student
        self.student_fingerprint = student_fingerprint
        self.student_spec = student_spec
        self.init_seed = init_seed
        # A private copy: the prior must not change after it is fingerprinted.
        self.pool = pool.detach().to("cpu").contiguous().clone()
        self.schedule = schedule
        self.seed = seed
        self.classes = classes
        self._fingerprint: str | None = None

    #: What N counts in the schedule's grid, and what one coded symbol is.
    units = ("labels", "label")

    def run(
        self,
        count: int,
        stream: _Stream,
        teacher: nn.Module | None,
        progress: Callable[[int, int], None] | None = None,
    ) -> _Run:
        """Label the first `count` pool inputs and train the student (the module's loop)."""
        return _run(self, count, stream, teacher, progress)

    def pool_sha256(self) -> str:
        """sha256 of the pool as one canonical tensor record (:mod:`quantize.priors`)."""
        fingerprinter = Fingerprinter("bounds.requential.pool/1")
        fingerprinter.add_tensor("pool", self.pool)
        return fingerprinter.hexdigest()

    def fingerprint(self) -> str:
        """sha256 over the student's fingerprint and spec, the init seed, the pool tensor, the
        schedule, the seed and the number of classes (canonical fields, quantize.priors)."""
        if self._fingerprint is None:
            fingerprinter = Fingerprinter()
            fingerprinter.add_str("bounds.requential.prior/1")
            fingerprinter.add_str(self.student_fingerprint)
            fingerprinter.add_str(self.student_spec)
            fingerprinter.add_json(self.init_seed)
            fingerprinter.add_tensor("pool", self.pool)
            fingerprinter.add_json(self.schedule.to_dict())
            fingerprinter.add_json(self.seed)
            fingerprinter.add_json(self.classes)
            self._fingerprint = fingerprinter.hexdigest()
        return self._fingerprint

    def describe(self) -> dict[str, Any]:
        """JSON-able description for reports."""
        return {
            "kind": "requential",
            "student": {"spec": self.student_spec, "fingerprint": self.student_fingerprint},
            "init_seed": self.init_seed,
            "pool": {
                "size": int(self.pool.shape[0]),
                "shape": list(self.pool.shape[1:]),
                "dtype": str(self.pool.dtype),
                "sha256": self.pool_sha256(),
            },
            "schedule": self.schedule.to_dict(),
            "seed": self.seed,
            "classes": self.classes,
            "fingerprint": self.fingerprint(),
        }

    def label_count(self, grid_index: int) -> int:
        """N for a grid index; ValueError if the index is outside the grid or N > pool size."""
        count = self.schedule.count(grid_index)
        if count > self.pool.shape[0]:
            raise ValueError(
                f"N = {count} labels needs {count} pool inputs; the pool has {self.pool.shape[0]}"
            )
        return count


# --- the code --------------------------------------------------------------------------------


@dataclass(eq=False)
class RequentialCode:
    """A requential (or prequential) code word and the student it decodes to.

    ``agreements`` counts the labels that were the student's own selection: its Gumbel draw s
    (requential) or its prediction argmax p (prequential). ``label_costs`` are the ideal bits
    −log₂(c_t / 2²⁴) of each label under its integer table (the payload is their sum plus the
    range coder's termination). Both are decoded from the word, so encode and decode agree.
    """

    grid_index: int
    grid_size: int
    variant: str
    labels: int  # N
    payload: bytes  # the range coder's 32-bit words, big-endian
    checksum: bytes  # CHECKSUM_BITS / 8 bytes
    student: nn.Module
    agreements: int  # labels where the teacher's label was the student's own selection
    label_costs: np.ndarray = field(repr=False)  # ideal bits −log₂(c/T) of each label's symbols
    expert_bits: dict[str, float] | None = None  # requential: each mixture expert's code length
    teacher_agreement: float | None = None  # encode only: final student vs teacher argmax on X
    units: tuple[str, str] = ("labels", "label")  # what N counts, and what one coded symbol is

    @property
    def symbols(self) -> int:
        """The coded symbols: N labels, or N·L tokens for N generated sequences of length L."""
        return int(self.label_costs.shape[0])

    @property
    def num_params(self) -> int:
        """The numbers in the word: the coded symbols."""
        return self.symbols

    @property
    def breakdown(self) -> dict[str, int]:
        words = len(self.payload) // 4
        return {
            "header": gamma_bits(FORMAT_VERSION),
            "grid_index": ceil_log2(self.grid_size),
            "length": delta_bits(words + 1),
            "payload": WORD_BITS * words,
            "checksum": CHECKSUM_BITS,
        }

    @property
    def bits(self) -> int:
        """K: the exact length of the self-delimiting word in bits."""
        return sum(self.breakdown.values())

    @property
    def ideal_payload_bits(self) -> float:
        """Σ −log₂ P(coded symbol) under the integer tables: what an ideal coder would pay."""
        return float(self.label_costs.sum())

    @property
    def config(self) -> dict[str, Any]:
        counted, symbol = self.units
        out = {"family": "requential", "variant": self.variant, counted: self.labels}
        if self.symbols != self.labels:
            out[f"{symbol}s"] = self.symbols
        out["agreements"] = self.agreements
        out["agreement_rate"] = self.agreements / self.symbols
        out[f"bits_per_{symbol}"] = self.bits / self.symbols
        return out

    def to_bytes(self) -> bytes:
        """The word, zero-padded to whole bytes."""
        writer = BitWriter()
        writer.write_gamma(FORMAT_VERSION)
        writer.write(self.grid_index, ceil_log2(self.grid_size))
        writer.write_delta(len(self.payload) // 4 + 1)
        writer.write_bits(self.payload, 8 * len(self.payload))
        writer.write_bits(self.checksum, CHECKSUM_BITS)
        if writer.bits != self.bits:  # K must be the length of what is written, never less
            raise RuntimeError(f"wrote {writer.bits} bits, the breakdown counts {self.bits}")
        return writer.getvalue()

    @classmethod
    def from_bytes(
        cls,
        word: bytes,
        prior: RequentialPrior,
        *,
        progress: Callable[[int, int], None] | None = None,
    ) -> RequentialCode:
        """Parse the word and decode the student by re-running its training; CodeError on a
        corrupted, truncated or padded word, or when the decoded student fails the checksum."""
        grid_index, payload, checksum = _parse(bytes(word), len(prior.schedule.label_counts))
        try:
            count = prior.label_count(grid_index)
        except ValueError as error:
            raise CodeError(f"the word does not fit its prior: {error}") from None
        try:
            decoder = _queue.RangeDecoder(np.frombuffer(payload, dtype=">u4").astype(np.uint32))
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as error:  # constriction reports bad input as Rust panics too
            raise CodeError(
                f"corrupted code word: cannot set up the range decoder ({error})"
            ) from None
        reader = _Reader(decoder)
        run = prior.run(count, reader, None, progress)
        if not decoder.maybe_exhausted() or not reader.canonical(payload):
            raise CodeError(
                "corrupted code word: the payload is not the encoding of the labels it decodes to"
            )
        if _checksum(prior, run.student) != checksum:
            raise CodeError(
                "checksum mismatch: the decoded student is not the one that was encoded (a "
                "corrupted word, another prior, or a decoder that drifts: another platform or "
                "torch build)"
            )
        return cls(
            grid_index=grid_index,
            grid_size=len(prior.schedule.label_counts),
            variant=prior.schedule.variant,
            labels=count,
            payload=payload,
            checksum=checksum,
            student=run.student,
            agreements=int(run.agreed.sum()),
            label_costs=run.costs,
            expert_bits=run.expert_bits,
            units=prior.units,
        )


def encode(
    teacher: nn.Module,
    prior: RequentialPrior,
    grid_index: int,
    *,
    progress: Callable[[int, int], None] | None = None,
) -> RequentialCode:
    """Code the teacher's selections on the first N pool inputs and train the student from them.

    ``progress(done, total)`` is called after each chunk and each final epoch (total = chunks +
    final epochs). The returned code's ``student`` is the model the word decodes to.
    """
    if not isinstance(teacher, nn.Module):
        raise ValueError(f"teacher must be an nn.Module, got {type(teacher).__name__}")
    count = prior.label_count(grid_index)
    encoder = _queue.RangeEncoder()
    run = prior.run(count, _Writer(encoder), teacher, progress)
    payload = encoder.get_compressed().astype(">u4").tobytes()
    return RequentialCode(
        grid_index=int(grid_index),
        grid_size=len(prior.schedule.label_counts),
        variant=prior.schedule.variant,
        labels=count,
        payload=payload,
        checksum=_checksum(prior, run.student),
        student=run.student,
        agreements=int(run.agreed.sum()),
        label_costs=run.costs,
        expert_bits=run.expert_bits,
        teacher_agreement=run.teacher_agreement,
        units=prior.units,
    )


# --- the word --------------------------------------------------------------------------------


def _parse(word: bytes, grid_size: int) -> tuple[int, bytes, bytes]:
    """(grid index, payload, checksum) of a word; CodeError unless it is exactly one word."""
    reader = BitReader(word)
    reader.context = "the header"
    version = reader.read_gamma()
    if version != FORMAT_VERSION:
        raise CodeError(
            f"not a requential code word of format {FORMAT_VERSION} (version {version})"
        )
    reader.context = "the grid index"
    grid_index = reader.read(ceil_log2(grid_size))
    if grid_index >= grid_size:
        raise CodeError(f"corrupted code word: grid index {grid_index} in a grid of {grid_size}")
    reader.context = "the payload length"
    words = reader.read_delta() - 1
    reader.context = "the payload"
    payload = reader.read_bits(WORD_BITS * words)
    reader.context = "the checksum"
    checksum = reader.read_bits(CHECKSUM_BITS)
    padding = reader.remaining
    if padding >= 8 or reader.read(padding) != 0:
        raise CodeError(
            f"corrupted code word: {padding} bits after the checksum (trailing bytes or non-zero "
            "padding)"
        )
    return grid_index, payload, checksum


def _checksum(prior: RequentialPrior, student: nn.Module) -> bytes:
    """The first 64 bits of sha256 over the prior's fingerprint and the student's state dict."""
    digest = hashlib.sha256(b"bounds.requential.checksum/1|")
    digest.update(prior.fingerprint().encode())
    digest.update(fingerprint_state_dict(student.state_dict()).encode())
    return digest.digest()[: CHECKSUM_BITS // 8]


# --- integer tables --------------------------------------------------------------------------


def integer_table(log_probs: np.ndarray) -> np.ndarray:
    """Integer tables [m, C] from float64 log-probabilities: c_y = ⌊r_y (T − C)⌋ + 1, the
    remainder T − Σc added to the first most probable class, so every row sums to T = 2²⁴."""
    classes = log_probs.shape[1]
    weights = np.floor(np.exp(log_probs) * float(TOTAL - classes)).astype(np.int64)
    rows = np.arange(log_probs.shape[0])
    # Σ⌊·⌋ ≤ T − C up to float rounding of Σr; the remainder goes to the largest entry.
    weights[rows, np.argmax(weights, axis=1)] += (TOTAL - classes) - weights.sum(axis=1)
    return weights + 1


def table_bits(table: np.ndarray, symbols: np.ndarray) -> np.ndarray:
    """−log₂(c_symbol / T) per row."""
    return PRECISION - np.log2(table[np.arange(table.shape[0]), symbols].astype(np.float64))


def shared_gumbel(seed: int, index: int, classes: int) -> np.ndarray:
    """Gumbel noise of label `index`: g = −ln(−ln u), u = (⌊r / 2¹¹⌋ + ½) 2⁻⁵³ ∈ (0, 1), r the
    first `classes` raw outputs of PCG64(SeedSequence([seed, index]))."""
    raw = np.random.PCG64(np.random.SeedSequence([seed, index])).random_raw(classes)
    uniform = ((raw >> np.uint64(11)).astype(np.float64) + 0.5) * 2.0**-53
    return -np.log(-np.log(uniform))


def log_softmax(logits: torch.Tensor | np.ndarray, axis: int = -1) -> np.ndarray:
    """float64 log-probabilities: ℓ − max ℓ − ln Σ exp(ℓ − max ℓ) along `axis`."""
    if torch.is_tensor(logits):
        logits = logits.detach().to("cpu", torch.float64).numpy()
    values = np.asarray(logits, dtype=np.float64)
    return values - logsumexp(values, axis=axis)


def logsumexp(values: np.ndarray, axis: int = -1) -> np.ndarray:
    """ln Σ exp(v) along `axis` (kept as a size-1 axis), shifted by the maximum."""
    top = values.max(axis=axis, keepdims=True)
    return top + np.log(np.exp(values - top).sum(axis=axis, keepdims=True))


# --- the symbol stream -----------------------------------------------------------------------


class _Writer:
    """Encoder side: codes the given symbols under their tables."""

    def __init__(self, encoder: Any) -> None:
        self.encoder = encoder

    def code(self, table: np.ndarray, symbols: np.ndarray | None) -> np.ndarray:
        assert symbols is not None
        self.encoder.encode(symbols.astype(np.int32), _family, (table - 1).astype(np.float64))
        return symbols


class _Reader:
    """Decoder side: reads one symbol per table row, and re-encodes it into a shadow encoder so
    that the payload can be checked to be the encoder's own output (:meth:`canonical`)."""

    def __init__(self, decoder: Any) -> None:
        self.decoder = decoder
        self.shadow = _queue.RangeEncoder()

    def code(self, table: np.ndarray, symbols: np.ndarray | None = None) -> np.ndarray:
        weights = (table - 1).astype(np.float64)
        try:
            decoded = np.asarray(self.decoder.decode(_family, weights), dtype=np.int32)
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as error:
            raise CodeError(f"corrupted code word: range decoding failed ({error})") from None
        self.shadow.encode(decoded, _family, weights)
        return decoded

    def canonical(self, payload: bytes) -> bool:
        """True if `payload` is exactly what the encoder writes for the decoded symbols (a range
        coder's last bits need not all be read, so a flip there could otherwise go unnoticed)."""
        return self.shadow.get_compressed().astype(">u4").tobytes() == payload


_Stream = _Writer | _Reader


# --- labelling one chunk ---------------------------------------------------------------------


@dataclass
class _Labels:
    """The labels of one chunk, whether each was the student's own selection, and their bits."""

    labels: np.ndarray  # int64 [m]
    agreed: np.ndarray  # bool [m]
    costs: np.ndarray  # float64 [m]


class _Requential:
    """The Bayesian mixture of the parametric experts and the agreement expert (module doc)."""

    def __init__(self, seed: int, classes: int) -> None:
        self.seed, self.classes = seed, classes
        self.flags = np.zeros((len(GAP_EDGES) + 1, 2), dtype=np.int64)  # [bin, (same, differ)]
        self.ranks = np.zeros(classes - 1, dtype=np.int64)
        self.log_weights = np.zeros(len(EXPERTS) + 1)  # ln w_k up to a constant
        self.totals = np.zeros(len(EXPERTS) + 1)  # Σ −ln r_k(t) so far, for the report
        self.slopes = np.array(EXPERTS, dtype=np.float64)

    def chunk(
        self, stream: _Stream, indexes: np.ndarray, log_p: np.ndarray, log_q: np.ndarray | None
    ) -> _Labels:
        count = log_p.shape[0]
        noise = np.stack([shared_gumbel(self.seed, int(i), self.classes) for i in indexes])
        scores = log_p + noise
        order = np.argsort(-scores, axis=1, kind="stable")  # order[:, 0] = s, the student's draw
        rows = np.arange(count)
        gaps = scores[rows, order[:, 0]] - scores[rows, order[:, 1]]
        bins = np.searchsorted(np.asarray(GAP_EDGES), gaps, side="right")
        tilted = (
            self.slopes[None, :, 0, None] * log_p[:, None, :]
            + self.slopes[None, :, 1, None] * noise[:, None, :]
        )
        experts = log_softmax(tilted, axis=2)  # [m, experts, C]
        teacher = None if log_q is None else np.argmax(log_q + noise, axis=1)
        labels, costs = np.zeros(count, dtype=np.int64), np.zeros(count)
        for i in range(count):
            wanted = None if teacher is None else teacher[i : i + 1]
            labels[i], costs[i] = self._label(stream, experts[i], order[i], bins[i], wanted)
        return _Labels(labels, labels == order[:, 0], costs)

    def _label(
        self,
        stream: _Stream,
        experts: np.ndarray,
        order: np.ndarray,
        context: int,
        wanted: np.ndarray | None,
    ) -> tuple[int, float]:
        """Code one label under the mixture's integer table; return it and its bits."""
        log_r = np.vstack([experts, self._agreement_expert(order, context)])
        mixture = logsumexp(self.log_weights[:, None] + log_r, axis=0)[0]
        table = integer_table((mixture - logsumexp(mixture))[None, :])
        label = int(stream.code(table, wanted)[0])
        self._update(log_r[:, label], order, context, label)
        return label, float(table_bits(table, np.array([label]))[0])

    def _agreement_expert(self, order: np.ndarray, context: int) -> np.ndarray:
        """ln r(y): KT flag [y = s] in the margin context, Laplace rank of y among the others."""
        same, differ = (int(n) for n in self.flags[context])
        agree = (2 * same + 1) / (2 * (same + differ) + 2)
        ranks = (self.ranks + 1) / (self.ranks.sum() + self.classes - 1)
        out = np.empty(self.classes)
        out[order[0]] = np.log(agree)
        out[order[1:]] = np.log1p(-agree) + np.log(ranks)
        return out

    def _update(self, log_r: np.ndarray, order: np.ndarray, context: int, label: int) -> None:
        """Bayes: w_k ← w_k r_k(t) (renormalised to max 0), then the agreement expert's counts."""
        self.totals -= log_r
        self.log_weights = self.log_weights + log_r
        self.log_weights -= self.log_weights.max()
        differ = int(label != order[0])
        self.flags[context, differ] += 1
        if differ:
            self.ranks[int(np.nonzero(order[1:] == label)[0][0])] += 1

    def expert_bits(self) -> dict[str, float]:
        """Each expert's own code length so far (bits, before integer tables): the mixture pays
        at most log₂ |experts| more than the smallest."""
        names = [f"a={a:g},b={b:g}" for a, b in EXPERTS] + ["agreement"]
        return {name: float(v / math.log(2)) for name, v in zip(names, self.totals, strict=True)}


class _Prequential:
    """The teacher's selection coded under the student's own table: its prediction argmax q,
    or with `sampled` its Gumbel draw argmax(log q + g) (the noise is the encoder's sampling
    device only: the decoder reads the symbol under p's table and never needs it)."""

    def __init__(self, seed: int, classes: int, *, sampled: bool = False) -> None:
        self.seed, self.classes, self.sampled = seed, classes, sampled

    def chunk(
        self, stream: _Stream, indexes: np.ndarray, log_p: np.ndarray, log_q: np.ndarray | None
    ) -> _Labels:
        table = integer_table(log_p)
        wanted = None
        if log_q is not None and self.sampled:
            noise = np.stack([shared_gumbel(self.seed, int(i), self.classes) for i in indexes])
            wanted = np.argmax(log_q + noise, axis=1)
        elif log_q is not None:
            wanted = np.argmax(log_q, axis=1)
        labels = stream.code(table, wanted).astype(np.int64)
        agreed = labels == np.argmax(log_p, axis=1)
        return _Labels(labels, agreed, table_bits(table, labels))

    def expert_bits(self) -> None:
        return None


# --- the training loop -----------------------------------------------------------------------


@dataclass
class _Run:
    student: nn.Module
    agreed: np.ndarray
    costs: np.ndarray
    expert_bits: dict[str, float] | None
    teacher_agreement: float | None


@contextlib.contextmanager
def _deterministic() -> Iterator[int]:
    """One thread and deterministic algorithms (so that the decoder's arithmetic repeats the
    encoder's), inside a fork of torch's global generator; everything restored after. Yields
    the caller's thread count, which the teacher may use (`_teaching`)."""
    threads = torch.get_num_threads()
    was_deterministic = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    try:
        with torch.random.fork_rng(devices=[]):
            yield threads
    finally:
        torch.use_deterministic_algorithms(was_deterministic, warn_only=warn_only)
        torch.set_num_threads(threads)


@contextlib.contextmanager
def _teaching(threads: int) -> Iterator[None]:
    """Inside `_deterministic`, around the teacher's forward passes: the caller's `threads`,
    since the decoder never runs the teacher and its rounding need not repeat, and a fork of
    torch's generator, since a teacher that draws random numbers must not shift the student's
    training noise, which the decoder replays without a teacher."""
    torch.set_num_threads(threads)
    try:
        with torch.random.fork_rng(devices=[]):
            yield
    finally:
        torch.set_num_threads(1)


class _Student:
    """The student, its Adam optimiser and the generator of its minibatch order."""

    def __init__(self, prior: RequentialPrior) -> None:
        torch.manual_seed(prior.init_seed)  # for factories that ignore their seed argument
        self.network = prior.student(prior.init_seed)
        if not isinstance(self.network, nn.Module):
            raise ValueError(f"the student factory {prior.student_spec!r} did not build a module")
        torch.manual_seed(prior.seed)  # dropout and other training noise
        self.optimizer = torch.optim.Adam(
            self.network.parameters(), lr=prior.schedule.lr, foreach=False
        )
        self.order = torch.Generator().manual_seed(prior.seed)
        self.schedule, self.classes = prior.schedule, prior.classes

    def log_probs(self, inputs: torch.Tensor) -> np.ndarray:
        self.network.eval()
        return _log_probs(self.network, inputs, self.classes, "student")

    def after_chunk(self, inputs: torch.Tensor, labels: torch.Tensor, decoded: int) -> None:
        """``steps_per_chunk`` steps, each on min(batch_size, n) of the n decoded labels."""
        for _ in range(self.schedule.steps_per_chunk):
            index = torch.randperm(decoded, generator=self.order)[: self.schedule.batch_size]
            self._step(inputs[index], labels[index])

    def epoch(self, inputs: torch.Tensor, labels: torch.Tensor) -> None:
        """One epoch over all labels in a fresh random order."""
        permutation = torch.randperm(labels.shape[0], generator=self.order)
        for start in range(0, labels.shape[0], self.schedule.batch_size):
            index = permutation[start : start + self.schedule.batch_size]
            self._step(inputs[index], labels[index])

    def _step(self, inputs: torch.Tensor, labels: torch.Tensor) -> None:
        """One Adam step on the mean cross-entropy over every label of the batch (one per
        input for a classifier, one per position for a language model's [B, L, V] logits)."""
        self.network.train()
        logits = self.network(inputs)
        loss = nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1))
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()


def _log_probs(model: nn.Module, inputs: torch.Tensor, classes: int, who: str) -> np.ndarray:
    """float64 log-probabilities of `model` on `inputs` (no grad; the caller sets eval mode)."""
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    with torch.no_grad():
        logits = model(inputs.to(device))
    if logits.dim() != 2 or tuple(logits.shape) != (inputs.shape[0], classes):
        raise ValueError(
            f"the {who} returned logits of shape {tuple(logits.shape)}, expected "
            f"[{inputs.shape[0]}, {classes}]"
        )
    if not bool(torch.isfinite(logits).all()):
        raise CodeError(f"the {who}'s logits are not finite (its training diverged: lower lr)")
    return log_softmax(logits)


@contextlib.contextmanager
def _evaluating(model: nn.Module | None) -> Iterator[None]:
    """`model` in eval mode, its mode restored after."""
    if model is None:
        yield
        return
    mode = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(mode)


def _run(
    prior: RequentialPrior,
    count: int,
    stream: _Stream,
    teacher: nn.Module | None,
    progress: Callable[[int, int], None] | None,
) -> _Run:
    """The loop of the module docstring; the teacher is given at encoding, None at decoding."""
    schedule = prior.schedule
    chunks = -(-count // schedule.chunk)
    coder = _coder(prior, sampled=False)
    inputs = prior.pool[:count]
    labels = torch.zeros(count, dtype=torch.int64)
    agreed, costs = np.zeros(count, dtype=bool), np.zeros(count)
    with _deterministic() as threads, _evaluating(teacher):
        student = _Student(prior)
        for number, start in enumerate(range(0, count, schedule.chunk)):
            stop = min(start + schedule.chunk, count)
            log_p = student.log_probs(inputs[start:stop])
            log_q = None
            if teacher is not None:
                with _teaching(threads):
                    log_q = _log_probs(teacher, inputs[start:stop], prior.classes, "teacher")
            chunk = coder.chunk(stream, np.arange(start, stop), log_p, log_q)
            labels[start:stop] = torch.from_numpy(chunk.labels)
            agreed[start:stop], costs[start:stop] = chunk.agreed, chunk.costs
            student.after_chunk(inputs, labels, stop)
            if progress is not None:
                progress(number + 1, chunks + schedule.final_epochs)
        _final_epochs(student, inputs, labels, chunks, progress)
        agreement = None
        if teacher is not None:
            agreement = _agreement(student.network, teacher, inputs, threads)
    return _Run(student.network, agreed, costs, coder.expert_bits(), agreement)


def _final_epochs(
    student: _Student,
    inputs: torch.Tensor,
    labels: torch.Tensor,
    chunks: int,
    progress: Callable[[int, int], None] | None,
) -> None:
    """After the last of `chunks` chunks: ``final_epochs`` epochs over all N labels, each
    reported to `progress` (steps done, steps in all); the student is left in eval mode."""
    final = student.schedule.final_epochs
    for epoch in range(final):
        student.epoch(inputs, labels)
        if progress is not None:
            progress(chunks + epoch + 1, chunks + final)
    student.network.eval()


def _coder(prior: Any, *, sampled: bool) -> _Requential | _Prequential:
    """The symbol coder of the prior's variant."""
    if prior.schedule.variant == "requential":
        return _Requential(prior.seed, prior.classes)
    return _Prequential(prior.seed, prior.classes, sampled=sampled)


def _agreement(student: nn.Module, teacher: nn.Module, inputs: torch.Tensor, threads: int) -> float:
    """Fraction of the inputs on which the student's and the teacher's predictions agree."""
    with torch.no_grad():
        mine = student(inputs).argmax(dim=1).cpu()
        device = next((p.device for p in teacher.parameters()), torch.device("cpu"))
        with _teaching(threads):
            theirs = teacher(inputs.to(device)).argmax(dim=1).cpu()
    return float((mine == theirs).double().mean())


def _check_prior(student, student_fingerprint, student_spec, init_seed, schedule, seed) -> None:
    """The checks every requential prior makes of its student, seeds and schedule."""
    if not callable(student):
        raise ValueError("student must be a callable seed -> nn.Module (e.g. Architecture.build)")
    for name, value in (
        ("student_fingerprint", student_fingerprint),
        ("student_spec", student_spec),
    ):
        if not isinstance(value, str) or not value:
            raise ValueError(f"{name} must be a non-empty string")
    _check_int("init_seed", init_seed, minimum=0)
    _check_int("seed", seed, minimum=0)
    if not isinstance(schedule, Schedule):
        raise ValueError(f"schedule must be a Schedule, got {type(schedule).__name__}")


def _check_int(name: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an int ≥ {minimum}, got {value!r}")
