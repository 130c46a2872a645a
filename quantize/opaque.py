"""Opaque code words: a pre-quantized checkpoint file taken as the model's description.

A file written by another quantizer (GPTQ/AWQ-style packed integers and scales, or any format)
is itself a description of the model, and the loader that turns it into a network is its
decoder. That loader is declared before the data, so it belongs to the prior; the word is
the file's bytes, zstd-compressed (with the frame's content checksum), in a self-delimiting
frame:

    δ(B + 1) · the B bytes of one zstd frame of the file

(δ: Elias-δ, :mod:`quantize.bitio`). The frame is prefix-free, so K = |δ(B + 1)| + 8B bits is
a prefix-free code length. Compression is deterministic (the level depends only on the size).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import zstandard

from .bitio import BitReader, BitWriter, delta_bits
from .coders import zstd_level
from .errors import CodeError

_CHUNK = 1 << 24


@dataclass(frozen=True)
class OpaqueCode:
    """A file's bytes as a code word: K = Elias-δ length prefix + 8 × compressed bytes."""

    compressed: bytes
    raw_size: int
    raw_sha256: str

    @property
    def bits(self) -> int:
        return self.breakdown["length"] + self.breakdown["payload"]

    @property
    def breakdown(self) -> dict[str, int]:
        return {"length": delta_bits(len(self.compressed) + 1), "payload": 8 * len(self.compressed)}

    @classmethod
    def from_file(cls, path: str | Path) -> OpaqueCode:
        """Compress a file in chunks (it is read once, never held whole in memory)."""
        path = Path(path)
        if not path.is_file():
            raise ValueError(f"code file {str(path)!r} does not exist or is not a file")
        size = path.stat().st_size
        # The frame's own checksum (32 bits, in K) catches a corrupted word on decoding.
        compressor = zstandard.ZstdCompressor(
            level=zstd_level(size), write_checksum=True
        ).compressobj(size=size)
        digest, parts = hashlib.sha256(), []
        with path.open("rb") as handle:
            while chunk := handle.read(_CHUNK):
                digest.update(chunk)
                parts.append(compressor.compress(chunk))
        parts.append(compressor.flush())
        return cls(b"".join(parts), size, digest.hexdigest())

    def to_bytes(self) -> bytes:
        """The framed word (zero-padded to whole bytes)."""
        writer = BitWriter()
        writer.write_delta(len(self.compressed) + 1)
        writer.write_bits(self.compressed, 8 * len(self.compressed))
        return writer.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> OpaqueCode:
        """Parse a framed word; a truncated or corrupted frame raises CodeError."""
        reader = BitReader(data)
        compressed = reader.read_bits(8 * (reader.read_delta() - 1))
        try:
            raw = zstandard.ZstdDecompressor().decompress(compressed)
        except zstandard.ZstdError as error:
            raise CodeError(f"corrupted opaque code word: {error}") from None
        return cls(compressed, len(raw), hashlib.sha256(raw).hexdigest())

    def contents(self) -> bytes:
        """The original file's bytes."""
        return zstandard.ZstdDecompressor().decompress(self.compressed)
