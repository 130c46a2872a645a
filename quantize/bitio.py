"""Bit-level writer and reader (most significant bit first) with Elias-γ and Elias-δ codes.

Elias (1975), "Universal codeword sets and representations of the integers", IEEE Trans. IT 21(2):
- γ(x), x ≥ 1: ⌊log₂ x⌋ zero bits, then x in binary; length 2⌊log₂ x⌋ + 1.
- δ(x), x ≥ 1: γ(L) with L = ⌊log₂ x⌋ + 1, then the L − 1 low bits of x; length L + 2⌊log₂ L⌋.
Both are prefix-free, so a sequence of such fields is self-delimiting.

Every integer field of a code word is below 2**MAX_INT_BITS; the reader refuses longer codes, so a
corrupted length field can never make it read or allocate more than the word holds.
"""

from __future__ import annotations

import numpy as np

from .errors import CodeError

MAX_INT_BITS = 64


def gamma_bits(value: int) -> int:
    """Length in bits of the Elias-γ code of ``value`` (≥ 1)."""
    return 2 * (value.bit_length() - 1) + 1


def delta_bits(value: int) -> int:
    """Length in bits of the Elias-δ code of ``value`` (≥ 1)."""
    length = value.bit_length()
    return length - 1 + gamma_bits(length)


def zigzag(value: int) -> int:
    """Map a signed integer to a non-negative one: 0, -1, 1, -2, … → 0, 1, 2, 3, …"""
    return 2 * value if value >= 0 else -2 * value - 1


def unzigzag(value: int) -> int:
    """Inverse of :func:`zigzag`."""
    return value // 2 if value % 2 == 0 else -(value + 1) // 2


def ceil_log2(count: int) -> int:
    """⌈log₂ count⌉ for count ≥ 1: the bits of a fixed-width index into ``count`` choices."""
    return (count - 1).bit_length()


class BitCounter:
    """A writer that only counts bits; same interface as :class:`BitWriter`."""

    def __init__(self) -> None:
        self.bits = 0

    def write(self, value: int, nbits: int) -> None:
        if nbits < 0 or value < 0 or value >> nbits:
            raise ValueError(f"value {value} does not fit in {nbits} bits")
        self.bits += nbits

    def write_gamma(self, value: int) -> None:
        _check_positive(value)
        self.bits += gamma_bits(value)

    def write_delta(self, value: int) -> None:
        _check_positive(value)
        self.bits += delta_bits(value)

    def write_bits(self, data: bytes | np.ndarray, nbits: int) -> None:
        if nbits > 8 * len(data):
            raise ValueError(f"{nbits} bits requested from {len(data)} bytes")
        self.bits += nbits


