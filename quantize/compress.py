"""compress: trained weights → the shortest code word this format offers for a configuration.

Per group, floating values θ − θ0 are quantized to a codebook (k-means or uniform levels,
stored at the declared precision), every value takes the index of its nearest stored level, unused
levels are dropped, and the symbols are entropy coded by whichever allowed coder gives the
shortest word (range coder under a count table or a parametric law, or zstd). Integer tensors are
coded losslessly. The returned :class:`~quantize.code.Code` is parsed back from the bytes written,
so its weights (``Code.decode``) are by construction those of the word.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from .bitio import BitCounter
from .code import Code, reference_tensors
from .coders import (
    SymbolModel,
    estimated_bits,
    fit_parametric,
    range_encode,
    zstd_encode,
)
from .integers import encode_integers
from .layout import TensorSpec, spec_of, specs_from_prior_layout
from .priors import resolve_prior
from .quantizers import (
    CHUNK,
    MAX_LEVELS,
    PRECISION_BITS,
    SCHEMES,
    assign,
    kmeans_codebook,
    stored_codebook,
    symbol_dtype,
    thresholds,
    uniform_codebook,
)
from .word import (
    GROUP_MODES,
    GroupCode,
    WordContents,
    group_label,
    group_members,
    prior_fingerprint,
    write_group,
    write_word,
)

CODERS = ("auto", "range", "zstd")
_PARAMETRIC_BITS = 2 + 64  # kind bits beyond the count table's one, plus two float32


@dataclass(frozen=True)
class QuantConfig:
    """One configuration: levels per group, scheme, coder, grouping and codebook precision."""

    levels: int = 16
    scheme: str = "kmeans"
    coder: str = "auto"
    groups: str = "global"
    precision: str = "float16"

    def __post_init__(self) -> None:
        if isinstance(self.levels, bool) or not isinstance(self.levels, (int, np.integer)):
            raise ValueError(f"levels must be an int, got {self.levels!r}")
        if not 1 <= self.levels <= MAX_LEVELS:
            raise ValueError(f"levels must be in [1, {MAX_LEVELS}], got {self.levels}")
        for name, value, allowed in (
            ("scheme", self.scheme, SCHEMES),
            ("coder", self.coder, CODERS),
            ("groups", self.groups, GROUP_MODES),
            ("precision", self.precision, tuple(PRECISION_BITS)),
        ):
            if value not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {value!r}")

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "levels": int(self.levels)}


def coded_state(weights: Any, prior: Any = None) -> tuple[dict[str, torch.Tensor], Any]:
    """The tensors to code and the prior: ``weights.coded_state()`` and ``weights.prior()`` for a
    module that declares them (a Subspace), else the state dict of a module or the mapping.
    A missing prior becomes ``NoPrior()`` (θ0 = 0, layout in the word)."""
    if hasattr(weights, "coded_state"):
        state = weights.coded_state()
        if prior is None and hasattr(weights, "prior"):
            prior = weights.prior()
        prior = resolve_prior(prior)
    elif isinstance(weights, nn.Module):
        state, prior = weights.state_dict(), resolve_prior(prior)
    elif isinstance(weights, Mapping):
        state, prior = weights, resolve_prior(prior)
    else:
        raise ValueError(
            f"weights must be an nn.Module or a state dict, got {type(weights).__name__}"
        )
    out = {}
    for name, tensor in state.items():
        if not isinstance(name, str) or not isinstance(tensor, torch.Tensor):
            raise ValueError(f"the state must map names to tensors; got {name!r}: {type(tensor)}")
        out[name] = tensor.detach().cpu().contiguous()
    return out, prior


def compress(
    weights: Any,
    prior: Any = None,
    *,
    levels: int = 16,
    scheme: str = "kmeans",
    coder: str = "auto",
    groups: str = "global",
    precision: str = "float16",
    grid_index: int | None = None,
    grid_size: int = 1,
) -> Code:
    """Code ``weights`` (an nn.Module, a state dict, or a module with ``coded_state()``).

    ``prior`` supplies θ0 (coded: θ − θ0) and possibly the layout. ``grid_index`` of
    ``grid_size`` is the position of this configuration in a search grid declared before the data;
    it costs ⌈log₂ grid_size⌉ bits. Floating tensors are quantized (NaN/inf → ValueError),
    non-floating ones coded losslessly.
    """
    config = QuantConfig(levels, scheme, coder, groups, precision)
    state, prior = coded_state(weights, prior)
    return encode_state(state, prior, config, grid_index=grid_index, grid_size=grid_size)


def encode_state(
    state: Mapping[str, torch.Tensor],
    prior: Any,
    config: QuantConfig,
    *,
    grid_index: int | None = None,
    grid_size: int = 1,
    codebooks: Mapping[int, np.ndarray] | None = None,
) -> Code:
    """:func:`compress` on a prepared state. ``codebooks`` (by group index) replaces the
    quantizer's codebook for those groups (used by quantization-aware fine-tuning)."""
    grid_index = _check_grid(grid_index, grid_size)
    layout = tuple(spec_of(name, tensor) for name, tensor in state.items())
    tensors = [tensor.reshape(-1) for tensor in state.values()]
    for spec, tensor in zip(layout, tensors, strict=True):
        if spec.is_floating:
            _check_finite(tensor, f"tensor {spec.name!r}")
    prior = resolve_prior(prior)
    prior_layout = prior.layout()
    layout_from_prior = prior_layout is not None and tuple(
        specs_from_prior_layout(prior_layout)
    ) == tuple(layout)
    references = {
        name: tensor.reshape(-1) for name, tensor in reference_tensors(prior, layout).items()
    }
    for name, tensor in references.items():
        _check_finite(tensor, f"the prior's reference for {name!r}")
    codebooks = codebooks or {}
    groups = tuple(
        _encode_group(
            members,
            layout,
            tensors,
            references,
            config,
            group_label(layout, members, config.groups),
            codebooks.get(index),
        )
        for index, members in enumerate(group_members(layout, config.groups))
    )
    integers = {
        index: encode_integers(tensors[index])
        for index, spec in enumerate(layout)
        if not spec.is_floating and spec.numel > 0
    }
    contents = WordContents(
        grid_index=grid_index,
        grid_size=grid_size,
        group_mode=config.groups,
        precision=config.precision,
        layout=layout,
        layout_from_prior=layout_from_prior,
        uses_reference=bool(references),
        groups=groups,
        integers=integers,
    )
    fingerprint = prior_fingerprint(prior) if contents.uses_prior else None
    word = write_word(contents, fingerprint)
    total = sum(spec.numel for spec in layout)
    code = Code.from_bytes(word, prior, max_elements=total)
    if (code.bits + 7) // 8 != len(word):
        raise RuntimeError("internal error: the parser did not read the word that was written")
    return code.with_config(config.as_dict())


