"""Token-level evaluation of causal LMs, checked against a brute-force loop over tokens."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from bounds.formulas.sequence import DEFAULT_ALPHA_GRID
from bounds.models.architectures import byte_transformer
from bounds.tasks.language import evaluate as lm_eval
from bounds.tasks.language.evaluate import SUMMED_FIELDS, evaluate_lm
from bounds.tasks.language.tokens import TokenCorpus

VOCAB = 11
ALPHAS = (0.5, 0.01, 1e-6)
TOP_K = (1, 3, VOCAB)


# Tiny models run fastest on one thread; several threads spin against each other.
pytestmark = pytest.mark.usefixtures("one_thread")


def corpus_of(documents, vocab_size=None) -> TokenCorpus:
    lengths = np.array([len(d) for d in documents], dtype=np.int64)
    ends = np.cumsum(lengths)
    stream = np.concatenate([np.asarray(d) for d in documents]).astype(np.uint16)
    return TokenCorpus(stream, ends - lengths, ends, vocab_size, "memory")


def random_corpus(lengths=(2, 7, 23, 12, 3), vocab=VOCAB, seed=0) -> TokenCorpus:
    rng = np.random.default_rng(seed)
    return corpus_of([rng.integers(0, vocab, size=length) for length in lengths])


class PreviousToken(nn.Module):
    """Logits = a table row of the last input token; whole-number entries make exact ties."""

    def __init__(self, vocab=VOCAB, seed=0):
        super().__init__()
        rng = np.random.default_rng(seed)
        table = torch.from_numpy(rng.integers(0, 4, size=(vocab, vocab)).astype(np.float64))
        self.table = nn.Embedding.from_pretrained(table)

    def forward(self, ids):
        return self.table(ids)


class PrefixSum(PreviousToken):
    """Causal and dependent on the whole window: logits = Σ of the table rows so far."""

    def forward(self, ids):
        return self.table(ids).cumsum(dim=1) / 3.0


def transformer(context=8):
    return byte_transformer(VOCAB, context=context, width=16, depth=2, heads=2, seed=0).double()


def context_start(t: int, length: int, context: int, stride: int) -> int:
    """First context position of token t under sliding windows, derived independently."""
    span = context + 1
    if t < span:
        return 0
    step = (t - span) // stride + 1
    return max(0, min(length, span + step * stride) - span)


def brute_force(model, corpus, context, stride, alphas=ALPHAS, top_k=TOP_K):
    """Per-document sums from one model call per token on exactly that token's context."""
    rows = []
    for d in range(corpus.num_documents):
        document = corpus.document(d).astype(np.int64)
        sums = {name: 0.0 for name in SUMMED_FIELDS}
        sums["smoothed_bits"] = np.zeros(len(alphas))
        sums["smoothed_square"] = np.zeros(len(alphas))
        sums["topk_errors"] = np.zeros(len(top_k), np.int64)
        sums["topk_square"] = np.zeros(len(top_k))
        for t in range(1, len(document)):
            begin = context_start(t, len(document), context, stride)
            with torch.no_grad():
                z = model(torch.from_numpy(document[begin:t])[None])[0, -1].double().numpy()
            vocab, y = len(z), document[t]
            log_p = z - (z.max() + np.log(np.exp(z - z.max()).sum()))
            p = np.exp(log_p)
            sums["tokens"] += 1
            sums["log_loss_bits"] += -log_p[y] / math.log(2)
            for i, alpha in enumerate(alphas):
                smoothed = (1 - alpha) * p + alpha / vocab
                low, high = -np.log2(1 - alpha + alpha / vocab), np.log2(vocab / alpha)
                loss = -np.log2(smoothed[y])
                entropy = -(smoothed * np.log2(smoothed)).sum()
                sums["smoothed_bits"][i] += loss
                sums["smoothed_square"][i] += ((loss - entropy) / (high - low)) ** 2
            order = np.argsort(-z, kind="stable")  # equal logits: lower index first
            place = int(np.flatnonzero(order == y)[0])
            for i, k in enumerate(top_k):
                error = int(place >= k)
                sums["topk_errors"][i] += error
                sums["topk_square"][i] += (error - (1 - p[order[:k]].sum())) ** 2
        rows.append(sums)
    return {name: np.array([row[name] for row in rows]) for name in SUMMED_FIELDS}


