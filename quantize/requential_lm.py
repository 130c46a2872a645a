"""Requential codes for causal language models: the student generates its own contexts.

The word, the symbol coders, the integer tables and the student's training are those of
:mod:`quantize.requential` (read it first; Qiu, Finzi, Zheng, Zhang, Wilson, arXiv 2607.11883,
2026). A language model needs no input pool: the contexts are the sequences generated so far.

The prior (:class:`SequencePrior`, fixed before the training corpus, no bits): the student
architecture and its initialisation seed, the shared-randomness seed σ, the
:class:`~quantize.requential.Schedule` (``chunk``: sequences generated together with the
student fixed; ``batch_size``: sequences per Adam step; ``label_counts``: the declared grid of
sequence counts N), the sequence length L, the start token b and the vocabulary size V.

Generation (encoder and decoder alike). Sequence j (0 ≤ j < N) starts as x_0 = b. At position
i = 1 … L, with the prefix x_0 … x_{i−1}, the student's next-token log-probabilities log p are
the float64 log-softmax of its logits at the last position (the teacher's, at encoding, give
log q), and the symbol's shared-noise index is j·L + i − 1 (Gumbel noise g as in
:func:`quantize.requential.shared_gumbel`). The teacher's token is its Gumbel draw
t = argmax(log q + g), a sample of q, and x_i = t. Requential variant: t is coded under the
mixture of :mod:`quantize.requential` relative to the student's own draw argmax(log p + g).
Prequential variant (Blier & Ollivier 2018): the same draw coded under p's table alone; its
expected cost is H(q) + KL(q‖p) bits per token, paid whether or not the student agrees. The
``chunk`` sequences of a chunk are generated together, one batched forward of [m, i] ids per
position, and their symbols are coded position by position, sequence by sequence.

Training. The decoded sequences [N, L + 1] give inputs x_0 … x_{L−1} and targets x_1 … x_L;
the loss of a batch is the mean next-token cross-entropy over all its positions. After each
chunk, ``steps_per_chunk`` Adam steps, each on min(batch_size, n) of the n sequences decoded so
far; after the last chunk, ``final_epochs`` epochs over all N (as for classifiers).

K is the length of the same self-delimiting word as for classifiers; it codes N·L symbols, and
its checksum binds the final student's state dict to this prior's fingerprint.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

from .errors import CodeError
from .priors import Fingerprinter
from .requential import (
    Schedule,
    _check_int,
    _check_prior,
    _coder,
    _deterministic,
    _evaluating,
    _final_epochs,
    _Run,
    _Stream,
    _Student,
    _teaching,
    log_softmax,
)

#: The schedule of a language-model student when none is given: 16 sequences per chunk and
#: per step, 16 steps per chunk, a grid of 128, 256 and 512 sequences.
DEFAULT_SCHEDULE = Schedule(
    chunk=16,
    steps_per_chunk=16,
    batch_size=16,
    lr=3e-3,
    final_epochs=4,
    label_counts=(128, 256, 512),
)


class SequencePrior:
    """Everything fixed before the training corpus: the student architecture and its init seed,
    the shared-randomness seed, the schedule, the sequence length, the start token and the
    vocabulary size. It costs no bits; :meth:`fingerprint` names it."""

    #: What N counts in the schedule's grid, and what one coded symbol is.
    units = ("sequences", "token")

    def __init__(
        self,
        student: Callable[[int], nn.Module],
        student_fingerprint: str,
        student_spec: str,
        init_seed: int,
        schedule: Schedule,
        seed: int,
        vocab_size: int,
        sequence_length: int,
        start_token: int,
    ) -> None:
        _check_prior(student, student_fingerprint, student_spec, init_seed, schedule, seed)
        _check_int("vocab_size", vocab_size, minimum=2)
        _check_int("sequence_length", sequence_length, minimum=1)
        _check_int("start_token", start_token, minimum=0)
        if start_token >= vocab_size:
            raise ValueError(
                f"start_token {start_token} is not an id of a vocabulary of {vocab_size}"
            )
        self.student = student
        self.student_fingerprint = student_fingerprint
        self.student_spec = student_spec
        self.init_seed = int(init_seed)
        self.schedule = schedule
        self.seed = int(seed)
        self.classes = int(vocab_size)  # the student's and the teacher's outputs per position
        self.sequence_length = int(sequence_length)
        self.start_token = int(start_token)
        self._fingerprint: str | None = None

    @property
    def vocab_size(self) -> int:
        return self.classes

    def fingerprint(self) -> str:
        """sha256 over the student's fingerprint and spec, the init seed, the schedule, the
        seed, the vocabulary size, the sequence length and the start token (quantize.priors)."""
        if self._fingerprint is None:
            fingerprinter = Fingerprinter()
            fingerprinter.add_str("bounds.requential.sequences/1")
            fingerprinter.add_str(self.student_fingerprint)
            fingerprinter.add_str(self.student_spec)
            fingerprinter.add_json(
                [self.init_seed, self.seed, self.classes, self.sequence_length, self.start_token]
            )
            fingerprinter.add_json(self.schedule.to_dict())
            self._fingerprint = fingerprinter.hexdigest()
        return self._fingerprint

    def describe(self) -> dict[str, Any]:
        """JSON-able description for reports (and for `bounds verify` to rebuild the prior)."""
        return {
            "kind": "requential-lm",
            "student": {"spec": self.student_spec, "fingerprint": self.student_fingerprint},
            "init_seed": self.init_seed,
            "schedule": self.schedule.to_dict(),
            "seed": self.seed,
            "vocab_size": self.classes,
            "sequence_length": self.sequence_length,
            "start_token": self.start_token,
            "fingerprint": self.fingerprint(),
        }

    def label_count(self, grid_index: int) -> int:
        """N for a grid index; ValueError if the index is outside the grid."""
        return self.schedule.count(grid_index)

    def run(
        self,
        count: int,
        stream: _Stream,
        teacher: nn.Module | None,
        progress: Callable[[int, int], None] | None = None,
    ) -> _Run:
        """Generate `count` sequences, coding (or reading) every token, and train the student
        (the module's loop); the teacher is given at encoding, None at decoding."""
        schedule, length = self.schedule, self.sequence_length
        chunks = -(-count // schedule.chunk)
        coder = _coder(self, sampled=True)
        sequences = torch.full((count, length + 1), self.start_token, dtype=torch.int64)
        inputs, targets = sequences[:, :-1], sequences[:, 1:]
        agreed, costs = np.zeros((count, length), dtype=bool), np.zeros((count, length))
        with _deterministic() as threads, _evaluating(teacher):
            student = _Student(self)
            for number, start in enumerate(range(0, count, schedule.chunk)):
                stop = min(start + schedule.chunk, count)
                for position in range(1, length + 1):
                    prefix = sequences[start:stop, :position]
                    student.network.eval()
                    log_p = _next_log_probs(student.network, prefix, self.classes, "student")
                    log_q = None
                    if teacher is not None:
                        with _teaching(threads):
                            log_q = _next_log_probs(teacher, prefix, self.classes, "teacher")
                    indexes = np.arange(start, stop) * length + position - 1
                    chunk = coder.chunk(stream, indexes, log_p, log_q)
                    sequences[start:stop, position] = torch.from_numpy(chunk.labels)
                    agreed[start:stop, position - 1] = chunk.agreed
                    costs[start:stop, position - 1] = chunk.costs
                student.after_chunk(inputs, targets, stop)
                if progress is not None:
                    progress(number + 1, chunks + schedule.final_epochs)
            _final_epochs(student, inputs, targets, chunks, progress)
            agreement = None
            if teacher is not None:
                agreement = _agreement(
                    student.network, teacher, inputs, self.classes, schedule.chunk, threads
                )
        return _Run(
            student.network, agreed.reshape(-1), costs.reshape(-1), coder.expert_bits(), agreement
        )


def _logits(model: nn.Module, ids: torch.Tensor, vocab_size: int, who: str) -> torch.Tensor:
    """`model`'s logits [B, T, V] for long ids [B, T] (no grad; a tensor or an object with
    .logits), checked for shape and finiteness."""
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    try:
        with torch.no_grad():
            output = model(ids.to(device))
    except (RuntimeError, TypeError, ValueError, IndexError) as error:
        text = str(error).strip().splitlines()
        raise ValueError(
            f"the {who} rejects token ids of shape {tuple(ids.shape)}: "
            f"{text[0] if text else repr(error)}"
        ) from None
    logits = output if torch.is_tensor(output) else getattr(output, "logits", None)
    expected = (*ids.shape, vocab_size)
    if not torch.is_tensor(logits) or tuple(logits.shape) != expected:
        shape = tuple(logits.shape) if torch.is_tensor(logits) else type(output).__name__
        raise ValueError(f"the {who} returned logits of shape {shape}, expected {list(expected)}")
    if not bool(torch.isfinite(logits).all()):
        raise CodeError(f"the {who}'s logits are not finite (its training diverged: lower lr)")
    return logits


def _next_log_probs(model: nn.Module, prefix: torch.Tensor, vocab_size: int, who: str):
    """float64 log-probabilities [B, V] of the next token after each prefix."""
    return log_softmax(_logits(model, prefix, vocab_size, who)[:, -1])


def _agreement(
    student: nn.Module,
    teacher: nn.Module,
    inputs: torch.Tensor,
    vocab_size: int,
    batch: int,
    threads: int,
) -> float:
    """Fraction of the generated positions where the student's and the teacher's next-token
    predictions (argmax) agree."""
    same = 0
    for start in range(0, inputs.shape[0], batch):
        ids = inputs[start : start + batch]
        mine = _logits(student, ids, vocab_size, "student").argmax(-1).cpu()
        with _teaching(threads):
            theirs = _logits(teacher, ids, vocab_size, "teacher").argmax(-1).cpu()
        same += int((mine == theirs).sum())
    return same / inputs.numel()
