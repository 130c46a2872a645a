"""Token corpora for language-model bounds: documents of token ids, and the evaluation plan.

A corpus is one 1-D stream of token ids (kept memory-mapped, never loaded whole) cut into
documents by `starts` / `ends`. Token t of a document is predicted from the tokens before it
in the same document, so a document of length L has L − 1 scored tokens and L ≥ 2 is
required. `token_windows` fixes, before any model is run, which window of at most
context + 1 tokens scores which tokens (each exactly once).

File formats read by `load_tokens`:
- ``.npy``: a 1-D integer array (NumPy format, memory-mapped, no pickles).
- ``.bin``: raw little-endian ids, ``uint16`` (default) or ``uint32``, no header.
- document boundaries from an end-of-document id (``eod``, kept as each document's last
  token), or from a ``.npy`` of int64 start offsets (first 0, strictly increasing).
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from dataclasses import dataclass
from os import PathLike
from pathlib import Path

import numpy as np

#: Storage types of a ``.bin`` stream.
BIN_DTYPES = ("uint16", "uint32")
#: Tokens scanned at a time when checking a (memory-mapped) stream, to bound memory.
_SCAN_CHUNK = 1 << 22
#: Fields of one window of the evaluation plan; positions index `TokenCorpus.tokens`.
WINDOW_DTYPE = np.dtype(
    [("doc", np.int64), ("start", np.int64), ("end", np.int64), ("first_scored", np.int64)]
)
_UNSIGNED_OK = (np.uint8, np.uint16, np.uint32)


@dataclass(frozen=True, eq=False)
class TokenCorpus:
    """Documents ``tokens[starts[i]:ends[i]]`` of one token stream.

    `tokens` is a 1-D integer array or memmap (signed, or uint8/16/32) of non-negative ids;
    `starts`/`ends` are int64 [D] with 0 ≤ start, start + 2 ≤ end ≤ len(tokens). Documents may
    overlap or repeat (a subsample drawn with replacement). `vocab_size` is the declared
    vocabulary size, or None when none was given.
    """

    tokens: np.ndarray
    starts: np.ndarray
    ends: np.ndarray
    vocab_size: int | None = None
    source: str = ""

    def __post_init__(self) -> None:
        tokens = _check_stream(self.tokens, self.source or "the token stream")
        starts = _int64_vector(self.starts, "starts")
        ends = _int64_vector(self.ends, "ends")
        if starts.shape != ends.shape:
            raise ValueError(
                f"starts and ends must have the same length, got {len(starts)} and {len(ends)}"
            )
        if len(starts) == 0:
            raise ValueError("a token corpus needs at least one document")
        if starts.min() < 0 or ends.max() > len(tokens):
            raise ValueError(
                f"document boundaries must lie in [0, {len(tokens)}] (the stream's length)"
            )
        _check_lengths(ends - starts)
        if self.vocab_size is not None:
            _check_vocab_size(self.vocab_size)
        object.__setattr__(self, "tokens", tokens)
        object.__setattr__(self, "starts", starts)
        object.__setattr__(self, "ends", ends)

    @property
    def num_documents(self) -> int:
        return len(self.starts)

    @property
    def lengths(self) -> np.ndarray:
        """Tokens per document, int64 [D]."""
        return self.ends - self.starts

    @property
    def num_tokens(self) -> int:
        """Σ_d L_d, the tokens of all documents (a repeated document counts each time)."""
        return int(self.lengths.sum())

    @property
    def scored_tokens(self) -> int:
        """m = Σ_d (L_d − 1): every token but each document's first is scored."""
        return self.num_tokens - self.num_documents

    def document(self, index: int) -> np.ndarray:
        """The token ids of document `index` (a view of the stream)."""
        if isinstance(index, bool) or not isinstance(index, numbers.Integral):
            raise ValueError(f"a document index must be an integer, got {index!r}")
        if not 0 <= index < self.num_documents:
            raise ValueError(
                f"document index {index} is out of range for {self.num_documents} documents"
            )
        return self.tokens[self.starts[index] : self.ends[index]]

    def subset(self, indices) -> TokenCorpus:
        """The documents `indices`, in that order; repeats are kept (sampling with replacement)."""
        chosen = np.asarray(indices)
        if chosen.ndim != 1 or (chosen.size and not np.issubdtype(chosen.dtype, np.integer)):
            raise ValueError("subset indices must be a 1-D sequence of integers")
        if chosen.size == 0:
            raise ValueError("subset indices must name at least one document")
        if chosen.min() < 0 or chosen.max() >= self.num_documents:
            raise ValueError(
                f"subset indices must lie in [0, {self.num_documents}), "
                f"got {int(chosen.min())}..{int(chosen.max())}"
            )
        return TokenCorpus(
            self.tokens, self.starts[chosen], self.ends[chosen], self.vocab_size, self.source
        )