def _check_grid(grid_index: int | None, grid_size: int) -> int:
    if isinstance(grid_size, bool) or not isinstance(grid_size, int) or grid_size < 1:
        raise ValueError(f"grid_size must be an int ≥ 1, got {grid_size!r}")
    if grid_index is None:
        if grid_size != 1:
            raise ValueError("grid_index is required when grid_size > 1")
        return 0
    if isinstance(grid_index, bool) or not isinstance(grid_index, int):
        raise ValueError(f"grid_index must be an int, got {grid_index!r}")
    if not 0 <= grid_index < grid_size:
        raise ValueError(f"grid_index must be in [0, {grid_size}), got {grid_index}")
    return grid_index


def _check_finite(flat: torch.Tensor, what: str) -> None:
    for start in range(0, flat.numel(), CHUNK):
        if not bool(torch.isfinite(flat[start : start + CHUNK]).all()):
            raise ValueError(f"{what} has NaN or infinite values")


def _residual_chunks(
    flat: torch.Tensor, reference: torch.Tensor | None, work: torch.dtype
) -> Iterator[np.ndarray]:
    """θ − θ0 in the work dtype, chunk by chunk (views of θ when no arithmetic is needed)."""
    for start in range(0, flat.numel(), CHUNK):
        values = flat[start : start + CHUNK].to(work)
        if reference is not None:
            values = values - reference[start : start + CHUNK].to(work)
        yield values.numpy()


