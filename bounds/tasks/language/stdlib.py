"""A built-in text corpus: the Python standard library's own source files, as bytes.

Every Python installation ships its standard library's ``.py`` files, so this corpus needs no
download. Each file of at most `max_file_bytes` bytes (outside ``site-packages``) is one
document: its bytes (ids 0–255) followed by the end-of-document id 256, so the vocabulary has
257 ids and predicting the end of a file is scored. A seeded random permutation of the sorted
paths decides everything else: its first `held_out` fraction are the held-out documents, the
rest the training documents — a uniform draw without replacement from the population of
files, for which Hoeffding's inequality, and so the document-level bounds, hold for the
population mean (Hoeffding 1963, Section 6) — and each split's documents follow one another in
the permutation's order, not alphabetically. The training stream is then its files in a
seeded random order, so the token-level (sequential) bounds, whose risk is each token's
expected loss given all of the stream before it, are about a next file drawn at random from
those not yet seen rather than the next module of the same package.
The corpus differs between Python versions; its `source` names the version and a sha256 of
the token stream, so a report identifies it exactly.
"""

from __future__ import annotations

import hashlib
import numbers
import platform
import sysconfig
from pathlib import Path

import numpy as np

from bounds.tasks.language.tokens import TokenCorpus

END_OF_DOCUMENT = 256
VOCAB_SIZE = 257


def stdlib_files(max_file_bytes: int = 16384) -> list[Path]:
    """The standard library's .py files of 2 to `max_file_bytes` bytes, sorted by path."""
    root = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(path for path in root.rglob("*.py") if "site-packages" not in path.parts)
    chosen = [path for path in files if 2 <= path.stat().st_size <= max_file_bytes]
    if not chosen:
        raise ValueError(f"no standard-library source files found under {str(root)!r}")
    return chosen


def stdlib_corpus(
    split: str = "train", *, seed: int = 0, held_out: float = 0.1, max_file_bytes: int = 16384
) -> TokenCorpus:
    """The training or held-out documents of the standard-library byte corpus."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    if (
        isinstance(held_out, bool)
        or not isinstance(held_out, numbers.Real)
        or not 0.0 < held_out < 1.0
    ):
        raise ValueError(f"held_out must be a fraction in (0, 1), got {held_out!r}")
    if (
        isinstance(max_file_bytes, bool)
        or not isinstance(max_file_bytes, numbers.Integral)
        or max_file_bytes < 2
    ):
        raise ValueError(f"max_file_bytes must be an integer of at least 2, got {max_file_bytes!r}")
    files = stdlib_files(max_file_bytes)
    order = np.random.default_rng(seed).permutation(len(files))
    cut = int(round(held_out * len(files)))
    if not 0 < cut < len(files):
        raise ValueError(
            f"held_out={held_out} of the {len(files)} files of at most {max_file_bytes} bytes "
            f"leaves {'no held-out' if cut == 0 else 'no training'} file; change held_out or "
            "max_file_bytes"
        )
    # The permutation's order, not sorted: the stream must not run through files by path.
    chosen = order[:cut] if split == "test" else order[cut:]
    documents = [np.frombuffer(files[i].read_bytes(), dtype=np.uint8) for i in chosen]
    lengths = np.array([len(document) + 1 for document in documents], dtype=np.int64)
    tokens = np.full(int(lengths.sum()), END_OF_DOCUMENT, dtype=np.uint16)
    ends = np.cumsum(lengths)
    starts = ends - lengths
    for start, document in zip(starts, documents, strict=True):
        tokens[start : start + len(document)] = document
    digest = hashlib.sha256(tokens.tobytes()).hexdigest()[:16]
    source = (
        f"stdlib:split={split},seed={seed},held_out={held_out},max_file_bytes={max_file_bytes} "
        f"(Python {platform.python_version()}, {len(documents)} files, sha256 {digest}…)"
    )
    return TokenCorpus(tokens, starts, ends, VOCAB_SIZE, source)
