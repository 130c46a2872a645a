"""The code word format (version 1): its contents, writer and parser.

The word, MSB first (γ, δ: Elias codes, see :mod:`quantize.bitio`):

==================  ================================================================================
header              γ(version = 1) · γ(grid size G) · group mode (1 bit: 0 one global group,
                    1 one group per tensor) · codebook precision (2 bits: 0 float16, 1 bfloat16,
                    2 float32) · reference flag (1 bit: differences from the prior's θ0)
config_choice       index of the configuration in the search grid, ⌈log₂ G⌉ bits (none if G = 1)
layout              1 bit: 1 = the prior's layout; else the layout (:mod:`quantize.layout`)
per group           groups: every non-empty floating tensor in layout order (global), or each one
  codebooks         δ(k), then k values at the precision, strictly increasing
  (k ≥ 2 only)
  coder_choice      1 bit: 0 range coder, 1 zstd
  symbol_model      range coder only: '0' count table, δ(c_i) for i < k − 1 (the last count is
                    n − Σ); '10' Laplace / '11' Gaussian, location and scale as float32
  payload_lengths   δ(words + 1) for the range coder's 32-bit words; δ(bytes + 1) for zstd
  payload           the words or the zstd frame (:mod:`quantize.coders`)
integers            each non-empty non-floating tensor, losslessly (:mod:`quantize.integers`)
checksum            CRC-32 (ISO-HDLC, as zlib.crc32) of the prior's fingerprint (only when the
                    word uses the prior) followed by all bits before it, zero-padded to bytes
==================  ================================================================================

Every field is self-delimiting, so the word is a prefix-free code and ``Code.bits`` (the bits
the parser reads) is its exact length; trailing bytes are never read. A tensor element with
symbol s decodes to (θ0 + c_s) in float32 (float64 for float64 tensors), cast to its dtype, with
θ0 = 0 unless the reference flag is set and the prior's reference holds that tensor.
:meth:`quantize.code.Code.decode` is the only place where weights are reconstructed.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .bitio import BitCounter, BitReader, BitWriter, ceil_log2
from .coders import SymbolModel
from .errors import CodeError
from .integers import IntegerCode, read_integers, write_integers
from .layout import TensorSpec, check_size, read_layout, specs_from_prior_layout, write_layout
from .quantizers import (
    MAX_LEVELS,
    PRECISION_BITS,
    bits_to_precision,
    precision_to_bits,
)

FORMAT_VERSION = 1
PRECISION_CODES = {"float16": 0, "bfloat16": 1, "float32": 2}
GROUP_MODES = ("global", "tensor")
PARTS = (
    "header",
    "config_choice",
    "layout",
    "codebooks",
    "coder_choice",
    "symbol_model",
    "payload_lengths",
    "payload",
    "integers",
    "checksum",
)
CHECKSUM_BITS = 32


@dataclass(frozen=True)
class GroupCode:
    """One quantization group: its codebook and its entropy-coded symbols."""

    members: tuple[int, ...]  # indices into the layout
    numel: int
    codebook: np.ndarray  # float64, strictly increasing, exactly representable at the precision
    coder: str  # "constant" (k = 1: no symbols), "range" or "zstd"
    model: SymbolModel | None = None  # range coder only
    payload: bytes = b""


@dataclass(frozen=True)
class WordContents:
    """Everything a code word holds, in decoded form."""

    grid_index: int
    grid_size: int
    group_mode: str
    precision: str
    layout: tuple[TensorSpec, ...]
    layout_from_prior: bool
    uses_reference: bool
    groups: tuple[GroupCode, ...]
    integers: Mapping[int, IntegerCode] = field(default_factory=dict)  # by layout index

    @property
    def uses_prior(self) -> bool:
        return self.layout_from_prior or self.uses_reference


def group_members(layout: tuple[TensorSpec, ...], mode: str) -> list[tuple[int, ...]]:
    """Layout indices of each quantization group (non-empty floating tensors only)."""
    floating = [i for i, spec in enumerate(layout) if spec.is_floating and spec.numel > 0]
    if mode == "global":
        return [tuple(floating)] if floating else []
    return [(i,) for i in floating]


def group_label(layout: tuple[TensorSpec, ...], members: tuple[int, ...], mode: str) -> str:
    return "global" if mode == "global" else layout[members[0]].name


def prior_fingerprint(prior: Any) -> str:
    fingerprint = prior.fingerprint()
    if not isinstance(fingerprint, str):
        raise ValueError("prior.fingerprint() must return a string")
    return fingerprint


# --- writing ---------------------------------------------------------------------------------


def write_word(contents: WordContents, fingerprint: str | None) -> bytes:
    """Serialise ``contents``; ``fingerprint`` is the prior's, required iff the word uses it."""
    if contents.uses_prior and fingerprint is None:
        raise ValueError("a word that uses the prior needs the prior's fingerprint")
    writer = BitWriter()
    write_sections(writer, contents)
    return finish_word(writer, fingerprint if contents.uses_prior else None)