def _encode_group(
    members: tuple[int, ...],
    layout: tuple[TensorSpec, ...],
    tensors: list[torch.Tensor],
    references: Mapping[str, torch.Tensor],
    config: QuantConfig,
    label: str,
    fixed_codebook: np.ndarray | None,
) -> GroupCode:
    work = (
        torch.float64 if any(layout[i].dtype == torch.float64 for i in members) else torch.float32
    )

    def residuals(index: int) -> Iterator[np.ndarray]:
        return _residual_chunks(tensors[index], references.get(layout[index].name), work)

    numel = sum(layout[i].numel for i in members)
    if fixed_codebook is not None:
        centroids = np.asarray(fixed_codebook, dtype=np.float64)
    elif config.scheme == "kmeans":
        centroids = _kmeans_centroids(members, residuals, numel, work, config.levels, label)
    else:
        chunks = [(float(c.min()), float(c.max())) for i in members for c in residuals(i)]
        low, high = min(c[0] for c in chunks), max(c[1] for c in chunks)
        _check_range(low, high, label)
        centroids = uniform_codebook(low, high, config.levels)
    codebook = stored_codebook(centroids, config.precision, label)
    cuts = thresholds(codebook, _numpy_dtype(work))
    dtype = symbol_dtype(len(codebook))
    symbols = []
    for index in members:
        out = np.empty(layout[index].numel, dtype=dtype)
        start = 0
        for chunk in residuals(index):
            if not np.isfinite(chunk).all():
                raise ValueError(f"θ − θ0 overflows for tensor {layout[index].name!r}")
            out[start : start + chunk.shape[0]] = assign(chunk, cuts, dtype)
            start += chunk.shape[0]
        symbols.append(out)
    counts = sum(np.bincount(s, minlength=len(codebook)) for s in symbols)
    return code_group(members, numel, codebook, counts, symbols, config)


def code_group(
    members: tuple[int, ...],
    numel: int,
    codebook: np.ndarray,
    counts: np.ndarray,
    symbols: list[np.ndarray],
    config: QuantConfig,
) -> GroupCode:
    """A group's code from its stored codebook, symbol counts and symbols (one array per member):
    levels no value chose are dropped (renumbering the symbols), then the shortest allowed
    coding of the symbols is chosen."""
    used = counts > 0
    if not used.all():
        renumber = (np.cumsum(used) - 1).astype(symbol_dtype(int(used.sum())))
        symbols = [_renumbered(s, renumber) for s in symbols]
        codebook, counts = codebook[used], counts[used]
    if len(codebook) == 1:
        return GroupCode(members, numel, codebook, "constant")
    # The allowed coding with the fewest bits (ties: the earlier option).
    size = len(codebook)
    options: list[tuple[int, GroupCode]] = []

    def add(coder: str, model: SymbolModel | None, payload: bytes) -> None:
        group = GroupCode(members, numel, codebook, coder, model, payload)
        options.append((_group_bits(group, config.precision), group))

    if config.coder in ("auto", "range"):
        table = SymbolModel("counts", size, counts=counts.astype(np.int64))
        add("range", table, range_encode(symbols, table))
        table_bits = options[0][0]
        for kind in ("laplace", "gaussian"):
            law = fit_parametric(kind, counts)
            # encode only when the law might win: a whole-model payload pass is not free
            if estimated_bits(law, counts) + _PARAMETRIC_BITS < table_bits:
                add("range", law, range_encode(symbols, law))
    if config.coder in ("auto", "zstd"):
        add("zstd", None, zstd_encode(symbols, numel, symbol_dtype(size)))
    return min(options, key=lambda option: option[0])[1]


def _renumbered(symbols: np.ndarray, renumber: np.ndarray) -> np.ndarray:
    # chunk by chunk: indexing casts the indices to intp, 8 bytes per symbol at once otherwise
    out = np.empty(symbols.shape[0], dtype=renumber.dtype)
    for start in range(0, symbols.shape[0], CHUNK):
        out[start : start + CHUNK] = renumber[symbols[start : start + CHUNK]]
    return out


def _numpy_dtype(dtype: torch.dtype) -> np.dtype:
    return np.dtype(np.float64) if dtype == torch.float64 else np.dtype(np.float32)


def _check_range(low: float, high: float, label: str) -> None:
    if not (np.isfinite(low) and np.isfinite(high)):
        raise ValueError(f"θ − θ0 overflows in group {label!r}")


def _kmeans_centroids(
    members: tuple[int, ...],
    residuals: Callable[[int], Iterator[np.ndarray]],
    numel: int,
    work: torch.dtype,
    levels: int,
    label: str,
) -> np.ndarray:
    """k-means on all residuals of the group, gathered once into one sorted buffer."""
    buffer = np.empty(numel, dtype=_numpy_dtype(work))
    start = 0
    for index in members:
        for chunk in residuals(index):
            buffer[start : start + chunk.shape[0]] = chunk
            start += chunk.shape[0]
    buffer.sort()
    _check_range(float(buffer[0]), float(buffer[-1]), label)
    return kmeans_codebook(buffer, levels)


def _group_bits(group: GroupCode, precision: str) -> int:
    counter = BitCounter()
    write_group(counter, group, precision)
    return counter.bits