#: The entropy forecasts come from a histogram of ln p, within 10⁻³ bits of the entropy (any
#: function of the context is a valid forecast; test_entropy_forecasts_are_within_a_millibit),
#: so each token's squared forecast error on the [0, 1] scale moves by at most 2·10⁻³; every
#: loss of these double-precision models matches to double precision.
FORECAST_FIELDS = ("smoothed_square",)


def assert_matches(evaluation, expected):
    for name in SUMMED_FIELDS:
        got = getattr(evaluation, name)
        if got.dtype == np.int64:
            np.testing.assert_array_equal(got, expected[name], err_msg=name)
        elif name in FORECAST_FIELDS:
            tokens = expected["tokens"].reshape(-1, *([1] * (got.ndim - 1)))
            assert (np.abs(got - expected[name]) <= 2e-3 * tokens).all(), name
        else:
            np.testing.assert_allclose(got, expected[name], rtol=1e-9, atol=1e-14, err_msg=name)


@pytest.mark.parametrize("make_model", [PreviousToken, PrefixSum, transformer])
@pytest.mark.parametrize(("context", "stride"), [(5, 5), (5, 2), (8, 3), (8, 1), (30, 30)])
def test_evaluation_equals_a_loop_over_tokens_with_their_exact_context(make_model, context, stride):
    if make_model is transformer:
        model = transformer(context)
    else:
        model = make_model()
    corpus = random_corpus()
    evaluation = evaluate_lm(
        model, corpus, context=context, stride=stride, alphas=ALPHAS, top_k=TOP_K, batch_size=3
    )
    assert evaluation.vocab_size == VOCAB and evaluation.num_documents == corpus.num_documents
    assert (evaluation.context, evaluation.stride, evaluation.shard) == (context, stride, None)
    per_document = evaluation.per_document()
    np.testing.assert_array_equal(per_document.window_doc, np.arange(corpus.num_documents))
    assert_matches(per_document, brute_force(model, corpus, context, stride))
    totals = evaluation.totals()
    assert totals.tokens == corpus.scored_tokens == 42
    assert totals.log_loss_bits == pytest.approx(per_document.log_loss_bits.sum(), rel=1e-12)
    assert totals.topk_errors[-1] == 0  # the top V holds every token


def test_a_smaller_stride_changes_the_scores_of_a_context_dependent_model():
    corpus = random_corpus()
    coarse = evaluate_lm(PrefixSum(), corpus, context=5, stride=5, alphas=(), top_k=())
    fine = evaluate_lm(PrefixSum(), corpus, context=5, stride=2, alphas=(), top_k=())
    assert coarse.totals().tokens == fine.totals().tokens
    assert coarse.totals().log_loss_bits != pytest.approx(fine.totals().log_loss_bits, rel=1e-6)
    # the documents no longer than context + 1 = 6 tokens are scored identically
    short = [0, 4]
    np.testing.assert_allclose(
        coarse.per_document().log_loss_bits[short],
        fine.per_document().log_loss_bits[short],
        rtol=1e-12,
    )


@pytest.mark.parametrize("make_model", [PrefixSum, transformer])
def test_padding_does_not_leak_into_any_sum(make_model):
    corpus = random_corpus(lengths=(2, 17, 4, 30, 9, 3, 12))
    model = make_model()
    results = [
        evaluate_lm(
            model, corpus, context=8, stride=3, alphas=ALPHAS, top_k=TOP_K, batch_size=size
        ).totals()
        for size in range(1, 8)
    ]
    for totals in results[1:]:
        assert totals.tokens == results[0].tokens == corpus.scored_tokens
        assert totals.topk_errors == results[0].topk_errors
        for name in ("smoothed_bits", "smoothed_square", "topk_square"):
            np.testing.assert_allclose(
                getattr(totals, name), getattr(results[0], name), rtol=1e-12, atol=0
            )
        assert totals.log_loss_bits == pytest.approx(results[0].log_loss_bits, rel=1e-12)


