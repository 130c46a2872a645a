"""Streaming compression of a safetensors checkpoint, one tensor at a time.

The word is an ordinary version-1 code word (:mod:`quantize.word`) without a prior: one group per
tensor (group mode "tensor"), the layout in the word, tensors in the order of their names
(Unicode code points; the same for a single file and for any sharding of it). Per floating
tensor, with work dtype float32 (float64 for float64 tensors) as in :func:`quantize.compress`:

1. a first pass over the values checks that they are finite and fits the codebook: "uniform" on the
   exact minimum and maximum; "kmeans" (exact 1-D Lloyd, :mod:`quantize.quantizers`) on every
   value when the tensor has at most ``sample_size`` of them, else on ``sample_size`` values
   drawn uniformly with replacement by a generator seeded with (seed, sha256 of the name);
2. the codebook is stored at the declared precision;
3. a second pass (checking again) assigns every value to its nearest stored level, ties to the
   lower one (:func:`quantize.quantizers.assign`), keeping the symbols (1 byte each up to 256
   levels);
4. unused levels are dropped and the symbols entropy coded by the shortest allowed coder
   (:func:`quantize.compress.code_group`); the group is appended to the word and its symbols freed.

Integer and bool tensors are coded losslessly (:mod:`quantize.integers`).

k-means is fitted on a sample rather than a streamed histogram: an exact histogram of float32
values needs a bin per distinct value (memory as large as the tensor), and a binned one makes the
centroids approximate anyway, by the bin width instead of the sampling error. The sample only
moves the centroids (by about σ/√(sample/levels)): on 2²⁴ Gaussian values with 16 levels,
k-means on 2²⁰ of them (the default; five seeds) gives a mean squared error within 0.03% of
k-means on all values and an entropy within 0.005 bits per value. Whatever the codebook, the
assignment is exact and the word stores the codebook, so the decoded weights are exactly the
levels the values were assigned and K counts every bit. With scheme "uniform", or "kmeans" with
``sample_size`` at least every tensor's size, the word equals ``compress(state,
groups="tensor", ...)`` on the state in name order.

Resident memory: a chunk buffer, the sample, one tensor's symbols and coded candidates, plus the
word written so far; at the end the word and the :class:`~quantize.code.Code` parsed from it.
Each value is read twice from the file (positioned reads, :mod:`quantize.safetensors_reader`).
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from . import quantizers
from .bitio import BitCounter, BitWriter
from .code import Code
from .compress import QuantConfig, code_group
from .integers import encode_integers, write_integers
from .safetensors_reader import (
    StoredTensor,
    checkpoint_tensors,
    read_tensor,
    value_chunks,
    work_dtype_of,
)
from .word import (
    GroupCode,
    WordContents,
    finish_word,
    write_group,
    write_head,
    write_integer_section,
)

DEFAULT_SAMPLE_SIZE = 1 << 20
READ_CHUNK = 1 << 20  # elements per read (with assign's 8-byte indices: 12-16 MiB at a time)


@dataclass(frozen=True)
class TensorStats:
    """How one tensor was coded."""

    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype
    coder: str  # "range/counts", "range/laplace", "range/gaussian", "zstd", "constant",
    # "integers" (lossless) or "empty"
    levels: int  # codebook entries in the word (0 unless quantized)
    fitted_on: int  # values the codebook was fitted on (numel: every value)
    bits: int  # bits of the tensor's part of the word: its group, or its integer code
    payload_bits: int  # bits of the entropy-coded symbols
    entropy_bits: float  # n·H: symbols × the empirical entropy of their frequencies, in bits
    seconds: float

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


@dataclass(frozen=True)
class StreamResult:
    """The code word of a checkpoint and how each tensor (in layout order) was coded."""

    code: Code
    tensors: tuple[TensorStats, ...]


def compress_safetensors(
    path: str | Path,
    *,
    levels: int = 16,
    scheme: str = "kmeans",
    coder: str = "auto",
    precision: str = "float16",
    sample_size: int = DEFAULT_SAMPLE_SIZE,
    seed: int = 0,
    progress: Callable[[int, int, TensorStats], None] | None = None,
    out: str | Path | None = None,
) -> StreamResult:
    """Code the checkpoint at ``path`` (a ``.safetensors`` file, a sharded checkpoint's
    ``*.safetensors.index.json``, or a directory holding either) tensor by tensor.

    ``levels``, ``scheme``, ``coder`` and ``precision`` are those of :func:`quantize.compress`;
    k-means is fitted on at most ``sample_size`` values per tensor, drawn with ``seed``.
    ``progress(done, total, stats)`` is called after each tensor; ``out`` receives the word.
    Decode with ``Code.from_bytes(word).decode()`` (no prior). Raises ValueError for bad
    arguments, an unreadable checkpoint or NaN/infinite weights.
    """
    config = QuantConfig(levels, scheme, coder, "tensor", precision)
    _check_int("sample_size", sample_size, minimum=1)
    _check_int("seed", seed, minimum=0)
    stored = checkpoint_tensors(path)
    head = WordContents(
        grid_index=0,
        grid_size=1,
        group_mode="tensor",
        precision=precision,
        layout=tuple(tensor.spec for tensor in stored),
        layout_from_prior=False,
        uses_reference=False,
        groups=(),  # written one by one below
        integers={
            index: encode_integers(read_tensor(tensor))
            for index, tensor in enumerate(stored)
            if not tensor.spec.is_floating and tensor.spec.numel > 0
        },
    )
    writer = BitWriter()
    write_head(writer, head)
    stats = []
    for index, tensor in enumerate(stored):
        stats.append(_code_tensor(writer, index, tensor, head, config, sample_size, seed))
        if progress is not None:
            progress(index + 1, len(stored), stats[-1])
    write_integer_section(writer, head)
    word = finish_word(writer, None)
    del writer  # its copy of the word
    code = Code.from_bytes(word, None, max_elements=sum(t.spec.numel for t in stored))
    if (code.bits + 7) // 8 != len(word):
        raise RuntimeError("internal error: the parser did not read the word that was written")
    if out is not None:
        code.save(out)
    return StreamResult(code.with_config(config.as_dict()), tuple(stats))


def _check_int(name: str, value: object, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an int ≥ {minimum}, got {value!r}")


def _code_tensor(
    writer: BitWriter,
    index: int,
    tensor: StoredTensor,
    head: WordContents,
    config: QuantConfig,
    sample_size: int,
    seed: int,
) -> TensorStats:
    """Append the tensor's group to ``writer`` (floating) or measure its integer code."""
    start = time.perf_counter()
    spec = tensor.spec
    if spec.numel == 0:
        coder, levels, fitted_on, bits, payload, entropy = "empty", 0, 0, 0, 0, 0.0
    elif not spec.is_floating:
        counter = BitCounter()
        write_integers(counter, head.integers[index], spec.numel)
        coder, levels, fitted_on, bits, payload, entropy = "integers", 0, 0, counter.bits, 0, 0.0
    else:
        group, fitted_on, entropy = _quantize(index, tensor, config, sample_size, seed)
        before = writer.bits
        write_group(writer, group, config.precision)
        bits, levels, payload = writer.bits - before, len(group.codebook), 8 * len(group.payload)
        coder = f"{group.coder}/{group.model.kind}" if group.model else group.coder
    seconds = time.perf_counter() - start
    return TensorStats(
        spec.name, spec.shape, spec.dtype, coder, levels, fitted_on, bits, payload, entropy, seconds
    )