def write_sections(writer: BitCounter, contents: WordContents) -> None:
    """All sections before the checksum (also used with a BitCounter to measure them)."""
    write_head(writer, contents)
    for group in contents.groups:
        write_group(writer, group, contents.precision)
    write_integer_section(writer, contents)


def write_head(writer: BitCounter, contents: WordContents) -> None:
    """The sections before the groups: header, config choice, layout (``contents.groups`` and
    ``contents.integers`` are not read, so a streaming writer can pass them empty)."""
    writer.write_gamma(FORMAT_VERSION)
    writer.write_gamma(contents.grid_size)
    writer.write(GROUP_MODES.index(contents.group_mode), 1)
    writer.write(PRECISION_CODES[contents.precision], 2)
    writer.write(int(contents.uses_reference), 1)
    writer.write(contents.grid_index, ceil_log2(contents.grid_size))
    writer.write(int(contents.layout_from_prior), 1)
    if not contents.layout_from_prior:
        write_layout(writer, contents.layout)


def write_integer_section(writer: BitCounter, contents: WordContents) -> None:
    """The lossless codes of the non-empty non-floating tensors, in layout order."""
    for index, spec in enumerate(contents.layout):
        if not spec.is_floating and spec.numel > 0:
            write_integers(writer, contents.integers[index], spec.numel)


def finish_word(writer: BitWriter, fingerprint: str | None) -> bytes:
    """Append the checksum to the sections written so far and return the word (``fingerprint``:
    the prior's, when the word uses it)."""
    writer.write(_checksum(fingerprint, writer.getvalue()), CHECKSUM_BITS)
    return writer.getvalue()


def write_group(writer: BitCounter, group: GroupCode, precision: str) -> None:
    bits = PRECISION_BITS[precision]
    writer.write_delta(len(group.codebook))
    for pattern in precision_to_bits(group.codebook, precision):
        writer.write(pattern, bits)
    if group.coder == "constant":
        return
    writer.write(int(group.coder == "zstd"), 1)
    if group.coder == "range":
        model = group.model
        if model.kind == "counts":
            writer.write(0, 1)
            for count in model.counts[:-1].tolist():
                writer.write_delta(count)
        else:
            writer.write(0b10 if model.kind == "laplace" else 0b11, 2)
            for value in (model.loc, model.scale):
                writer.write(int(np.array(value, dtype=np.float32).view(np.uint32)), 32)
        nwords = len(group.payload) // 4
        writer.write_delta(nwords + 1)
        writer.write_bits(group.payload, 32 * nwords)
    else:
        writer.write_delta(len(group.payload) + 1)
        writer.write_bits(group.payload, 8 * len(group.payload))


def _checksum(fingerprint: str | None, prefix: bytes | memoryview) -> int:
    crc = zlib.crc32(fingerprint.encode("utf-8")) if fingerprint is not None else 0
    return zlib.crc32(prefix, crc)


def _prefix_checksum(fingerprint: str | None, data: bytes, nbits: int) -> int:
    """:func:`_checksum` of the first ``nbits`` bits of ``data``, zero-padded to bytes, without
    copying them (a word can hold gigabytes of payload)."""
    whole, rest = divmod(nbits, 8)
    crc = _checksum(fingerprint, memoryview(data)[:whole])
    if rest:
        crc = zlib.crc32(bytes([data[whole] & (0xFF << (8 - rest)) & 0xFF]), crc)
    return crc


# --- parsing ---------------------------------------------------------------------------------


