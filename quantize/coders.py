"""Entropy coding of one group's symbols 0 … k−1 (k ≥ 2): a range coder under a symbol model,
or zstd.

Range coding uses constriction (Bamler 2022, "Understanding entropy coding with asymmetric numeral
systems (ANS): a statistician's perspective", arXiv:2201.01741) with one of these symbol models:
- "counts": the empirical count table c (every c_i ≥ 1, Σc = n). The decoder rebuilds the same
  model ``Categorical(c, perfect=False)`` from the counts stored in the word, so the payload is
  n·H(c/n) bits up to constriction's fixed-point rounding of the probabilities and a few words.
- "laplace" / "gaussian": constriction's QuantizedLaplace / QuantizedGaussian on the integer range
  [0, k − 1] with location and scale stored as float32 (64 bits instead of a count table).
The compressed words are stored big-endian, 32 bits each.

zstd (RFC 8878) codes the symbols as bytes (uint8, or uint16 little-endian when k > 256) in one
frame that declares its content size.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import constriction
import numpy as np
import zstandard
from scipy.special import ndtr

from .errors import CodeError
from .quantizers import CHUNK

MODEL_KINDS = ("counts", "laplace", "gaussian")
_model = constriction.stream.model
_queue = constriction.stream.queue


@dataclass(frozen=True)
class SymbolModel:
    """A model of i.i.d. symbols 0 … k−1: a count table, or a parametric law (loc, scale)."""

    kind: str
    size: int  # k, the alphabet size
    counts: np.ndarray | None = None  # int64, length k, all ≥ 1 ("counts" only)
    loc: float = 0.0  # float32-representable ("laplace"/"gaussian" only)
    scale: float = 1.0

    def to_constriction(self):
        if self.kind == "counts":
            return _model.Categorical(self.counts.astype(np.float64), perfect=False)
        if not (np.isfinite(self.loc) and np.isfinite(self.scale) and self.scale > 0):
            raise CodeError(
                f"invalid {self.kind} symbol model (loc={self.loc}, scale={self.scale})"
            )
        law = _model.QuantizedLaplace if self.kind == "laplace" else _model.QuantizedGaussian
        return law(0, self.size - 1, self.loc, self.scale)


def fit_parametric(kind: str, counts: np.ndarray) -> SymbolModel:
    """Maximum-likelihood location and scale of a Laplace (median, mean |deviation|) or Gaussian
    (mean, standard deviation) law on the symbol indices, rounded to float32."""
    index = np.arange(counts.shape[0], dtype=np.float64)
    weights = counts.astype(np.float64) / counts.sum()
    if kind == "laplace":
        loc = float(index[np.searchsorted(np.cumsum(weights), 0.5)])
        scale = float(weights @ np.abs(index - loc))
    else:
        loc = float(weights @ index)
        scale = float(np.sqrt(weights @ (index - loc) ** 2))
    loc32 = float(np.float32(loc))
    scale32 = float(max(np.float32(scale), np.finfo(np.float32).tiny))
    return SymbolModel(kind=kind, size=counts.shape[0], loc=loc32, scale=scale32)


def estimated_bits(model: SymbolModel, counts: np.ndarray) -> float:
    """Σ c_i · (−log₂ p_i) under the model's law (continuous, before fixed-point rounding)."""
    edges = np.arange(model.size + 1, dtype=np.float64) - 0.5
    z = (edges - model.loc) / model.scale
    if model.kind == "gaussian":
        cdf = ndtr(z)
    else:
        cdf = np.where(z < 0, 0.5 * np.exp(np.minimum(z, 0)), 1 - 0.5 * np.exp(-np.maximum(z, 0)))
    mass = np.maximum(np.diff(cdf), 1e-300) / max(cdf[-1] - cdf[0], 1e-300)
    return float(-(counts * np.log2(mass)).sum())


def range_encode(chunks: Iterable[np.ndarray], model: SymbolModel) -> bytes:
    """Range-code the symbol chunks in order; returns the words as big-endian bytes."""
    law = model.to_constriction()
    encoder = _queue.RangeEncoder()
    for chunk in chunks:
        for start in range(0, chunk.shape[0], CHUNK):
            encoder.encode(chunk[start : start + CHUNK].astype(np.int32), law)
    return encoder.get_compressed().astype(">u4").tobytes()


def range_decode(
    payload: bytes, model: SymbolModel, sizes: Iterable[int], dtype: np.dtype
) -> Iterator[np.ndarray]:
    """Decode symbols from range-coded ``payload``, yielding arrays of the requested sizes."""
    try:
        law = model.to_constriction()
        decoder = _queue.RangeDecoder(np.frombuffer(payload, dtype=">u4").astype(np.uint32))
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as error:  # constriction reports bad input as Rust panics too
        raise CodeError(f"corrupted code word: cannot set up the range decoder ({error})") from None
    for size in sizes:
        out = np.empty(size, dtype=dtype)
        for start in range(0, size, CHUNK):
            count = min(CHUNK, size - start)
            try:
                out[start : start + count] = decoder.decode(law, count)
            except (KeyboardInterrupt, SystemExit):
                raise
            except BaseException as error:
                raise CodeError(f"corrupted code word: range decoding failed ({error})") from None
        yield out


def zstd_level(nbytes: int) -> int:
    """Compression level by input size (an encoder choice: decoding does not depend on it)."""
    if nbytes <= 1 << 20:
        return 19
    return 9 if nbytes <= 1 << 24 else 1


def zstd_encode(chunks: Iterable[np.ndarray], total: int, dtype: np.dtype) -> bytes:
    """One zstd frame of the symbols as ``dtype`` little-endian bytes, declaring its size."""
    nbytes = total * np.dtype(dtype).itemsize
    compressor = zstandard.ZstdCompressor(level=zstd_level(nbytes)).compressobj(size=nbytes)
    little = np.dtype(dtype).newbyteorder("<")
    parts = [compressor.compress(np.ascontiguousarray(chunk, dtype=little)) for chunk in chunks]
    parts.append(compressor.flush())
    return b"".join(parts)


def zstd_decode(payload: bytes, total: int, dtype: np.dtype) -> np.ndarray:
    """Inverse of :func:`zstd_encode`; the frame must declare exactly ``total`` symbols."""
    expected = total * np.dtype(dtype).itemsize
    try:
        declared = zstandard.get_frame_parameters(payload).content_size
        if declared != expected:
            raise CodeError(
                f"corrupted code word: zstd frame declares {declared} bytes, expected {expected}"
            )
        raw = zstandard.ZstdDecompressor().decompress(payload, max_output_size=expected)
    except zstandard.ZstdError as error:
        raise CodeError(f"corrupted code word: zstd payload ({error})") from None
    if len(raw) != expected:
        raise CodeError(f"corrupted code word: zstd payload holds {len(raw)} bytes, not {expected}")
    return np.frombuffer(raw, dtype=np.dtype(dtype).newbyteorder("<")).astype(dtype, copy=False)
