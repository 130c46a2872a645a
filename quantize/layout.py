"""The layout of a coded state (tensor names, shapes, dtypes) and its encoding in the code word.

In the word: δ(T + 1) for T tensors, then per tensor δ(p + 1) with p the number of leading UTF-8
bytes shared with the previous name (front coding), δ(m + 1) and the m remaining bytes of the
name, the dtype in 4 bits (:data:`DTYPE_CODES`), δ(ndim + 1) and δ(size + 1) for each dimension.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from math import prod

import torch

from .bitio import BitCounter, BitReader
from .errors import CodeError

DTYPE_CODES: dict[torch.dtype, int] = {
    torch.float32: 0,
    torch.float64: 1,
    torch.float16: 2,
    torch.bfloat16: 3,
    torch.uint8: 4,
    torch.int8: 5,
    torch.int16: 6,
    torch.int32: 7,
    torch.int64: 8,
    torch.bool: 9,
}
DTYPES_BY_CODE = {code: dtype for dtype, code in DTYPE_CODES.items()}
DTYPE_BITS = 4
MAX_NDIM = 64
MAX_TENSORS = 1 << 24


@dataclass(frozen=True)
class TensorSpec:
    """Name, shape and dtype of one coded tensor."""

    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype

    @property
    def numel(self) -> int:
        return prod(self.shape)

    @property
    def is_floating(self) -> bool:
        return self.dtype.is_floating_point


def spec_of(name: str, tensor: torch.Tensor) -> TensorSpec:
    """The spec of a tensor; ValueError for dtypes the code word cannot hold."""
    if tensor.dtype not in DTYPE_CODES:
        supported = ", ".join(str(dtype).removeprefix("torch.") for dtype in DTYPE_CODES)
        raise ValueError(f"tensor {name!r} has dtype {tensor.dtype}; supported: {supported}")
    return TensorSpec(name, tuple(int(size) for size in tensor.shape), tensor.dtype)


def specs_from_prior_layout(entries: Sequence[tuple]) -> list[TensorSpec]:
    """Convert a prior's ``layout()`` entries (name, shape, dtype) to specs."""
    specs = []
    for name, shape, dtype in entries:
        if dtype not in DTYPE_CODES:
            raise ValueError(f"the prior's layout has tensor {name!r} of unsupported dtype {dtype}")
        specs.append(TensorSpec(str(name), tuple(int(size) for size in shape), dtype))
    return specs


def write_layout(writer: BitCounter, specs: Sequence[TensorSpec]) -> None:
    writer.write_delta(len(specs) + 1)
    previous = b""
    for spec in specs:
        name = spec.name.encode("utf-8")
        shared = _shared_prefix(previous, name)
        writer.write_delta(shared + 1)
        writer.write_delta(len(name) - shared + 1)
        writer.write_bits(name[shared:], 8 * (len(name) - shared))
        writer.write(DTYPE_CODES[spec.dtype], DTYPE_BITS)
        writer.write_delta(len(spec.shape) + 1)
        for size in spec.shape:
            writer.write_delta(size + 1)
        previous = name


def read_layout(reader: BitReader, max_elements: int) -> list[TensorSpec]:
    reader.context = "the layout"
    count = reader.read_delta() - 1
    if count > MAX_TENSORS:
        raise CodeError(f"corrupted code word: the layout declares {count} tensors")
    reader.context = f"the layout ({count} tensors)"
    reader.need(7 * count)  # a tensor takes at least 7 bits
    specs: list[TensorSpec] = []
    names: set[str] = set()
    previous = b""
    total = 0
    for index in range(count):
        reader.context = f"the layout (tensor {index})"
        shared = reader.read_delta() - 1
        if shared > len(previous):
            raise CodeError(f"corrupted code word: bad name prefix in the layout (tensor {index})")
        suffix = reader.read_delta() - 1
        raw = previous[:shared] + reader.read_bits(8 * suffix)
        try:
            name = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise CodeError(f"corrupted code word: tensor {index} has a non-UTF-8 name") from None
        if name in names:
            raise CodeError(f"corrupted code word: tensor name {name!r} appears twice")
        reader.context = f"the layout of tensor {name!r}"
        dtype = DTYPES_BY_CODE.get(reader.read(DTYPE_BITS))
        if dtype is None:
            raise CodeError(f"corrupted code word: unknown dtype code for tensor {name!r}")
        ndim = reader.read_delta() - 1
        if ndim > MAX_NDIM:
            raise CodeError(f"corrupted code word: tensor {name!r} declares {ndim} dimensions")
        shape = tuple(reader.read_delta() - 1 for _ in range(ndim))
        specs.append(TensorSpec(name, shape, dtype))
        total += specs[-1].numel
        _check_total(total, max_elements)
        names.add(name)
        previous = raw
    return specs


def check_size(specs: Sequence[TensorSpec], max_elements: int) -> None:
    """CodeError when the layout holds more elements than the decoder agreed to allocate."""
    _check_total(sum(spec.numel for spec in specs), max_elements)


def _check_total(total: int, max_elements: int) -> None:
    if total > max_elements:
        raise CodeError(
            f"the code word declares {total} elements, more than the limit of {max_elements}; "
            "pass a larger max_elements to Code.from_bytes if the word is trusted"
        )


def _shared_prefix(first: bytes, second: bytes) -> int:
    length = 0
    for a, b in zip(first, second, strict=False):  # stops at the shorter name
        if a != b:
            break
        length += 1
    return length
