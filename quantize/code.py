"""The :class:`Code` object: a parsed code word, its exact length, and the decoder of its weights.

The format of the word is in :mod:`quantize.word`. A tensor element with symbol s decodes to
(θ0 + c_s) in float32 (float64 for float64 tensors), cast to the tensor's dtype, with θ0 = 0
unless the word's reference flag is set and the prior's reference holds that tensor;
:meth:`Code.decode` is the only place where weights are reconstructed.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .coders import range_decode, zstd_decode
from .errors import CodeError
from .integers import decode_integers
from .layout import TensorSpec
from .quantizers import CHUNK, symbol_dtype
from .word import FORMAT_VERSION, GroupCode, WordContents, parse_word, prior_fingerprint

_MIN_ELEMENT_LIMIT = 1 << 26
_ELEMENTS_PER_BIT_LIMIT = 1024


class Code:
    """A parsed code word: its exact length, where the bits go, and the decoder of its weights.

    Build one with :func:`quantize.compress` or :meth:`Code.from_bytes`.
    """

    def __init__(
        self,
        contents: WordContents,
        word: bytes,
        bits: int,
        breakdown: dict[str, int],
        prior: Any = None,
        config: Mapping[str, Any] | None = None,
    ) -> None:
        self._contents = contents
        self._word = word
        self._bits = bits
        self._breakdown = dict(breakdown)
        self._prior = prior if contents.uses_prior else None
        self._fingerprint = prior_fingerprint(prior) if contents.uses_prior else None
        known = {"groups": contents.group_mode, "precision": contents.precision}
        self._config = {"levels": None, "scheme": None, "coder": None, **known, **(config or {})}

    # -- construction --
    @classmethod
    def from_bytes(cls, data: bytes, prior: Any = None, *, max_elements: int | None = None) -> Code:
        """Parse a code word. Bytes after its end are ignored.

        ``prior`` is required when the word was made with one (its layout or reference weights).
        ``max_elements`` bounds the number of tensor elements the word may declare before anything
        is allocated; the default is max(2**26, 1024 × the bits given).
        """
        data = bytes(data)
        if max_elements is None:
            max_elements = max(_MIN_ELEMENT_LIMIT, _ELEMENTS_PER_BIT_LIMIT * 8 * len(data))
        contents, bits, breakdown = parse_word(data, prior, max_elements)
        word = data[: (bits + 7) // 8]  # no copy when nothing follows the word
        padding = 0xFF >> (bits % 8) if bits % 8 else 0
        if word[-1] & padding:  # clear the padding bits after the word's last bit
            word = word[:-1] + bytes([word[-1] & ~padding & 0xFF])
        return cls(contents, word, bits, breakdown, prior)

    @classmethod
    def load(cls, path: str | Path, prior: Any = None, **kwargs: Any) -> Code:
        return cls.from_bytes(Path(path).read_bytes(), prior, **kwargs)

    def with_config(self, config: Mapping[str, Any]) -> Code:
        """The same word, remembering the configuration that produced it."""
        return Code(self._contents, self._word, self._bits, self._breakdown, self._prior, config)

    # -- properties --
    @property
    def bits(self) -> int:
        """Exact length of the code word in bits (a prefix-free code length)."""
        return self._bits

    @property
    def breakdown(self) -> dict[str, int]:
        """Bits per part of the word; the parts sum to :attr:`bits`."""
        return dict(self._breakdown)

    @property
    def num_params(self) -> int:
        """Number of tensor elements the word codes (floating and integer)."""
        return sum(spec.numel for spec in self._contents.layout)

    @property
    def bits_per_param(self) -> float:
        """bits / num_params (infinite for a word that codes no elements)."""
        return self._bits / self.num_params if self.num_params else float("inf")

    @property
    def config(self) -> dict[str, Any]:
        """levels, scheme, coder, groups, precision (None where the word alone cannot tell)."""
        return dict(self._config)

    @property
    def grid_index(self) -> int:
        return self._contents.grid_index

    @property
    def grid_size(self) -> int:
        return self._contents.grid_size

    @property
    def layout(self) -> tuple[TensorSpec, ...]:
        return self._contents.layout

    @property
    def groups(self) -> tuple[GroupCode, ...]:
        return self._contents.groups

    @property
    def contents(self) -> WordContents:
        return self._contents

    @property
    def prior(self) -> Any:
        """The prior the word depends on (None if it depends on none)."""
        return self._prior

    @property
    def prior_fingerprint(self) -> str | None:
        """Fingerprint of the prior the word depends on (None if it depends on none)."""
        return self._fingerprint

    def to_bytes(self) -> bytes:
        """The code word: :attr:`bits` bits, zero-padded to a whole byte."""
        return self._word

    def save(self, path: str | Path) -> None:
        Path(path).write_bytes(self._word)

    def describe(self) -> dict[str, Any]:
        """JSON-able summary for reports."""
        return {
            "format_version": FORMAT_VERSION,
            "bits": self.bits,
            "breakdown": self.breakdown,
            "num_params": self.num_params,
            "bits_per_param": self.bits_per_param,
            "config": self.config,
            "grid_index": self.grid_index,
            "grid_size": self.grid_size,
            "prior_fingerprint": self._fingerprint,
            "sha256": hashlib.sha256(self._word).hexdigest(),
        }

    def __repr__(self) -> str:
        return (
            f"Code(bits={self.bits}, num_params={self.num_params}, "
            f"bits_per_param={self.bits_per_param:.4g}, config={self.config})"
        )

    # -- decoding --
    def decode(self, prior: Any = None) -> dict[str, torch.Tensor]:
        """The decoded weights by name, in layout order, with their original dtypes and shapes."""
        contents = self._contents
        prior = self._resolve_prior(prior)
        references = reference_tensors(prior, contents.layout) if contents.uses_reference else {}
        flat: dict[int, torch.Tensor] = {}
        for group in contents.groups:
            for index, symbols in _group_symbols(group, contents.layout):
                spec = contents.layout[index]
                flat[index] = _dequantize(group.codebook, symbols, references.get(spec.name), spec)
        out = {}
        for index, spec in enumerate(contents.layout):
            if index in flat:
                out[spec.name] = flat[index].reshape(spec.shape)
            elif index in contents.integers:
                out[spec.name] = decode_integers(contents.integers[index], spec)
            else:
                out[spec.name] = torch.empty(spec.shape, dtype=spec.dtype)
        return out

    def _resolve_prior(self, prior: Any) -> Any:
        if not self._contents.uses_prior:
            return None
        if prior is None:
            return self._prior
        if prior_fingerprint(prior) != self._fingerprint:
            raise CodeError("the prior given to decode is not the one the code word was made with")
        return prior


def reference_tensors(prior: Any, layout: tuple[TensorSpec, ...]) -> dict[str, torch.Tensor]:
    """The prior's θ0 for the non-empty floating tensors of ``layout`` (checked against it)."""
    if prior is None:
        return {}
    reference = prior.reference()
    out = {}
    for spec in layout:
        if spec.is_floating and spec.numel > 0 and spec.name in reference:
            tensor = reference[spec.name]
            if tuple(tensor.shape) != spec.shape or tensor.dtype != spec.dtype:
                raise ValueError(
                    f"the prior's reference for {spec.name!r} is {tensor.dtype} "
                    f"{tuple(tensor.shape)}, the weights are {spec.dtype} {spec.shape}"
                )
            out[spec.name] = tensor.detach().cpu().contiguous()
    return out


