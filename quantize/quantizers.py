"""Scalar quantizers: codebooks (exact 1-D k-means, evenly spaced levels), their stored precision,
and the nearest-level assignment.

k-means is Lloyd's algorithm (Lloyd 1982, "Least squares quantization in PCM", IEEE Trans. IT
28(2)) run exactly on the sorted values: in one dimension every cluster of a Lloyd partition is a
contiguous run of the sorted data, split at the midpoints between consecutive centroids, so one
iteration needs only k − 1 binary searches and k range sums (block prefix sums), not a pass over
the data. Initialisation is deterministic (the (j + ½)/k quantiles); when clusters run empty the
cluster with the largest squared error is split at its mean, so the codebook has min(levels,
distinct values) entries. With at most ``levels`` distinct values the codebook is those values.

"uniform" places ``levels`` evenly spaced values from the minimum to the maximum
(c_j = min + j·(max − min)/(levels − 1); one level is the midpoint).
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch

PRECISION_BITS = {"float16": 16, "bfloat16": 16, "float32": 32}
SCHEMES = ("kmeans", "uniform")
MAX_LEVELS = 1 << 16
CHUNK = 1 << 22  # elements per vectorised pass over large arrays
_BLOCK = 64  # block length of the k-means prefix sums
_MAX_LLOYD_ITERATIONS = 1000


def symbol_dtype(levels: int) -> np.dtype:
    """The smallest unsigned integer type holding symbols 0 … levels − 1."""
    return np.dtype(np.uint8) if levels <= 256 else np.dtype(np.uint16)


# --- precision of stored codebook values -------------------------------------------------------


def round_to_precision(values: np.ndarray, precision: str) -> np.ndarray:
    """Round float64 values to the nearest value representable at ``precision`` (as float64)."""
    values = np.asarray(values, dtype=np.float64)
    with np.errstate(over="ignore"):  # overflow gives inf, which the caller reports
        if precision == "float16":
            return values.astype(np.float16).astype(np.float64)
        if precision == "float32":
            return values.astype(np.float32).astype(np.float64)
    if precision == "bfloat16":
        return torch.from_numpy(values).to(torch.bfloat16).to(torch.float64).numpy()
    raise ValueError(f"unknown precision {precision!r}; use one of {sorted(PRECISION_BITS)}")


def precision_to_bits(values: np.ndarray, precision: str) -> list[int]:
    """IEEE bit patterns of values already representable at ``precision``."""
    values = np.asarray(values, dtype=np.float64)
    if precision == "float16":
        return values.astype(np.float16).view(np.uint16).tolist()
    if precision == "float32":
        return values.astype(np.float32).view(np.uint32).tolist()
    if precision == "bfloat16":
        return (values.astype(np.float32).view(np.uint32) >> 16).tolist()
    raise ValueError(f"unknown precision {precision!r}")


def bits_to_precision(patterns: Iterable[int], precision: str) -> np.ndarray:
    """Inverse of :func:`precision_to_bits`: float64 values of IEEE bit patterns."""
    if precision == "float16":
        return np.array(list(patterns), dtype=np.uint16).view(np.float16).astype(np.float64)
    if precision == "float32":
        return np.array(list(patterns), dtype=np.uint32).view(np.float32).astype(np.float64)
    if precision == "bfloat16":
        high = np.array(list(patterns), dtype=np.uint32) << 16
        return high.view(np.float32).astype(np.float64)
    raise ValueError(f"unknown precision {precision!r}")


def stored_codebook(centroids: np.ndarray, precision: str, group: str) -> np.ndarray:
    """Sorted distinct centroids as stored at ``precision``; ValueError if one overflows it."""
    stored = np.unique(round_to_precision(centroids, precision))
    if not np.isfinite(stored).all():
        raise ValueError(
            f"codebook of group {group!r} has a value outside the {precision} range "
            f"(largest |centroid| {np.max(np.abs(centroids)):.4g}); use precision='float32'"
        )
    return stored + 0.0  # one zero: -0.0 and 0.0 are the same level


# --- nearest-level assignment ------------------------------------------------------------------


def thresholds(codebook: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Decision thresholds in ``dtype`` such that, for x of that dtype, the nearest codebook
    value (ties to the lower one) has index ``searchsorted(t, x, side="left")``.

    The float64 midpoints m are replaced by the largest value of ``dtype`` that is ≤ m, which
    makes the comparison x > m exact without casting the data to float64.
    """
    mids = (codebook[:-1] + codebook[1:]) / 2.0
    lowered = mids.astype(dtype)
    above = lowered.astype(np.float64) > mids
    lowered[above] = np.nextafter(lowered[above], dtype.type(-np.inf))
    return lowered


def assign(values: np.ndarray, cuts: np.ndarray, out_dtype: np.dtype) -> np.ndarray:
    """Index of the nearest codebook value for each element (``cuts`` from :func:`thresholds`)."""
    return np.searchsorted(cuts, values, side="left").astype(out_dtype)


# --- codebooks -----------------------------------------------------------------------------------