class _Parser:
    """Reads a word section by section, charging every bit read to a part of the breakdown."""

    def __init__(self, data: bytes, prior: Any, max_elements: int) -> None:
        self.data = data
        self.reader = BitReader(data)
        self.prior = prior
        self.max_elements = max_elements
        self.breakdown = dict.fromkeys(PARTS, 0)
        self._mark = 0

    def charge(self, part: str) -> None:
        self.breakdown[part] += self.reader.pos - self._mark
        self._mark = self.reader.pos

    def parse(self) -> WordContents:
        r = self.reader
        r.context = "the header"
        version = r.read_gamma()
        if version != FORMAT_VERSION:
            raise CodeError(f"unsupported code word format version {version}")
        grid_size = r.read_gamma()
        group_mode = GROUP_MODES[r.read(1)]
        precision_code = r.read(2)
        if precision_code not in PRECISION_CODES.values():
            raise CodeError(f"corrupted code word: unknown precision code {precision_code}")
        precision = list(PRECISION_CODES)[precision_code]
        uses_reference = bool(r.read(1))
        self.charge("header")
        r.context = "the grid index"
        grid_index = r.read(ceil_log2(grid_size))
        if grid_index >= grid_size:
            raise CodeError(f"corrupted code word: grid index {grid_index} ≥ grid size {grid_size}")
        self.charge("config_choice")
        r.context = "the layout"
        layout_from_prior = bool(r.read(1))
        if (layout_from_prior or uses_reference) and self.prior is None:
            raise CodeError(
                "this code word was made with a prior (its layout or reference weights); "
                "pass the same prior to decode it"
            )
        layout = tuple(self._prior_layout() if layout_from_prior else self._read_layout())
        self.charge("layout")
        groups = tuple(
            self._read_group(layout, members, group_mode, precision)
            for members in group_members(layout, group_mode)
        )
        integers = {}
        for index, spec in enumerate(layout):
            if not spec.is_floating and spec.numel > 0:
                integers[index] = read_integers(r, spec)
        self.charge("integers")
        contents = WordContents(
            grid_index,
            grid_size,
            group_mode,
            precision,
            layout,
            layout_from_prior,
            uses_reference,
            groups,
            integers,
        )
        fingerprint = prior_fingerprint(self.prior) if contents.uses_prior else None
        expected = _prefix_checksum(fingerprint, self.data, r.pos)
        r.context = "the checksum"
        if r.read(CHECKSUM_BITS) != expected:
            raise CodeError(
                "checksum mismatch: the code word is corrupted"
                + (" or the prior is not the one it was made with" if fingerprint else "")
            )
        self.charge("checksum")
        return contents

    def _prior_layout(self) -> list[TensorSpec]:
        entries = self.prior.layout()
        if entries is None:
            raise CodeError("this code word takes its layout from the prior, which has none")
        specs = specs_from_prior_layout(entries)
        check_size(specs, self.max_elements)
        return specs

    def _read_layout(self) -> list[TensorSpec]:
        return read_layout(self.reader, self.max_elements)

    def _read_group(
        self, layout: tuple[TensorSpec, ...], members: tuple[int, ...], mode: str, precision: str
    ) -> GroupCode:
        r = self.reader
        label = group_label(layout, members, mode)
        numel = sum(layout[i].numel for i in members)
        r.context = f"the codebook of group {label!r}"
        size = r.read_delta()
        if size > min(numel, MAX_LEVELS):
            raise CodeError(f"corrupted code word: group {label!r} declares {size} levels")
        bits = PRECISION_BITS[precision]
        r.need(size * bits)
        codebook = bits_to_precision([r.read(bits) for _ in range(size)], precision)
        if not (np.isfinite(codebook).all() and (np.diff(codebook) > 0).all()):
            raise CodeError(f"corrupted code word: the codebook of group {label!r} is invalid")
        self.charge("codebooks")
        if size == 1:
            return GroupCode(members, numel, codebook, "constant")
        r.context = f"the coder choice of group {label!r}"
        coder = "zstd" if r.read(1) else "range"
        self.charge("coder_choice")
        model = None
        if coder == "range":
            r.context = f"the symbol model of group {label!r}"
            model = self._read_model(size, numel, label)
            self.charge("symbol_model")
        r.context = f"the payload of group {label!r}"
        length = r.read_delta() - 1
        self.charge("payload_lengths")
        payload = r.read_bits(32 * length if coder == "range" else 8 * length)
        self.charge("payload")
        return GroupCode(members, numel, codebook, coder, model, payload)

    def _read_model(self, size: int, numel: int, label: str) -> SymbolModel:
        r = self.reader
        if r.read(1) == 0:
            counts = [r.read_delta() for _ in range(size - 1)]
            last = numel - sum(counts)
            if last < 1:
                raise CodeError(
                    f"corrupted code word: the counts of group {label!r} exceed {numel}"
                )
            return SymbolModel("counts", size, counts=np.array(counts + [last], dtype=np.int64))
        kind = "gaussian" if r.read(1) else "laplace"
        loc, scale = (
            float(np.array(r.read(32), dtype=np.uint32).view(np.float32)) for _ in range(2)
        )
        if not (np.isfinite(loc) and np.isfinite(scale) and scale > 0):
            raise CodeError(f"corrupted code word: invalid {kind} model of group {label!r}")
        return SymbolModel(kind, size, loc=loc, scale=scale)


def parse_word(
    data: bytes, prior: Any, max_elements: int
) -> tuple[WordContents, int, dict[str, int]]:
    """Parse a word: its contents, its exact length in bits, and the bits of each part.

    Raises CodeError for a truncated, corrupted or inconsistent word, or a missing prior.
    """
    parser = _Parser(data, prior, max_elements)
    contents = parser.parse()
    return contents, parser.reader.pos, parser.breakdown
