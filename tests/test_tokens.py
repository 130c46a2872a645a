"""Token corpora: loading, document boundaries, validation and the window plan."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bounds.tasks.language import tokens as tokens_module
from bounds.tasks.language.tokens import (
    TokenCorpus,
    check_vocab,
    load_tokens,
    save_tokens,
    token_windows,
)


def corpus_of(documents, vocab_size=None) -> TokenCorpus:
    lengths = np.array([len(d) for d in documents], dtype=np.int64)
    ends = np.cumsum(lengths)
    return TokenCorpus(np.concatenate(documents), ends - lengths, ends, vocab_size, "memory")


def random_corpus(lengths, seed=0) -> TokenCorpus:
    rng = np.random.default_rng(seed)
    return corpus_of([rng.integers(0, 50, size=length) for length in lengths])


# --- the window plan ---------------------------------------------------------------------


def assert_plan_scores_each_token_once(corpus: TokenCorpus, context: int, stride: int) -> None:
    plan = token_windows(corpus, context, stride)
    scored = np.zeros(len(corpus.tokens), dtype=np.int64)
    for window in plan:
        doc = window["doc"]
        begin, end = corpus.starts[doc], corpus.ends[doc]
        assert begin <= window["start"] < window["first_scored"] < window["end"] <= end
        assert window["end"] - window["start"] <= context + 1
        scored[window["first_scored"] : window["end"]] += 1
        # every scored token sees its whole document, or at least context + 1 − stride tokens
        seen = np.arange(window["first_scored"], window["end"]) - window["start"]
        needed = np.minimum(
            np.arange(window["first_scored"], window["end"]) - begin, context + 1 - stride
        )
        assert (seen >= needed).all()
    expected = np.ones(len(corpus.tokens), dtype=np.int64)
    expected[corpus.starts] = 0
    np.testing.assert_array_equal(scored, expected)
    assert (np.diff(plan["doc"]) >= 0).all()
    assert int((plan["end"] - plan["first_scored"]).sum()) == corpus.scored_tokens


@pytest.mark.parametrize(
    ("lengths", "context", "stride"),
    [
        ([10], 4, 2),
        ([10], 4, 4),
        ([10], 4, 1),
        ([3, 2, 7], 16, 8),  # every document shorter than the context
        ([5, 6, 100, 2, 33], 7, 3),
        ([40, 41, 42], 8, 8),
        ([9, 10, 11], 8, 5),
        ([2], 1, 1),
    ],
)
def test_windows_score_each_token_exactly_once(lengths, context, stride):
    assert_plan_scores_each_token_once(random_corpus(lengths), context, stride)


@settings(max_examples=60, deadline=None)
@given(
    lengths=st.lists(st.integers(2, 60), min_size=1, max_size=6),
    context=st.integers(1, 20),
    data=st.data(),
)
def test_windows_score_each_token_exactly_once_random(lengths, context, data):
    stride = data.draw(st.integers(1, context))
    assert_plan_scores_each_token_once(random_corpus(lengths), context, stride)


def test_windows_of_one_document_by_hand():
    plan = token_windows(random_corpus([10]), context=4, stride=2)
    got = [tuple(int(v) for v in window) for window in plan]
    assert got == [(0, 0, 5, 1), (0, 2, 7, 5), (0, 4, 9, 7), (0, 5, 10, 9)]


def test_windows_use_absolute_positions_of_later_documents():
    plan = token_windows(random_corpus([3, 12]), context=5, stride=5)
    got = [tuple(int(v) for v in window) for window in plan]
    assert got == [(0, 0, 3, 1), (1, 3, 9, 4), (1, 8, 14, 9), (1, 9, 15, 14)]


def test_smaller_stride_gives_more_context():
    corpus = random_corpus([50])

    def context_of_each_token(stride):
        seen = np.zeros(50, dtype=np.int64)
        for window in token_windows(corpus, 10, stride):
            targets = np.arange(window["first_scored"], window["end"])
            seen[targets] = targets - window["start"]
        return seen[1:]

    full, half = context_of_each_token(10), context_of_each_token(5)
    assert (half >= full).all() and (half > full).any()
    assert full.min() == 1 and half[10:].min() == 6


@pytest.mark.parametrize(
    ("context", "stride", "message"),
    [(0, 1, "context"), (4, 0, "stride"), (4, 5, "stride must not exceed"), (2.5, 1, "context")],
)
def test_windows_reject_bad_context_and_stride(context, stride, message):
    with pytest.raises(ValueError, match=message):
        token_windows(random_corpus([10]), context, stride)


# --- the corpus --------------------------------------------------------------------------


def test_corpus_counts_documents_and_subsets_with_repeats():
    corpus = corpus_of([np.array([1, 2, 3]), np.array([4, 5]), np.array([6, 7, 8, 9])])
    assert (corpus.num_documents, corpus.num_tokens, corpus.scored_tokens) == (3, 9, 6)
    np.testing.assert_array_equal(corpus.document(2), [6, 7, 8, 9])
    sample = corpus.subset([2, 0, 2])
    assert (sample.num_documents, sample.num_tokens, sample.scored_tokens) == (3, 11, 8)
    np.testing.assert_array_equal(sample.document(0), [6, 7, 8, 9])
    np.testing.assert_array_equal(sample.document(1), [1, 2, 3])
    assert sample.tokens is corpus.tokens
    with pytest.raises(ValueError, match="at least one"):
        corpus.subset([])
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        corpus.subset([0, 3])
    with pytest.raises(ValueError, match="integers"):
        corpus.subset([0.5])
    with pytest.raises(ValueError, match="out of range"):
        corpus.document(3)


@pytest.mark.parametrize(
    ("tokens", "starts", "ends", "message"),
    [
        (np.array([1, 2, 3]), [0], [4], r"lie in \[0, 3\]"),
        (np.array([1, 2, 3]), [0, 1], [3], "same length"),
        (np.array([1, 2, 3]), [], [], "at least one document"),
        (np.array([1, 2, 3]), [0, 2], [2, 3], "1 document"),
        (np.array([1, -2, 3]), [0], [3], "negative token id"),
        (np.array([1.0, 2.0]), [0], [2], "integer token ids"),
        (np.array([[1, 2]]), [0], [2], "1-D"),
        (np.array([1, 2], dtype=np.uint64), [0], [2], "unsigned"),
    ],
)
def test_corpus_rejects_bad_arrays(tokens, starts, ends, message):
    with pytest.raises(ValueError, match=message):
        TokenCorpus(tokens, np.array(starts, dtype=np.int64), np.array(ends, dtype=np.int64))


def test_check_vocab_finds_the_first_id_out_of_range_in_any_chunk(monkeypatch):
    monkeypatch.setattr(tokens_module, "_SCAN_CHUNK", 4)
    corpus = corpus_of([np.array([1, 2, 3, 4, 5, 6]), np.array([7, 9, 8, 9, 1])])
    check_vocab(corpus, 10)
    with pytest.raises(ValueError, match="token id 9 at position 7 .* vocabulary size 9"):
        check_vocab(corpus, 9)
    with pytest.raises(ValueError, match="vocab_size"):
        check_vocab(corpus, 0)


# --- loading -----------------------------------------------------------------------------


DOCUMENTS = [[5, 1, 2, 3], [4, 4], [7, 0, 65535, 9, 8]]


@pytest.mark.parametrize("suffix", [".npy", ".bin"])
@pytest.mark.parametrize("dtype", ["uint16", "uint32"])
def test_save_and_load_round_trip(tmp_path, suffix, dtype):
    path = tmp_path / f"corpus{suffix}"
    offsets = save_tokens(path, DOCUMENTS, dtype=dtype)
    assert offsets == tmp_path / "corpus.offsets.npy"
    corpus = load_tokens(path, dtype=dtype, offsets=offsets)
    assert isinstance(corpus.tokens, np.memmap)
    assert corpus.tokens.dtype == np.dtype(dtype)
    assert corpus.source == str(path) and corpus.vocab_size is None
    assert [corpus.document(i).tolist() for i in range(3)] == DOCUMENTS
    np.testing.assert_array_equal(corpus.starts, [0, 4, 6])
    np.testing.assert_array_equal(corpus.ends, [4, 6, 11])


def test_load_npy_of_signed_ids_and_whole_stream_as_one_document(tmp_path):
    path = tmp_path / "ids.npy"
    np.save(path, np.array([3, 1, 4, 1, 5, 9, 2, 6], dtype=np.int64))
    corpus = load_tokens(path, vocab_size=10)
    assert corpus.num_documents == 1 and corpus.scored_tokens == 7 and corpus.vocab_size == 10
    with pytest.raises(ValueError, match="token id 9 at position 5"):
        load_tokens(path, vocab_size=9)


def test_bin_defaults_to_uint16(tmp_path):
    path = tmp_path / "ids.bin"
    np.array([1, 2, 70000], dtype="<u4").tofile(path)
    assert load_tokens(path).tokens.tolist() == [1, 0, 2, 0, 4464, 1]
    assert load_tokens(path, dtype="uint32").tokens.tolist() == [1, 2, 70000]


@pytest.mark.parametrize(
    ("stream", "ends"),
    [
        ([5, 6, 0, 7, 8, 9, 0, 1, 2], [3, 7, 9]),  # trailing tokens form a last document
        ([5, 6, 0, 7, 8, 9, 0], [3, 7]),
    ],
)
def test_eod_ends_documents_and_is_kept(tmp_path, stream, ends):
    path = tmp_path / "ids.npy"
    np.save(path, np.array(stream, dtype=np.uint16))
    corpus = load_tokens(path, eod=0)
    np.testing.assert_array_equal(corpus.ends, ends)
    np.testing.assert_array_equal(corpus.starts, [0, *ends[:-1]])
    assert corpus.document(0).tolist() == [5, 6, 0]


def test_eod_found_across_scan_chunks(tmp_path, monkeypatch):
    monkeypatch.setattr(tokens_module, "_SCAN_CHUNK", 3)
    path = tmp_path / "ids.npy"
    np.save(path, np.array([5, 6, 0, 7, 8, 9, 0, 1, 2, 3, 0], dtype=np.uint16))
    np.testing.assert_array_equal(load_tokens(path, eod=0).ends, [3, 7, 11])


def test_offsets_as_array(tmp_path):
    path = tmp_path / "ids.npy"
    np.save(path, np.arange(10, dtype=np.uint16))
    corpus = load_tokens(path, offsets=np.array([0, 4, 7]))
    np.testing.assert_array_equal(corpus.ends, [4, 7, 10])


def write(path, array):
    if path.suffix == ".npy":
        np.save(path, array)
    else:
        np.asarray(array).tofile(path)
    return path


@pytest.mark.parametrize(
    ("name", "array", "kwargs", "message"),
    [
        ("e.npy", np.zeros(0, np.uint16), {}, "holds no tokens"),
        ("e.bin", np.zeros(0, np.uint16), {}, "is empty"),
        ("odd.bin", np.zeros(3, np.uint8), {}, "whole number of 2-byte"),
        ("n.npy", np.array([1, -1, 2]), {}, "negative token id"),
        ("f.npy", np.array([1.0, 2.0]), {}, "integer token ids"),
        ("b.npy", np.array([True, False]), {}, "integer token ids"),
        ("m.npy", np.ones((2, 3), np.int32), {}, "1-D"),
        ("t.txt", np.ones(3, np.uint16), {}, r"\.npy or \.bin"),
        ("d.bin", np.ones(3, np.uint16), {"dtype": "int64"}, "dtype must be one of"),
        ("d.npy", np.ones(3, np.uint16), {"dtype": "uint32"}, "not the requested uint32"),
        ("x.npy", np.ones(4, np.uint16), {"eod": 0}, "eod.* never occurs"),
        ("x.npy", np.ones(4, np.uint16), {"eod": -1}, "non-negative integer"),
        ("x.npy", np.ones(4, np.uint16), {"eod": 1, "offsets": [0]}, "not both"),
        ("x.npy", np.array([0, 1, 0, 0, 2], np.uint16), {"eod": 0}, r"3 document.*document 0"),
        ("x.npy", np.array([1, 1, 0, 0, 1, 1], np.uint16), {"eod": 0}, r"1 document.*document 1"),
        ("x.npy", np.ones(6, np.uint16), {"offsets": [1, 3]}, "first document offset must be 0"),
        ("x.npy", np.ones(6, np.uint16), {"offsets": [0, 3, 3]}, "strictly increasing"),
        ("x.npy", np.ones(6, np.uint16), {"offsets": [0, 4, 2]}, "strictly increasing"),
        ("x.npy", np.ones(6, np.uint16), {"offsets": [0, 6]}, "below the stream's length 6"),
        ("x.npy", np.ones(6, np.uint16), {"offsets": [0, 5]}, "fewer than 2 tokens"),
        ("x.npy", np.ones(6, np.uint16), {"offsets": [0.0, 2.0]}, "must be integers"),
        ("x.npy", np.ones(6, np.uint16), {"offsets": []}, "non-empty 1-D"),
    ],
)
def test_load_rejects_bad_input(tmp_path, name, array, kwargs, message):
    path = write(tmp_path / name, array)
    with pytest.raises(ValueError, match=message):
        load_tokens(path, **kwargs)


def test_load_rejects_missing_files_and_pickles(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        load_tokens(tmp_path / "missing.npy")
    path = tmp_path / "objects.npy"
    np.save(path, np.array([1, "a"], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match="not a plain NumPy array"):
        load_tokens(path)
    offsets = tmp_path / "offsets.npy"
    with pytest.raises(ValueError, match="cannot read document offsets"):
        load_tokens(write(tmp_path / "x.npy", np.ones(4, np.uint16)), offsets=offsets)


@pytest.mark.parametrize(
    ("documents", "kwargs", "message"),
    [
        ([], {}, "no documents"),
        ([[1, 2], [3]], {}, "fewer than 2 tokens"),
        ([[1, 70000]], {}, r"\[0, 65535\]"),
        ([[1, -1]], {"dtype": "uint32"}, r"\[0, 4294967295\]"),
        ([[1, 2]], {"dtype": "int8"}, "dtype must be one of"),
        ([[1.5, 2]], {}, "integer token ids"),
    ],
)
def test_save_rejects_bad_documents(tmp_path, documents, kwargs, message):
    with pytest.raises(ValueError, match=message):
        save_tokens(tmp_path / "c.bin", documents, **kwargs)