def uniform_codebook(minimum: float, maximum: float, levels: int) -> np.ndarray:
    """``levels`` evenly spaced values from ``minimum`` to ``maximum`` (float64)."""
    if levels == 1:
        return np.array([(minimum + maximum) / 2.0])
    return np.linspace(minimum, maximum, levels)


def kmeans_codebook(sorted_values: np.ndarray, levels: int) -> np.ndarray:
    """Centroids (float64, increasing) of exact 1-D k-means on ascending, finite values."""
    n = sorted_values.shape[0]
    if n == 0:
        raise ValueError("k-means needs at least one value")
    distinct = _distinct_if_at_most(sorted_values, levels)
    if distinct is not None:
        return distinct
    sums = _PrefixSums(sorted_values)
    quantile_positions = ((np.arange(levels) + 0.5) * n / levels).astype(np.int64)
    centroids = np.unique(sorted_values[quantile_positions].astype(np.float64))
    bounds = _lloyd(sorted_values, sums, centroids)
    for _ in range(4 * levels):  # each split adds a cluster; Lloyd rarely empties one again
        if len(bounds) - 1 >= levels:
            break
        bounds = _lloyd(sorted_values, sums, _split_worst(sorted_values, sums, bounds))
    return sums.means(bounds)


def _distinct_if_at_most(sorted_values: np.ndarray, levels: int) -> np.ndarray | None:
    """The distinct values (float64) if there are at most ``levels`` of them, else None."""
    found = [sorted_values[:1]]
    count = 1
    for start in range(0, sorted_values.shape[0] - 1, CHUNK):
        piece = sorted_values[start : start + CHUNK + 1]
        new = piece[1:][piece[1:] != piece[:-1]]
        count += new.shape[0]
        if count > levels:
            return None
        found.append(new)
    return np.concatenate(found).astype(np.float64)


class _PrefixSums:
    """Σx and Σx² over any index range of the sorted data, in float64.

    Block totals are stored for every _BLOCK elements; a range sum is two block prefix values plus
    two partial blocks, all vectorised over the k cluster boundaries.
    """

    def __init__(self, values: np.ndarray) -> None:
        self.values = values
        n = values.shape[0]
        totals = np.empty((2, (n + _BLOCK - 1) // _BLOCK))
        for start in range(0, n, CHUNK):
            piece = values[start : start + CHUNK].astype(np.float64)
            starts = np.arange(0, piece.shape[0], _BLOCK)
            block = start // _BLOCK
            totals[0, block : block + starts.shape[0]] = np.add.reduceat(piece, starts)
            totals[1, block : block + starts.shape[0]] = np.add.reduceat(piece * piece, starts)
        self.prefix = np.concatenate([np.zeros((2, 1)), np.cumsum(totals, axis=1)], axis=1)

    def at(self, positions: np.ndarray) -> np.ndarray:
        """(2, len(positions)) array of Σx and Σx² over values[:p] for each p."""
        block = positions // _BLOCK
        offsets = np.arange(_BLOCK)
        index = np.minimum(block[:, None] * _BLOCK + offsets, self.values.shape[0] - 1)
        inside = offsets < (positions - block * _BLOCK)[:, None]
        partial = np.where(inside, self.values[index].astype(np.float64), 0.0)
        return self.prefix[:, block] + np.stack([partial.sum(1), (partial * partial).sum(1)])

    def ranges(self, bounds: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Counts, Σx and Σx² of the runs values[bounds[i]:bounds[i+1]]."""
        at = self.at(bounds)
        return np.diff(bounds).astype(np.float64), np.diff(at[0]), np.diff(at[1])

    def means(self, bounds: np.ndarray) -> np.ndarray:
        counts, first, _ = self.ranges(bounds)
        return first / counts


def _lloyd(values: np.ndarray, sums: _PrefixSums, centroids: np.ndarray) -> np.ndarray:
    """Run Lloyd to a fixed point; returns the run boundaries of the non-empty clusters."""
    previous = None
    for _ in range(_MAX_LLOYD_ITERATIONS):
        cuts = np.searchsorted(values, thresholds(centroids, values.dtype), side="right")
        bounds = np.unique(np.concatenate([[0], cuts, [values.shape[0]]]))  # drops empty runs
        if previous is not None and np.array_equal(bounds, previous):
            break
        previous = bounds
        centroids = sums.means(bounds)
    return previous


def _split_worst(values: np.ndarray, sums: _PrefixSums, bounds: np.ndarray) -> np.ndarray:
    """Centroids after splitting the cluster of largest squared error at its mean."""
    counts, first, second = sums.ranges(bounds)
    worst = int(np.argmax(second - first * first / counts))
    lo, hi = int(bounds[worst]), int(bounds[worst + 1])
    mean = first[worst] / counts[worst]
    cut = thresholds(np.array([mean, mean]), values.dtype)  # mean lowered to the data's dtype
    middle = lo + int(np.searchsorted(values[lo:hi], cut[0], side="right"))
    middle = min(max(middle, lo + 1), hi - 1)  # both halves non-empty
    split = np.unique(np.concatenate([bounds, [middle]]))
    return sums.means(split)
