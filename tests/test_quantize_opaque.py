"""An opaque file as the code word: K is the framed zstd size, and the frame round-trips."""

import hashlib

import numpy as np
import pytest
import zstandard

from quantize import CodeError
from quantize.bitio import delta_bits
from quantize.opaque import OpaqueCode


@pytest.fixture
def packed_file(tmp_path):
    # Packed 4-bit values with a skewed distribution, like a pre-quantized checkpoint.
    rng = np.random.default_rng(0)
    nibbles = rng.choice(16, size=200_000, p=np.r_[0.5, np.full(15, 0.5 / 15)]).astype(np.uint8)
    path = tmp_path / "model.q4"
    path.write_bytes((nibbles[0::2] << 4 | nibbles[1::2]).tobytes())
    return path


def test_code_length_is_the_framed_zstd_size(packed_file):
    code = OpaqueCode.from_file(packed_file)
    raw = packed_file.read_bytes()
    assert zstandard.ZstdDecompressor().decompress(code.compressed) == raw
    assert code.bits == delta_bits(len(code.compressed) + 1) + 8 * len(code.compressed)
    assert code.breakdown == {
        "length": delta_bits(len(code.compressed) + 1),
        "payload": 8 * len(code.compressed),
    }
    assert code.bits < 8 * len(raw)  # the skew is found
    assert code.raw_size == len(raw)
    assert code.raw_sha256 == hashlib.sha256(raw).hexdigest()


def test_frame_round_trips_and_is_self_delimiting(packed_file):
    code = OpaqueCode.from_file(packed_file)
    word = code.to_bytes()
    assert len(word) == -(-code.bits // 8)
    parsed = OpaqueCode.from_bytes(word + b"trailing bytes are never read")
    assert parsed == code
    assert parsed.contents() == packed_file.read_bytes()
    assert OpaqueCode.from_file(packed_file).to_bytes() == word  # deterministic


def test_corrupted_or_missing_input(packed_file, tmp_path):
    word = OpaqueCode.from_file(packed_file).to_bytes()
    with pytest.raises(CodeError):
        OpaqueCode.from_bytes(word[: len(word) // 2])
    broken = bytearray(word)
    broken[len(word) // 2] ^= 0xFF
    with pytest.raises(CodeError):
        OpaqueCode.from_bytes(bytes(broken))
    with pytest.raises(ValueError, match="does not exist"):
        OpaqueCode.from_file(tmp_path / "missing.q4")