def load_tokens(
    path: str | PathLike,
    *,
    dtype: str | None = None,
    eod: int | None = None,
    offsets: str | PathLike | np.ndarray | None = None,
    vocab_size: int | None = None,
) -> TokenCorpus:
    """Read a token stream (``.npy`` or ``.bin``) and cut it into documents.

    `eod`: every occurrence ends a document (and stays its last token, so predicting the end
    is scored); tokens after the last `eod` form a last document. `offsets`: document start
    offsets (a ``.npy`` path or an array). Neither: the whole stream is one document.
    `vocab_size`, when given, is checked against every id (`check_vocab`).
    """
    path = Path(path)
    if dtype is not None and dtype not in BIN_DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(BIN_DTYPES)}, got {dtype!r}")
    tokens = _read_stream(path, dtype)
    source = str(path)
    tokens = _check_array(tokens, source)  # the values are checked once, by TokenCorpus
    if eod is not None and offsets is not None:
        raise ValueError("give either eod or offsets to cut documents, not both")
    if eod is not None:
        starts, ends = _split_at_eod(tokens, eod, source)
    elif offsets is not None:
        starts, ends = _split_at_offsets(offsets, len(tokens))
    else:
        starts, ends = np.zeros(1, np.int64), np.full(1, len(tokens), np.int64)
    corpus = TokenCorpus(tokens, starts, ends, vocab_size, source)
    if vocab_size is not None:
        check_vocab(corpus, vocab_size)
    return corpus


def save_tokens(
    path: str | PathLike, documents: Sequence[Sequence[int]], *, dtype: str = "uint16"
) -> Path:
    """Write `documents` as one stream to `path` (``.npy`` or ``.bin``) plus their offsets.

    The start offsets go to ``<path without suffix>.offsets.npy``, whose path is returned, so
    ``load_tokens(path, dtype=dtype, offsets=<returned path>)`` reads the same documents back.
    """
    path = Path(path)
    if dtype not in BIN_DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(BIN_DTYPES)}, got {dtype!r}")
    if path.suffix not in (".npy", ".bin"):
        raise ValueError(f"token files end in .npy or .bin, got {path.name!r}")
    arrays = [np.asarray(document) for document in documents]
    if not arrays:
        raise ValueError("there are no documents to save")
    if any(a.ndim != 1 or (a.size and not np.issubdtype(a.dtype, np.integer)) for a in arrays):
        raise ValueError("every document must be a 1-D sequence of integer token ids")
    lengths = np.array([a.size for a in arrays], dtype=np.int64)
    _check_lengths(lengths)
    stream = np.concatenate(arrays).astype(np.int64)
    limit = np.iinfo(dtype).max
    if stream.min() < 0 or stream.max() > limit:
        raise ValueError(f"token ids must lie in [0, {limit}] to be stored as {dtype}")
    stream = stream.astype(dtype)
    if path.suffix == ".npy":
        np.save(path, stream, allow_pickle=False)
    else:
        stream.astype(np.dtype(dtype).newbyteorder("<")).tofile(path)
    offsets_path = path.with_suffix(".offsets.npy")
    np.save(offsets_path, np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64))
    return offsets_path