def _quantize(
    index: int, tensor: StoredTensor, config: QuantConfig, sample_size: int, seed: int
) -> tuple[GroupCode, int, float]:
    """The tensor's group, the number of values its codebook was fitted on, and n·H."""
    name, numel = tensor.spec.name, tensor.spec.numel
    if config.scheme == "kmeans":
        fitted = _kmeans_sample(tensor, sample_size, seed)
        centroids, fitted_on = quantizers.kmeans_codebook(fitted, config.levels), fitted.shape[0]
        del fitted
    else:
        low, high = _value_range(tensor)
        centroids, fitted_on = quantizers.uniform_codebook(low, high, config.levels), numel
    codebook = quantizers.stored_codebook(centroids, config.precision, name)
    cuts = quantizers.thresholds(codebook, work_dtype_of(tensor.spec.dtype))
    symbols = np.empty(numel, dtype=quantizers.symbol_dtype(len(codebook)))
    counts = np.zeros(len(codebook), dtype=np.int64)
    for start, values in _finite_chunks(tensor):  # checked again: the file may have changed
        piece = symbols[start : start + values.shape[0]]
        piece[:] = quantizers.assign(values, cuts, symbols.dtype)
        counts += np.bincount(piece, minlength=len(codebook))
    group = code_group((index,), numel, codebook, counts, [symbols], config)
    return group, fitted_on, _entropy_bits(counts)


def _finite_chunks(tensor: StoredTensor) -> Iterator[tuple[int, np.ndarray]]:
    """:func:`value_chunks`, raising ValueError at the first NaN or infinite value."""
    for start, values in value_chunks(tensor, READ_CHUNK):
        if not np.isfinite(values).all():
            raise ValueError(f"tensor {tensor.spec.name!r} has NaN or infinite values")
        yield start, values


def _value_range(tensor: StoredTensor) -> tuple[float, float]:
    """Exact minimum and maximum of the tensor's values (every value checked finite)."""
    ranges = [(float(v.min()), float(v.max())) for _, v in _finite_chunks(tensor)]
    return min(low for low, _ in ranges), max(high for _, high in ranges)


def _kmeans_sample(tensor: StoredTensor, sample_size: int, seed: int) -> np.ndarray:
    """Sorted values to fit k-means on: all of them, or a seeded uniform sample with replacement
    (every value is still read and checked finite)."""
    numel = tensor.spec.numel
    out = np.empty(min(numel, sample_size), dtype=work_dtype_of(tensor.spec.dtype))
    if numel <= sample_size:
        for start, values in _finite_chunks(tensor):
            out[start : start + values.shape[0]] = values
    else:
        name_key = int.from_bytes(hashlib.sha256(tensor.spec.name.encode()).digest()[:8], "little")
        rng = np.random.default_rng([seed, name_key])
        positions = rng.integers(0, numel, size=sample_size)
        positions.sort()
        for start, values in _finite_chunks(tensor):
            low, high = np.searchsorted(positions, [start, start + values.shape[0]])
            out[low:high] = values[positions[low:high] - start]
    out.sort()
    return out


def _entropy_bits(counts: np.ndarray) -> float:
    """n·H(counts/n) in bits, float64."""
    used = counts[counts > 0].astype(np.float64)
    return float(-(used * np.log2(used / used.sum())).sum())