@pytest.mark.parametrize("world", [2, 3])
def test_shards_add_up_exactly_and_never_overlap(world):
    corpus = random_corpus(lengths=(2, 17, 4, 30, 9, 3, 12))
    options = dict(context=6, stride=4, alphas=ALPHAS, top_k=TOP_K, batch_size=2)
    model = transformer(6)
    whole = evaluate_lm(model, corpus, **options)
    shards = [evaluate_lm(model, corpus, shard=(rank, world), **options) for rank in range(world)]
    assert [s.shard for s in shards] == [(rank, world) for rank in range(world)]
    combined = {}
    for name in SUMMED_FIELDS:
        parts = np.stack([s.arrays()[name] for s in shards])
        assert ((parts != 0).sum(axis=0) <= 1).all(), name
        assert (parts != 0).any(axis=tuple(range(1, parts.ndim))).all(), name
        combined[name] = parts.sum(axis=0)
        np.testing.assert_array_equal(combined[name], whole.arrays()[name], err_msg=name)
        np.testing.assert_array_equal(shards[0].window_doc, whole.window_doc)
    merged = shards[0].with_arrays(combined)
    assert merged.shard is None and merged.totals() == whole.totals()


def test_with_arrays_rejects_foreign_arrays():
    evaluation = evaluate_lm(
        PreviousToken(), random_corpus(), context=4, stride=4, alphas=ALPHAS, top_k=TOP_K
    )
    arrays = evaluation.arrays()
    with pytest.raises(ValueError, match="exactly"):
        evaluation.with_arrays({**arrays, "extra": arrays["tokens"]})
    with pytest.raises(ValueError, match="smoothed_bits must have shape"):
        evaluation.with_arrays({**arrays, "smoothed_bits": arrays["smoothed_bits"][:, :1]})
    with pytest.raises(ValueError, match="tokens must have shape .* int64"):
        evaluation.with_arrays({**arrays, "tokens": arrays["tokens"].astype(float)})


class FixedLogits(nn.Module):
    def __init__(self, row):
        super().__init__()
        self.row = torch.tensor(row, dtype=torch.float64)

    def forward(self, ids):
        return self.row.expand(*ids.shape, len(self.row))


def test_top_k_ties_go_to_the_lower_index():
    row = [1.0, 3.0, 3.0, 0.0, 3.0]
    # targets 4, 1, 2, 3, 0 have ranks 2, 0, 1, 4, 3 (ties broken by token index)
    corpus = corpus_of([[0, 4, 1, 2, 3, 0]])
    top_k = (1, 2, 3, 5)
    evaluation = evaluate_lm(FixedLogits(row), corpus, context=8, stride=8, alphas=(), top_k=top_k)
    totals = evaluation.totals()
    assert totals.topk_errors == (4, 3, 2, 0)
    p = np.exp(row) / np.exp(row).sum()
    ranks = np.array([2, 0, 1, 4, 3])
    for i, k in enumerate(top_k):
        miss = 1 - k * p[1] if k <= 3 else 0.0
        expected = (((ranks >= k).astype(float) - miss) ** 2).sum()
        assert totals.topk_square[i] == pytest.approx(expected, rel=1e-12, abs=1e-15)


def test_an_output_object_with_logits_is_accepted():
    corpus = random_corpus()
    bare = evaluate_lm(PrefixSum(), corpus, context=5, stride=2, alphas=ALPHAS, top_k=TOP_K)
    model = PrefixSum()
    wrapped = evaluate_lm(
        lambda ids: SimpleNamespace(logits=model(ids), past_key_values=None),
        corpus,
        context=5,
        stride=2,
        alphas=ALPHAS,
        top_k=TOP_K,
    )
    assert wrapped.totals() == bare.totals()