class BitWriter(BitCounter):
    """Appends bits MSB first; :meth:`getvalue` pads the last byte with zero bits."""

    def __init__(self) -> None:
        super().__init__()
        self._chunks: list[bytes] = []
        self._acc = 0  # pending bits not yet forming a whole byte
        self._nacc = 0

    def write(self, value: int, nbits: int) -> None:
        super().write(value, nbits)
        self._acc = (self._acc << nbits) | value
        self._nacc += nbits
        whole = self._nacc // 8
        if whole:
            rest = self._nacc - 8 * whole
            self._chunks.append((self._acc >> rest).to_bytes(whole, "big"))
            self._acc &= (1 << rest) - 1
            self._nacc = rest

    def write_gamma(self, value: int) -> None:
        _check_positive(value)
        self.write(value, gamma_bits(value))  # the leading zeros come from the width

    def write_delta(self, value: int) -> None:
        _check_positive(value)
        length = value.bit_length()
        self.write_gamma(length)
        self.write(value & ((1 << (length - 1)) - 1), length - 1)

    def write_bits(self, data: bytes | np.ndarray, nbits: int) -> None:
        """Append the first ``nbits`` bits of ``data`` (MSB first), at any bit offset."""
        if nbits > 8 * len(data):
            raise ValueError(f"{nbits} bits requested from {len(data)} bytes")
        src = np.frombuffer(data, dtype=np.uint8, count=(nbits + 7) // 8)
        whole, rest = divmod(nbits, 8)
        if whole:
            head = src[:whole]
            if self._nacc == 0:
                self._chunks.append(head.tobytes())
            else:
                shift = self._nacc
                out = head >> shift
                out[0] |= (self._acc << (8 - shift)) & 0xFF
                out[1:] |= head[:-1] << (8 - shift)
                self._chunks.append(out.tobytes())
                self._acc = int(head[-1]) & ((1 << shift) - 1)
            self.bits += 8 * whole
        if rest:
            self.write(int(src[whole]) >> (8 - rest), rest)

    def getvalue(self) -> bytes:
        """The bits written so far, zero-padded to whole bytes."""
        tail = b""
        if self._nacc:
            tail = bytes([(self._acc << (8 - self._nacc)) & 0xFF])
        return b"".join([*self._chunks, tail])  # one copy of the bits, not two


class BitReader:
    """Reads a bit string MSB first. Every read checks the bits left before touching memory.

    ``context`` names what is being read; it appears in the error message when the word ends early.
    """

    def __init__(self, data: bytes) -> None:
        self._data = bytes(data)
        self.total_bits = 8 * len(self._data)
        self.pos = 0
        self.context = "the code word"

    @property
    def remaining(self) -> int:
        return self.total_bits - self.pos

    def need(self, nbits: int) -> None:
        """CodeError unless ``nbits`` more bits are left."""
        if nbits > self.remaining:
            raise CodeError(
                f"code word truncated: needed {nbits - self.remaining} more bits reading "
                f"{self.context}"
            )

    def _peek(self, nbits: int) -> int:
        if nbits == 0:
            return 0
        start, end = self.pos // 8, (self.pos + nbits + 7) // 8
        window = int.from_bytes(self._data[start:end], "big")
        return (window >> (8 * end - self.pos - nbits)) & ((1 << nbits) - 1)

    def read(self, nbits: int) -> int:
        self.need(nbits)
        value = self._peek(nbits)
        self.pos += nbits
        return value

    def read_gamma(self) -> int:
        window = min(self.remaining, MAX_INT_BITS + 1)
        head = self._peek(window)
        if head == 0:
            if window <= MAX_INT_BITS:
                self.need(window + 1)
            raise CodeError(f"corrupted code word: Elias-γ code too long reading {self.context}")
        zeros = window - head.bit_length()
        self.pos += zeros
        return self.read(zeros + 1)

    def read_delta(self) -> int:
        length = self.read_gamma()
        if length > MAX_INT_BITS:
            raise CodeError(
                f"corrupted code word: Elias-δ length {length} too large reading {self.context}"
            )
        return (1 << (length - 1)) | self.read(length - 1)

    def read_bits(self, nbits: int) -> bytes:
        """The next ``nbits`` bits as bytes, MSB first, the last byte zero-padded."""
        self.need(nbits)
        nbytes = (nbits + 7) // 8
        start, shift = divmod(self.pos, 8)
        src = np.frombuffer(self._data, dtype=np.uint8, offset=start)[: nbytes + 1]
        if shift == 0:
            out = src[:nbytes].copy()
        else:
            out = src[:nbytes] << shift
            nxt = src[1 : nbytes + 1]
            out[: len(nxt)] |= nxt >> (8 - shift)
        if nbits % 8:
            out[-1] &= (0xFF << (8 - nbits % 8)) & 0xFF
        self.pos += nbits
        return out.tobytes()

    def prefix(self, nbits: int) -> bytes:
        """The first ``nbits`` bits of the data, zero-padded to whole bytes (as a writer pads)."""
        data = bytearray(self._data[: (nbits + 7) // 8])
        if nbits % 8:
            data[-1] &= (0xFF << (8 - nbits % 8)) & 0xFF
        return bytes(data)


def _check_positive(value: int) -> None:
    if value < 1:
        raise ValueError(f"Elias codes need an integer ≥ 1, got {value}")
