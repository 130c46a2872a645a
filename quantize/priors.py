"""Priors: everything fixed before the data, which the code word never pays for.

A prior fixes the reference weights θ0 (the code word describes θ − θ0) and, optionally, the
layout of the coded state. Every prior has a `fingerprint()`: a sha256 hex digest of what
defines it, computed from a canonical byte encoding (never from pickles or object ids), so a
report can name the prior and a reader can check it.

Canonical encoding (version ``bounds.fingerprint/1``). A *field* is an 8-byte little-endian
unsigned length followed by that many bytes. A tensor record is four fields: the name (UTF-8),
the dtype string (``str(tensor.dtype)``, e.g. ``torch.float32``), the shape as compact JSON
(``[3,4]``; ``[]`` for a scalar) and the raw element bytes in C-contiguous order, little-endian
(complex numbers as their real/imaginary parts, bool as one byte). A state dict is the field
``state_dict``, the decimal count of tensors, then the tensor records sorted by name.
`fingerprint_state_dict` is the sha256 of the header field ``bounds.fingerprint/1`` followed by
that state-dict encoding.
"""

from __future__ import annotations

import functools
import hashlib
import json
import struct
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn

FINGERPRINT_VERSION = "bounds.fingerprint/1"

Layout = list[tuple[str, tuple[int, ...], torch.dtype]]


@runtime_checkable
class Prior(Protocol):
    """What the codec needs from a prior."""

    def fingerprint(self) -> str:
        """sha256 hex digest of everything that defines the prior."""
        ...

    def reference(self) -> Mapping[str, torch.Tensor]:
        """Reference weights θ0 by tensor name (names absent here have reference 0)."""
        ...

    def layout(self) -> Layout | None:
        """Names, shapes and dtypes of the coded state if the prior fixes them, else None."""
        ...

    def describe(self) -> dict[str, Any]:
        """JSON-able description (kind, parameters, fingerprint) for reports."""
        ...


def _tensor_bytes(tensor: torch.Tensor) -> memoryview:
    """Raw little-endian bytes of a tensor's elements in C-contiguous order."""
    if tensor.layout != torch.strided or tensor.is_quantized or tensor.device.type == "meta":
        raise ValueError(
            f"cannot fingerprint a tensor with layout {tensor.layout}, "
            f"quantized={tensor.is_quantized}, device {tensor.device}: "
            "only dense strided tensors with data are supported"
        )
    flat = tensor.detach().cpu().resolve_conj().resolve_neg().contiguous().reshape(-1)
    if flat.is_complex():
        flat = torch.view_as_real(flat).reshape(-1)
    element_size = flat.element_size()
    raw = flat.view(torch.uint8)
    if sys.byteorder == "big" and element_size > 1:
        raw = raw.reshape(-1, element_size).flip(1).contiguous().reshape(-1)
    return memoryview(raw.numpy())


class Fingerprinter:
    """Incremental sha256 over the canonical field encoding described in the module docstring."""

    def __init__(self, header: str = FINGERPRINT_VERSION) -> None:
        self._hash = hashlib.sha256()
        self.add_str(header)

    def _add_field(self, data: bytes | memoryview) -> None:
        self._hash.update(struct.pack("<Q", len(data) if isinstance(data, bytes) else data.nbytes))
        self._hash.update(data)

    def add_str(self, text: str) -> None:
        """Add one UTF-8 text field."""
        self._add_field(text.encode("utf-8"))

    def add_json(self, value: Any) -> None:
        """Add one field holding `value` as compact JSON with sorted keys."""
        self.add_str(json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=False))

    def add_tensor(self, name: str, tensor: torch.Tensor) -> None:
        """Add a tensor record: name, dtype, shape, raw little-endian bytes."""
        self.add_str(name)
        self.add_str(str(tensor.dtype))
        self.add_json(list(tensor.shape))
        self._add_field(_tensor_bytes(tensor))

    def add_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        """Add a state dict: the field ``state_dict``, the count, then records sorted by name."""
        _check_state_dict(state)
        self.add_str("state_dict")
        self.add_str(str(len(state)))
        for name in sorted(state):
            self.add_tensor(name, state[name])

    def add_layout(self, layout: Iterable[tuple[str, tuple[int, ...], torch.dtype]]) -> None:
        """Add a layout (order kept: the order is part of the layout) as one JSON field."""
        self.add_json([[name, list(shape), str(dtype)] for name, shape, dtype in layout])

    def hexdigest(self) -> str:
        return self._hash.hexdigest()


def _check_state_dict(state: Mapping[str, torch.Tensor]) -> None:
    if not isinstance(state, Mapping):
        raise ValueError(f"expected a mapping from names to tensors, got {type(state).__name__}")
    bad = [str(k) for k, v in state.items() if not isinstance(k, str) or not torch.is_tensor(v)]
    if bad:
        raise ValueError(f"state dict entries must be str -> torch.Tensor; offending keys: {bad}")


def fingerprint_state_dict(state: Mapping[str, torch.Tensor]) -> str:
    """sha256 hex digest of a state dict in the canonical encoding (module docstring)."""
    fingerprinter = Fingerprinter()
    fingerprinter.add_state_dict(state)
    return fingerprinter.hexdigest()


def state_layout(state: Mapping[str, torch.Tensor]) -> Layout:
    """The (name, shape, dtype) triples of a state dict, in its own order."""
    _check_state_dict(state)
    return [(name, tuple(tensor.shape), tensor.dtype) for name, tensor in state.items()]