def test_a_subsample_with_repeated_documents_scores_each_copy():
    corpus = random_corpus()
    options = dict(context=5, stride=2, alphas=ALPHAS, top_k=TOP_K)
    whole = evaluate_lm(PrefixSum(), corpus, **options).per_document()
    sample = evaluate_lm(PrefixSum(), corpus.subset([2, 0, 2, 4]), **options).per_document()
    for name in SUMMED_FIELDS:
        np.testing.assert_allclose(
            getattr(sample, name), getattr(whole, name)[[2, 0, 2, 4]], rtol=1e-13, err_msg=name
        )


def test_chunking_over_tokens_does_not_change_the_result(monkeypatch):
    corpus = random_corpus()
    options = dict(context=8, stride=3, alphas=ALPHAS, top_k=TOP_K, batch_size=4)
    model = transformer()
    one_chunk = evaluate_lm(model, corpus, **options)
    monkeypatch.setattr(lm_eval, "_CHUNK_BYTES", 8 * VOCAB * 3)  # three tokens per chunk
    chunked = evaluate_lm(model, corpus, **options, quiet=False, description="chunked")
    for name in SUMMED_FIELDS:
        np.testing.assert_array_equal(getattr(chunked, name), getattr(one_chunk, name))


class LowRank(nn.Module):
    """A large-vocabulary model: embedding of width 4, then a linear map to V logits."""

    def __init__(self, vocab):
        super().__init__()
        generator = torch.Generator().manual_seed(0)
        self.embed = nn.Parameter(torch.randn(vocab, 4, generator=generator, dtype=torch.float64))
        self.head = nn.Parameter(torch.randn(4, vocab, generator=generator, dtype=torch.float64))

    def forward(self, ids):
        return self.embed[ids].cumsum(dim=1) @ self.head


def test_a_gpt2_sized_vocabulary_is_scored_in_chunks():
    vocab = 50257
    corpus = random_corpus(lengths=(70, 6), vocab=vocab, seed=1)
    model = LowRank(vocab)
    options = dict(alphas=(0.1, 1e-4), top_k=(1, 100))
    evaluation = evaluate_lm(model, corpus, context=64, stride=32, batch_size=2, **options)
    assert lm_eval._CHUNK_BYTES // (8 * vocab) < 64  # the first window spans several chunks
    assert_matches(evaluation.per_document(), brute_force(model, corpus, 64, 32, **options))


def test_the_declared_vocabulary_must_fit_the_model():
    corpus = random_corpus()
    big = TokenCorpus(corpus.tokens, corpus.starts, corpus.ends, VOCAB + 1, "memory")
    with pytest.raises(ValueError, match="12 ids but the model only 11 outputs"):
        evaluate_lm(PreviousToken(), big, context=4, stride=4, alphas=ALPHAS, top_k=TOP_K)


class Truncating(PreviousToken):
    def forward(self, ids):
        return self.table(ids)[:, :1]


