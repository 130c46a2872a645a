"""The standard-library byte corpus: a seeded split, and documents in a seeded random order."""

from __future__ import annotations

import numpy as np
import pytest

from bounds.tasks.language.stdlib import END_OF_DOCUMENT, stdlib_corpus, stdlib_files

MAX_BYTES = 600


def documents(split: str, seed: int = 0) -> list[bytes]:
    corpus = stdlib_corpus(split, seed=seed, max_file_bytes=MAX_BYTES)
    texts = [corpus.document(i) for i in range(corpus.num_documents)]
    assert all(text[-1] == END_OF_DOCUMENT for text in texts)
    return [text[:-1].astype(np.uint8).tobytes() for text in texts]


def permuted_files(seed: int, held_out: float = 0.1) -> tuple[list[bytes], list[bytes]]:
    """(training, held-out) file contents in the order of the seeded permutation."""
    files = stdlib_files(MAX_BYTES)
    order = np.random.default_rng(seed).permutation(len(files))
    cut = int(round(held_out * len(files)))
    contents = [files[i].read_bytes() for i in order]
    return contents[cut:], contents[:cut]


@pytest.mark.parametrize("seed", [0, 3])
def test_each_split_follows_the_seeded_permutation(seed):
    train, test = permuted_files(seed)
    assert documents("train", seed) == train
    assert documents("test", seed) == test


def test_the_training_stream_is_not_in_path_order():
    contents = [path.read_bytes() for path in stdlib_files(MAX_BYTES)]
    positions = [contents.index(document) for document in documents("train")]
    assert positions != sorted(positions)


def test_the_split_is_a_partition_of_the_files_and_depends_on_the_seed():
    everything = sorted(path.read_bytes() for path in stdlib_files(MAX_BYTES))
    for seed in (0, 3):
        train, test = documents("train", seed), documents("test", seed)
        assert sorted(train + test) == everything
        assert len(test) == round(0.1 * len(everything))
    assert sorted(documents("test", 0)) != sorted(documents("test", 3))


def test_the_source_names_the_stream():
    first, again = (stdlib_corpus(max_file_bytes=MAX_BYTES) for _ in range(2))
    assert first.source == again.source
    assert np.array_equal(first.tokens, again.tokens)
    assert first.source != stdlib_corpus(seed=3, max_file_bytes=MAX_BYTES).source