def describe_callable(function: Callable[..., Any]) -> str:
    """A stable text naming a callable: ``module:qualname``; partials show their bound arguments.

    Bound arguments that are not JSON-able are named by their type only, so the text never
    depends on object ids.
    """
    if isinstance(function, functools.partial):

        def show(value: Any) -> str:
            try:
                return json.dumps(value, sort_keys=True, allow_nan=False)
            except (TypeError, ValueError):
                return f"<{type(value).__module__}.{type(value).__qualname__}>"

        args = [show(value) for value in function.args]
        kwargs = [f"{key}={show(value)}" for key, value in sorted(function.keywords.items())]
        return f"partial({', '.join([describe_callable(function.func), *args, *kwargs])})"
    module = getattr(function, "__module__", None) or type(function).__module__
    qualname = getattr(function, "__qualname__", None) or type(function).__qualname__
    return f"{module}:{qualname}"


class _StatePrior:
    """A prior given by a fixed state dict θ0 (held as a private, detached copy)."""

    kind = "state"

    def __init__(self, state: Mapping[str, torch.Tensor]) -> None:
        _check_state_dict(state)
        self._state = {name: tensor.detach().clone() for name, tensor in state.items()}
        self._cached: tuple[tuple[int, ...], str] | None = None

    def _fingerprint_fields(self, fingerprinter: Fingerprinter) -> None:
        """Add the defining fields other than the tensors (none for a plain reference)."""

    def fingerprint(self) -> str:
        # Cache keyed on the tensors' in-place version counters, so an edit is never missed.
        versions = tuple(tensor._version for tensor in self._state.values())
        if self._cached is None or self._cached[0] != versions:
            fingerprinter = Fingerprinter()
            self._fingerprint_fields(fingerprinter)
            fingerprinter.add_state_dict(self._state)
            self._cached = (versions, fingerprinter.hexdigest())
        return self._cached[1]

    def reference(self) -> Mapping[str, torch.Tensor]:
        """θ0 for the floating tensors (integer buffers are coded as they are)."""
        return MappingProxyType(
            {name: tensor for name, tensor in self._state.items() if tensor.is_floating_point()}
        )

    def layout(self) -> Layout:
        return state_layout(self._state)

    def _summary(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "num_tensors": len(self._state),
            "num_elements": sum(tensor.numel() for tensor in self._state.values()),
            "fingerprint": self.fingerprint(),
        }


class ReferencePrior(_StatePrior):
    """θ0 = a fixed state dict (e.g. a pretrained base), copied at construction.

    Its fingerprint is exactly `fingerprint_state_dict` of that state dict, so a reader can check
    it against the published base checkpoint; `name` is a label and is not hashed.
    """

    kind = "reference"

    def __init__(self, state_dict: Mapping[str, torch.Tensor], name: str | None = None) -> None:
        super().__init__(state_dict)
        self.name = name

    def describe(self) -> dict[str, Any]:
        return {**self._summary(), "name": self.name}


class InitPrior(_StatePrior):
    """θ0 = the state a model factory produces right after ``torch.manual_seed(seed)``.

    The factory runs inside ``torch.random.fork_rng`` so the caller's RNG state is untouched.
    It may return an ``nn.Module`` (its ``state_dict()`` is taken) or a state dict. The
    fingerprint hashes the seed, `describe_callable(factory)` and the resulting tensors.
    """

    kind = "init"

    def __init__(
        self,
        factory: Callable[[], nn.Module | Mapping[str, torch.Tensor]],
        seed: int,
    ) -> None:
        if not callable(factory):
            raise ValueError(f"factory must be callable, got {type(factory).__name__}")
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ValueError(f"seed must be a non-negative int, got {seed!r}")
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            produced = factory()
        state = produced.state_dict() if isinstance(produced, nn.Module) else produced
        super().__init__(state)
        self.seed = seed
        self.factory = describe_callable(factory)

    def _fingerprint_fields(self, fingerprinter: Fingerprinter) -> None:
        fingerprinter.add_str(self.kind)
        fingerprinter.add_json({"seed": self.seed, "factory": self.factory})

    def describe(self) -> dict[str, Any]:
        return {**self._summary(), "seed": self.seed, "factory": self.factory}


@dataclass(frozen=True)
class FixedPrior:
    """A prior that fixes the layout of the coded tensors and codes them as they are (θ0 = 0):
    what a wrapper such as a subspace or a frozen base declares, its fixed parts (θ0 and P,
    the base tensors) summed up in the fingerprint."""

    fingerprint_hex: str
    coded_layout: Layout
    description: dict[str, Any] = field(default_factory=dict)

    def fingerprint(self) -> str:
        return self.fingerprint_hex

    def reference(self) -> Mapping[str, torch.Tensor]:
        return {}

    def layout(self) -> Layout:
        return list(self.coded_layout)

    def describe(self) -> dict[str, Any]:
        return {**self.description, "fingerprint": self.fingerprint_hex}


class NoPrior:
    """θ0 = 0 and no fixed layout (the code word carries the layout)."""

    kind = "none"

    def fingerprint(self) -> str:
        fingerprinter = Fingerprinter()
        fingerprinter.add_str(self.kind)
        return fingerprinter.hexdigest()

    def reference(self) -> Mapping[str, torch.Tensor]:
        return MappingProxyType({})

    def layout(self) -> None:
        return None

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "fingerprint": self.fingerprint()}


def resolve_prior(prior: Prior | None) -> Prior:
    """`NoPrior()` for None; otherwise `prior`, which must have the `Prior` methods."""
    if prior is None:
        return NoPrior()
    if not isinstance(prior, Prior):
        raise ValueError(
            f"{type(prior).__name__} is not a prior: it needs fingerprint(), reference(), "
            "layout() and describe()"
        )
    return prior