@pytest.mark.parametrize(
    ("model", "corpus", "kwargs", "message"),
    [
        (
            PreviousToken(),
            corpus_of([[1, 2, 3], [4, 20, 5]]),
            {},
            "token id 20 at position 4 of memory is out of range for a model with 11 outputs",
        ),
        (nn.Linear(4, 4), None, {}, r"rejects long token ids of shape \(1, 1\)"),
        (lambda ids: ids.double(), None, {}, r"token ids \[1, 1\] to logits \[1, 1, V\]"),
        # The causality check's first call: the window repeated for its 3 variants.
        (Truncating(), None, {}, r"to logits \[3, 4, 11\], got shape \(3, 1, 11\)"),
        (lambda ids: (ids,), None, {}, "tensor or an object with .logits, got tuple"),
        (lambda ids: torch.zeros(*ids.shape, 1), None, {}, "at least 2 outputs"),
        (
            lambda ids: torch.full((*ids.shape, 3), float("nan")),
            corpus_of([[0, 1, 2]]),
            {},
            "non-finite logit",
        ),
        (PreviousToken(), None, {"alphas": (0.0,)}, r"strictly in \(0, 1\)"),
        (PreviousToken(), None, {"alphas": (1.0,)}, r"strictly in \(0, 1\)"),
        (PreviousToken(), None, {"alphas": (True,)}, r"strictly in \(0, 1\)"),
        (PreviousToken(), None, {"top_k": (0,)}, "top_k must be a positive integer"),
        (PreviousToken(), None, {"top_k": (1.5,)}, "top_k must be a positive integer"),
        (PreviousToken(), None, {"top_k": (12,)}, "exceeds the model's vocabulary of 11"),
        (PreviousToken(), None, {"batch_size": 0}, "batch_size must be a positive integer"),
        (PreviousToken(), None, {"shard": (2, 2)}, r"rank must be an integer in \[0, 2\)"),
        (PreviousToken(), None, {"shard": (-1, 2)}, "rank"),
        (PreviousToken(), None, {"shard": (0, 0)}, "world size must be a positive"),
        (PreviousToken(), None, {"shard": 3}, r"pair \(rank, world\)"),
        (PreviousToken(), None, {"stride": 5}, "stride must not exceed context"),
    ],
)
def test_bad_input_gets_one_clear_error(model, corpus, kwargs, message):
    options = {"context": 4, "stride": 4, "alphas": ALPHAS, "top_k": (1,), **kwargs}
    corpus = corpus_of([[1, 2, 3, 4, 5, 6]]) if corpus is None else corpus
    with pytest.raises(ValueError, match=message):
        evaluate_lm(model, corpus, **options)


# --- the byte-level transformer ----------------------------------------------------------


def test_byte_transformer_is_reproducible_from_a_seed():
    state = torch.get_rng_state()
    first = byte_transformer(context=16, seed=7).state_dict()
    assert torch.equal(torch.get_rng_state(), state)  # the caller's generator is untouched
    second = byte_transformer(context=16, seed=7).state_dict()
    other = byte_transformer(context=16, seed=8).state_dict()
    torch.manual_seed(7)
    from_global = byte_transformer(context=16).state_dict()
    assert all(torch.equal(first[name], second[name]) for name in first)
    assert all(torch.equal(first[name], from_global[name]) for name in first)
    assert not torch.equal(first["head.weight"], other["head.weight"])
    assert first["head.weight"].shape == (257, 64)
    assert "token_embedding.weight" in first and "position_embedding.weight" in first


def test_byte_transformer_is_causal_and_checks_its_input():
    model = byte_transformer(context=16, width=32, depth=2, heads=4, seed=0).eval()
    ids = torch.randint(0, 257, (3, 12), generator=torch.Generator().manual_seed(0))
    changed = ids.clone()
    changed[:, 7] = (changed[:, 7] + 1) % 257
    with torch.no_grad():
        logits, after = model(ids), model(changed)
    assert logits.shape == (3, 12, 257) and logits.dtype == torch.float32
    assert torch.equal(logits[:, :7], after[:, :7])
    assert not torch.equal(logits[:, 7:], after[:, 7:])
    with pytest.raises(ValueError, match="17 tokens exceed the context of 16"):
        model(torch.zeros(1, 17, dtype=torch.long))
    with pytest.raises(ValueError, match="long token ids"):
        model(torch.zeros(1, 4))
    with pytest.raises(ValueError, match="divisor"):
        byte_transformer(width=30, heads=4)
    with pytest.raises(ValueError, match="context must be positive"):
        byte_transformer(context=0)


