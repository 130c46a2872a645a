"""Lossless coding of non-floating tensors (integer and bool buffers) by frame of reference.

In the code word: δ(zigzag(min) + 1), δ(w + 1) with w the bit length of max − min, then every
value − min in w bits, row-major (w = 0 for a constant tensor, e.g. a BatchNorm step counter,
which then costs only its two header fields).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .bitio import BitCounter, BitReader, unzigzag, zigzag
from .errors import CodeError
from .layout import TensorSpec

_CHUNK = 1 << 16  # values per packing pass (a multiple of 8 keeps chunks byte aligned)
_MASK64 = (1 << 64) - 1


@dataclass(frozen=True)
class IntegerCode:
    """Frame-of-reference code of one tensor: values = minimum + offsets of ``width`` bits."""

    minimum: int
    width: int
    packed: bytes  # numel · width bits, MSB first, zero-padded


def encode_integers(tensor: torch.Tensor) -> IntegerCode:
    values = tensor.reshape(-1).to(torch.int64).numpy()
    minimum, maximum = int(values.min()), int(values.max())
    width = (maximum - minimum).bit_length()
    offsets = values.astype(np.uint64) - np.uint64(minimum & _MASK64)  # exact modulo 2**64
    shifts = np.arange(width - 1, -1, -1, dtype=np.uint64)
    parts = [
        np.packbits(((offsets[start : start + _CHUNK, None] >> shifts) & 1).astype(np.uint8))
        for start in range(0, offsets.shape[0], _CHUNK)
    ]
    packed = np.concatenate(parts).tobytes() if width else b""
    return IntegerCode(minimum, width, packed)


def write_integers(writer: BitCounter, code: IntegerCode, numel: int) -> None:
    writer.write_delta(zigzag(code.minimum) + 1)
    writer.write_delta(code.width + 1)
    writer.write_bits(code.packed, numel * code.width)


def read_integers(reader: BitReader, spec: TensorSpec) -> IntegerCode:
    reader.context = f"the values of integer tensor {spec.name!r}"
    minimum = unzigzag(reader.read_delta() - 1)
    width = reader.read_delta() - 1
    if width > 64:
        raise CodeError(f"corrupted code word: integer tensor {spec.name!r} has width {width}")
    low, high = _dtype_range(spec.dtype)
    if not low <= minimum <= high:
        raise CodeError(f"corrupted code word: integer tensor {spec.name!r} is out of range")
    return IntegerCode(minimum, width, reader.read_bits(spec.numel * width))


def decode_integers(code: IntegerCode, spec: TensorSpec) -> torch.Tensor:
    """The tensor; CodeError if a value does not fit its dtype."""
    numel = spec.numel
    offsets = np.zeros(numel, dtype=np.uint64)
    if code.width:
        bits = np.frombuffer(code.packed, dtype=np.uint8)
        shifts = np.arange(code.width - 1, -1, -1, dtype=np.uint64)
        row_bytes = _CHUNK * code.width // 8
        for index, start in enumerate(range(0, numel, _CHUNK)):
            count = min(_CHUNK, numel - start)
            piece = np.unpackbits(bits[index * row_bytes : (index + 1) * row_bytes])
            piece = piece[: count * code.width].reshape(count, code.width).astype(np.uint64)
            offsets[start : start + count] = (piece << shifts).sum(axis=1, dtype=np.uint64)
    low, high = _dtype_range(spec.dtype)
    if numel and code.minimum + int(offsets.max()) > high:
        raise CodeError(f"corrupted code word: integer tensor {spec.name!r} is out of range")
    values = (offsets + np.uint64(code.minimum & _MASK64)).view(np.int64)
    return torch.from_numpy(values).to(spec.dtype).reshape(spec.shape)


def _dtype_range(dtype: torch.dtype) -> tuple[int, int]:
    if dtype == torch.bool:
        return 0, 1
    info = torch.iinfo(dtype)
    return info.min, info.max