def work_dtype(dtype: torch.dtype) -> torch.dtype:
    """Arithmetic dtype of quantization: float64 for float64 tensors, float32 otherwise."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _group_symbols(
    group: GroupCode, layout: tuple[TensorSpec, ...]
) -> Iterator[tuple[int, np.ndarray | None]]:
    """(layout index, symbols) for each member; symbols None for a one-level group."""
    if group.coder == "constant":
        yield from ((index, None) for index in group.members)
        return
    size = len(group.codebook)
    dtype = symbol_dtype(size)
    sizes = [layout[index].numel for index in group.members]
    if group.coder == "zstd":
        symbols = zstd_decode(group.payload, group.numel, dtype)
        if int(symbols.max()) >= size:
            raise CodeError("corrupted code word: a zstd symbol exceeds the codebook")
        offsets = np.cumsum([0] + sizes)
        for index, start, stop in zip(group.members, offsets[:-1], offsets[1:], strict=True):
            yield index, symbols[start:stop]
        return
    counts = np.zeros(size, dtype=np.int64)
    decoded = range_decode(group.payload, group.model, sizes, dtype)
    for index, symbols in zip(group.members, decoded, strict=True):
        counts += np.bincount(symbols, minlength=size)[:size]
        yield index, symbols
    if group.model.kind == "counts" and not np.array_equal(counts, group.model.counts):
        raise CodeError("corrupted code word: decoded symbols do not match the count table")


def _dequantize(
    codebook: np.ndarray,
    symbols: np.ndarray | None,
    reference: torch.Tensor | None,
    spec: TensorSpec,
) -> torch.Tensor:
    """θ0 + codebook[symbols] in the work dtype, cast to the tensor's dtype (flat)."""
    work = work_dtype(spec.dtype)
    levels = torch.from_numpy(codebook).to(work).numpy()
    out = torch.empty(spec.numel, dtype=spec.dtype)
    reference_flat = reference.reshape(-1) if reference is not None else None
    for start in range(0, spec.numel, CHUNK):
        stop = min(start + CHUNK, spec.numel)
        if symbols is None:
            values = np.full(stop - start, levels[0])
        else:
            values = levels[symbols[start:stop]]
        if reference_flat is not None:
            values += reference_flat[start:stop].to(work).numpy()
        out[start:stop] = torch.from_numpy(values)
    return out