def test_corpus_digest_is_about_the_documents_not_their_storage():
    corpus = random_corpus()
    digest = lm_eval.corpus_digest(corpus)
    as_int64 = TokenCorpus(corpus.tokens.astype(np.int64), corpus.starts, corpus.ends)
    assert lm_eval.corpus_digest(as_int64) == digest
    # The same documents cut out of a longer stream, read in several chunks.
    padded = np.concatenate([[7, 7, 7], corpus.tokens, [1]]).astype(np.uint32)
    shifted = TokenCorpus(padded, corpus.starts + 3, corpus.ends + 3)
    assert lm_eval.corpus_digest(shifted) == digest
    chunked = lm_eval._HASH_CHUNK
    lm_eval._HASH_CHUNK = 4
    try:
        assert lm_eval.corpus_digest(shifted) == digest
    finally:
        lm_eval._HASH_CHUNK = chunked
    # A subset with a repeat is hashed document by document, in its order.
    subset = corpus.subset([3, 1, 3])
    rebuilt = corpus_of([corpus.document(3), corpus.document(1), corpus.document(3)])
    assert lm_eval.corpus_digest(subset) == lm_eval.corpus_digest(rebuilt)
    changed = corpus.tokens.copy()
    changed[10] = (changed[10] + 1) % VOCAB
    other = [
        TokenCorpus(changed, corpus.starts, corpus.ends),  # one id
        TokenCorpus(corpus.tokens, corpus.starts[:-1], corpus.ends[:-1]),  # one document fewer
        TokenCorpus(  # the same ids cut into other documents
            corpus.tokens, np.array([0, 4, 9, 32, 44]), np.array([4, 9, 32, 44, 47])
        ),
        subset,
    ]
    assert len({digest, *(lm_eval.corpus_digest(c) for c in other)}) == 1 + len(other)


@pytest.mark.parametrize("vocab", [257, 50257, 262144])
def test_entropy_forecasts_are_within_a_millibit(vocab):
    """The entropy forecast of p̃ (a sum over the ids for V ≤ 512, a histogram above) against
    the float64 sum −Σ p̃ log₂ p̃, for logits from nearly uniform to nearly one-hot, in single
    and double precision."""
    alphas = DEFAULT_ALPHA_GRID
    scorer = lm_eval._Scorer(alphas, (1,), vocab, "cpu")
    rows = min(scorer.rows_per_chunk, 2)
    for scale in (0.1, 1.0, 3.0, 10.0, 100.0):
        for dtype in (torch.float32, torch.float64):
            z = (torch.randn(rows, vocab, generator=torch.Generator().manual_seed(3)) * scale).to(
                dtype
            )
            targets = torch.zeros(rows, dtype=torch.long)
            _, _, forecast, _ = scorer.score(z, np.arange(rows), targets)
            p = torch.softmax(z.double(), dim=1).numpy()
            exact = (
                np.stack(
                    [-((1 - a) * p + a / vocab) * np.log2((1 - a) * p + a / vocab) for a in alphas]
                )
                .sum(axis=2)
                .T
            )
            assert np.abs(forecast - exact).max() < 1e-3, (scale, dtype)


@pytest.mark.parametrize("vocab", [257, 50257, 262144])
def test_the_log_loss_is_exact_to_float_rounding(vocab):
    """ln p_y against float64 log_softmax of the same logits, over rows that span several
    chunks, from nearly uniform to nearly one-hot, with some ids at −∞: in single precision
    within 10⁻⁷ nats (the rounding of p's entries), in double within 10⁻⁸ (a histogram's
    rounding, for a large vocabulary) and 10⁻¹² (a direct sum, for a small one)."""
    scorer = lm_eval._Scorer((0.1,), (1,), vocab, "cpu")
    rows = scorer.rows_per_chunk + 2
    generator = torch.Generator().manual_seed(4)
    targets = torch.randint(0, vocab, (rows,), generator=generator)

    def error(logits: torch.Tensor) -> float:
        exact = torch.log_softmax(logits.double(), 1)[torch.arange(rows), targets].numpy()
        return np.abs(scorer.score(logits, np.arange(rows), targets)[0] - exact).max()

    for scale in (0.1, 1.0, 3.0, 10.0, 100.0):
        z = torch.randn(rows, vocab, generator=generator, dtype=torch.float64) * scale
        z[:, torch.randperm(vocab, generator=generator)[: vocab // 10]] = -math.inf
        z[torch.arange(rows), targets] = 0.0  # at scale 100, far below p's smallest float
        assert error(z.float()) < 1e-7, scale
        assert error(z) < (1e-12 if vocab <= 512 else 1e-8), scale