def check_vocab(corpus: TokenCorpus, vocab_size: int) -> None:
    """Raise ValueError if any id of the corpus's stream is ≥ `vocab_size` (scanned in chunks)."""
    _check_vocab_size(vocab_size)
    tokens = corpus.tokens
    for begin in range(0, len(tokens), _SCAN_CHUNK):
        chunk = np.asarray(tokens[begin : begin + _SCAN_CHUNK])
        if chunk.max() >= vocab_size:
            position = begin + int(np.flatnonzero(chunk >= vocab_size)[0])
            raise ValueError(
                f"token id {int(tokens[position])} at position {position} of "
                f"{corpus.source or 'the corpus'} is not below the vocabulary size {vocab_size}"
            )


def token_windows(corpus: TokenCorpus, context: int, stride: int) -> np.ndarray:
    """The evaluation plan: a structured array of `WINDOW_DTYPE`, in document order.

    A window covers ``tokens[start:end]`` (at most context + 1 tokens): the model reads
    ``tokens[start:end-1]`` and the targets ``tokens[first_scored:end]`` are scored. In each
    document the first window ends at min(L, context + 1) and scores tokens 1…; every next
    window ends `stride` tokens later (at most at L), starts context + 1 tokens before its end
    (at least at the document's start) and scores the tokens the previous one did not. Every
    scored token is scored exactly once, with at least context + 1 − stride tokens of context
    (or all the tokens before it).
    """
    context = _positive_int(context, "context")
    stride = _positive_int(stride, "stride")
    if stride > context:
        raise ValueError(f"stride must not exceed context, got stride {stride} > {context}")
    span = context + 1
    lengths = corpus.lengths
    counts = 1 + -(-np.maximum(lengths - span, 0) // stride)
    doc = np.repeat(np.arange(len(lengths), dtype=np.int64), counts)
    first_window = np.repeat(np.cumsum(counts) - counts, counts)
    step = np.arange(len(doc), dtype=np.int64) - first_window
    end = np.minimum(lengths[doc], span + step * stride)
    first_scored = np.where(step == 0, 1, span + (step - 1) * stride)
    start = np.maximum(end - span, 0)
    offset = corpus.starts[doc]
    plan = np.empty(len(doc), dtype=WINDOW_DTYPE)
    plan["doc"] = doc
    plan["start"] = offset + start
    plan["end"] = offset + end
    plan["first_scored"] = offset + first_scored
    return plan


def _read_stream(path: Path, dtype: str | None) -> np.ndarray:
    if not path.is_file():
        raise ValueError(f"token file {str(path)!r} does not exist")
    if path.suffix == ".npy":
        try:
            tokens = np.load(path, mmap_mode="r", allow_pickle=False)
        except ValueError as error:
            raise ValueError(f"{path} is not a plain NumPy array file: {error}") from None
        if dtype is not None and np.dtype(tokens.dtype) != np.dtype(dtype):
            raise ValueError(f"{path} holds {tokens.dtype} ids, not the requested {dtype}")
        return tokens
    if path.suffix == ".bin":
        dtype = "uint16" if dtype is None else dtype
        itemsize = np.dtype(dtype).itemsize
        size = path.stat().st_size
        if size == 0:
            raise ValueError(f"the token stream {path} is empty")
        if size % itemsize:
            raise ValueError(
                f"{path} has {size} bytes, not a whole number of {itemsize}-byte {dtype} ids"
            )
        return np.memmap(path, dtype=np.dtype(dtype).newbyteorder("<"), mode="r")
    raise ValueError(f"token files end in .npy or .bin, got {path.name!r}")


def _check_stream(tokens, source: str) -> np.ndarray:
    """A 1-D, non-empty integer array of non-negative ids (checked in chunks)."""
    tokens = _check_array(tokens, source)
    if np.issubdtype(tokens.dtype, np.signedinteger):
        for begin in range(0, len(tokens), _SCAN_CHUNK):
            chunk = np.asarray(tokens[begin : begin + _SCAN_CHUNK])
            if chunk.min() < 0:
                position = begin + int(np.flatnonzero(chunk < 0)[0])
                raise ValueError(
                    f"{source} holds a negative token id ({int(tokens[position])}) "
                    f"at position {position}"
                )
    return tokens


def _check_array(tokens, source: str) -> np.ndarray:
    """A 1-D, non-empty array of a supported integer type (no scan of the values)."""
    if not isinstance(tokens, np.ndarray):
        tokens = np.asarray(tokens)
    if tokens.ndim != 1:
        raise ValueError(f"{source} must be a 1-D array of token ids, got shape {tokens.shape}")
    if tokens.dtype == np.bool_ or not np.issubdtype(tokens.dtype, np.integer):
        raise ValueError(f"{source} must hold integer token ids, got dtype {tokens.dtype}")
    if np.issubdtype(tokens.dtype, np.unsignedinteger) and tokens.dtype.type not in _UNSIGNED_OK:
        raise ValueError(f"{source} must be a signed or 8/16/32-bit unsigned integer array")
    if tokens.size == 0:
        raise ValueError(f"{source} holds no tokens")
    return tokens


def _split_at_eod(tokens: np.ndarray, eod: int, source: str) -> tuple[np.ndarray, np.ndarray]:
    if isinstance(eod, bool) or not isinstance(eod, numbers.Integral) or eod < 0:
        raise ValueError(f"eod must be a non-negative integer token id, got {eod!r}")
    positions = [
        begin + np.flatnonzero(np.asarray(tokens[begin : begin + _SCAN_CHUNK]) == eod)
        for begin in range(0, len(tokens), _SCAN_CHUNK)
    ]
    ends = np.concatenate(positions).astype(np.int64) + 1
    if len(ends) == 0:
        raise ValueError(f"the end-of-document id (eod) {eod} never occurs in {source}")
    if ends[-1] < len(tokens):
        ends = np.append(ends, len(tokens))
    return np.concatenate([[0], ends[:-1]]).astype(np.int64), ends


def _split_at_offsets(offsets, size: int) -> tuple[np.ndarray, np.ndarray]:
    if isinstance(offsets, str | PathLike):
        try:
            offsets = np.load(offsets, allow_pickle=False)
        except (OSError, ValueError) as error:
            raise ValueError(f"cannot read document offsets from {offsets}: {error}") from None
    offsets = np.asarray(offsets)
    if offsets.ndim != 1 or offsets.size == 0:
        raise ValueError(f"document offsets must be a non-empty 1-D array, got {offsets.shape}")
    if offsets.dtype == np.bool_ or not np.issubdtype(offsets.dtype, np.integer):
        raise ValueError(f"document offsets must be integers, got dtype {offsets.dtype}")
    starts = offsets.astype(np.int64)
    if starts[0] != 0:
        raise ValueError(f"the first document offset must be 0, got {starts[0]}")
    if (np.diff(starts) <= 0).any():
        index = int(np.flatnonzero(np.diff(starts) <= 0)[0]) + 1
        raise ValueError(
            f"document offsets must be strictly increasing, but offset {index} "
            f"({starts[index]}) follows {starts[index - 1]}"
        )
    if starts[-1] >= size:
        raise ValueError(
            f"document offsets must be below the stream's length {size}, got {starts[-1]}"
        )
    return starts, np.append(starts[1:], size)


def _check_lengths(lengths: np.ndarray) -> None:
    short = np.flatnonzero(lengths < 2)
    if short.size:
        raise ValueError(
            f"{short.size} document(s) have fewer than 2 tokens (the first is document "
            f"{int(short[0])}, with {int(lengths[short[0]])}); each needs at least 2, since a "
            "document's first token is not scored"
        )


def _int64_vector(values, name: str) -> np.ndarray:
    array = np.asarray(values)
    if array.ndim != 1 or (array.size and not np.issubdtype(array.dtype, np.integer)):
        raise ValueError(f"{name} must be a 1-D integer array")
    return array.astype(np.int64)


def _positive_int(value: int, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def _check_vocab_size(vocab_size: int) -> None:
    _positive_int(vocab_size, "vocab_size")
