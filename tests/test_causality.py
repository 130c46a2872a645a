"""The causality check that `evaluate_lm` runs on every model before scoring it."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from bounds.models.architectures import byte_transformer
from bounds.tasks.language import evaluate as lm_eval
from bounds.tasks.language.evaluate import check_causal, evaluate_lm
from bounds.tasks.language.tokens import TokenCorpus, token_windows

VOCAB = 11
CONTEXT = 16


# Tiny models run fastest on one thread; several threads spin against each other.
pytestmark = pytest.mark.usefixtures("one_thread")


def random_corpus(lengths=(40, 3, 25, 17, 2, 60), seed=0) -> TokenCorpus:
    rng = np.random.default_rng(seed)
    lengths = np.array(lengths, dtype=np.int64)
    ends = np.cumsum(lengths)
    stream = rng.integers(0, VOCAB, size=int(ends[-1])).astype(np.uint16)
    return TokenCorpus(stream, ends - lengths, ends, VOCAB, "memory")


def transformer(context: int = CONTEXT) -> nn.Module:
    """A float32 causal transformer: masked attention, learned positions."""
    return byte_transformer(VOCAB, context=context, width=16, depth=2, heads=2, seed=0)


class PrefixSum(nn.Module):
    """Causal: logits = the mean of the embedding rows of the tokens so far (float64)."""

    def __init__(self) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(0)
        self.table = nn.Parameter(torch.randn(VOCAB, VOCAB, generator=generator).double())

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        steps = torch.arange(1, ids.shape[1] + 1, dtype=torch.float64)
        return self.table[ids].cumsum(dim=1) / steps[:, None]


class LookAhead(nn.Module):
    """Logits at j from the token at j + 1: the next token gets a large logit."""

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        following = torch.cat([ids[:, 1:], ids[:, -1:]], dim=1)
        return 10.0 * nn.functional.one_hot(following, VOCAB).double()


class Leaky(nn.Module):
    """A causal model plus `amount` × one-hot of the next token at some positions j.

    `where` is "every" position, the "first" (0), the "last" one a later token exists for
    (T − 2 for an input of T tokens), or an integer position.
    """

    def __init__(self, base: nn.Module, amount: float, where: str | int = "every") -> None:
        super().__init__()
        self.base, self.amount, self.where = base, amount, where

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        logits = self.base(ids)
        length = ids.shape[1]
        if length < 2:
            return logits
        following = nn.functional.one_hot(ids[:, 1:], VOCAB).to(logits.dtype)
        leak = torch.zeros_like(logits)
        leak[:, :-1] = self.amount * following
        chosen = torch.zeros(length, dtype=torch.bool)
        if self.where == "every":
            chosen[:-1] = True
        elif self.where == "first":
            chosen[0] = True
        elif self.where == "last":
            chosen[length - 2] = True
        elif self.where < length - 1:
            chosen[self.where] = True
        return logits + leak * chosen[None, :, None]


class Recording(nn.Module):
    """A causal model that keeps a copy of every batch of ids it is called on."""

    def __init__(self) -> None:
        super().__init__()
        self.base, self.calls = PrefixSum(), []

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        self.calls.append(ids.clone())
        return self.base(ids)


def evaluate(model, corpus=None, context=CONTEXT, batch_size=8):
    corpus = random_corpus() if corpus is None else corpus
    return evaluate_lm(
        model,
        corpus,
        context=context,
        stride=context // 2,
        alphas=(0.1,),
        top_k=(1,),
        batch_size=batch_size,
    )


@pytest.mark.parametrize("make_model", [PrefixSum, transformer])
@pytest.mark.parametrize("batch_size", [1, 3, 8])
def test_a_causal_model_passes(make_model, batch_size):
    evaluation = evaluate(make_model(), batch_size=batch_size)
    assert evaluation.totals().tokens == random_corpus().scored_tokens


def test_a_model_that_looks_one_token_ahead_is_refused():
    with pytest.raises(ValueError, match="the model is not causal: replacing the tokens after"):
        evaluate(LookAhead())


@pytest.mark.parametrize("where", ["first", "last"])
@pytest.mark.parametrize("make_model", [PrefixSum, transformer])
def test_a_leak_at_one_end_of_the_window_alone_is_refused(make_model, where):
    # The first and the last position a later token can reach are tested in every window.
    with pytest.raises(ValueError, match="not causal") as refused:
        evaluate(Leaky(make_model(), 1.0, where))
    if where == "first":
        assert "after position 0 " in str(refused.value)
        assert "at position 0;" in str(refused.value)
    else:
        message = str(refused.value)
        length = int(message.split("-token input")[0].split()[-1])
        assert f"after position {length - 2} " in message
        assert f"at position {length - 2};" in message


@pytest.mark.parametrize("position", range(5))
def test_in_short_windows_every_position_is_tested(position):
    # Inputs of at most 6 tokens have 5 positions a later token can reach: all are cut points.
    with pytest.raises(ValueError, match=f"changed its logits at position {position};"):
        evaluate(Leaky(PrefixSum(), 1.0, position), context=6)


@pytest.mark.parametrize("amount", [1e-3, 1e-5])
def test_a_tiny_leak_is_refused(amount):
    # Far below anything a tolerance for float rounding would let through.
    with pytest.raises(ValueError, match="not causal"):
        evaluate(Leaky(transformer(), amount))
    with pytest.raises(ValueError, match="not causal"):
        evaluate(Leaky(PrefixSum(), amount))


def test_the_check_is_deterministic_and_tests_real_and_random_windows():
    corpus = random_corpus()
    plan = token_windows(corpus, CONTEXT, CONTEXT // 2)
    runs = []
    for _ in range(2):
        model = Recording()
        check_causal(model, corpus, plan, vocab_size=VOCAB, batch_size=8, device="cpu")
        runs.append(model.calls)
    assert len(runs[0]) == len(runs[1])
    assert all(torch.equal(a, b) for a, b in zip(*runs, strict=True))
    calls = runs[0]
    # Two windows of the corpus, one of random ids; each is one call of the window repeated,
    # then one of its variants, row r cut after the r-th cut point.
    windows = {tuple(corpus.tokens[w["start"] : w["end"] - 1].tolist()) for w in plan}
    repeated, changed = calls[0::2], calls[1::2]
    bases = [tuple(call[0].tolist()) for call in repeated]
    assert len(calls) == 6 and [base in windows for base in bases] == [True, True, False]
    assert len(bases[2]) == int((plan["end"] - plan["start"] - 1).max()) == CONTEXT
    for window, variants in zip(repeated, changed, strict=True):
        assert window.shape == variants.shape and bool((window == window[0]).all())
        base, length = window[0], window.shape[1]
        cuts = [int((variant != base).nonzero()[0, 0]) - 1 for variant in variants]
        assert cuts[0] == 0 and cuts[-1] == length - 2 and cuts == sorted(set(cuts))
        assert len(cuts) == min(length - 1, 2 + lm_eval.CAUSAL_RANDOM_CUTS)
        for variant, t in zip(variants, cuts, strict=True):
            # Equal up to t, a different id at every later position.
            assert torch.equal(variant[: t + 1], base[: t + 1])
            assert bool((variant[t + 1 :] != base[t + 1 :]).all())
            assert int(variant.max()) < VOCAB


@pytest.mark.parametrize("batch_size", [2, 8])
def test_the_check_costs_a_few_rows_of_at_most_the_context(batch_size):
    model = Recording()
    evaluate(model, batch_size=batch_size)
    cuts = 2 + lm_eval.CAUSAL_RANDOM_CUTS
    windows = lm_eval.CAUSAL_CORPUS_WINDOWS + lm_eval.CAUSAL_RANDOM_WINDOWS
    # Variants in calls of at most batch_size rows; the window repeated once per call size.
    sizes = [min(batch_size, cuts - begin) for begin in range(0, cuts, batch_size)]
    per_window = len(sizes) + len(set(sizes))
    probe, check = model.calls[0], model.calls[1 : 1 + windows * per_window]
    assert probe.shape == (1, 1)
    assert sum(call.shape[0] for call in check) == windows * (cuts + sum(set(sizes)))
    assert {call.shape[1] for call in check} == {CONTEXT}
    assert max(call.shape[0] for call in check) == min(batch_size, cuts)
    with pytest.raises(ValueError, match="not causal"):
        evaluate(Leaky(PrefixSum(), 1.0), batch_size=1)  # calls of 1 row


class RowRounding(nn.Module):
    """Causal, but each row's logits are rounded by where the row lies in the batch (as some
    matrix-multiply kernels do): equal inputs in two rows of one call give logits that differ
    in their last bits."""

    def __init__(self) -> None:
        super().__init__()
        self.base = PrefixSum()

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        offset = torch.arange(len(ids), dtype=torch.float64)[:, None, None]
        return (self.base(ids) + offset) - offset


def test_rounding_that_depends_on_the_row_is_not_taken_for_a_leak():
    model = RowRounding()
    logits = model(torch.tensor([[1, 2, 3]] * 8))
    assert bool((logits[1:] != logits[0]).any())  # the rows really do differ
    assert evaluate(model).totals().tokens == random_corpus().scored_tokens
    with pytest.raises(ValueError, match="not causal"):
        evaluate(Leaky(model, 1e-5))


class Dropping(nn.Module):
    """A causal model with dropout left on: random logits."""

    def __init__(self) -> None:
        super().__init__()
        self.base = PrefixSum()

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return nn.functional.dropout(self.base(ids), p=0.5, training=True)


def test_a_random_model_is_refused_as_such():
    with pytest.raises(ValueError, match="the model is not deterministic"):
        evaluate(Dropping())


def test_windows_too_short_to_leak_need_no_check():
    # Documents of 2 tokens: every input is a single token, which no later token can reach.
    corpus = random_corpus(lengths=(2, 2, 2))
    model = Recording()
    evaluate(LookAhead(), corpus)  # harmless here: it never sees a later token
    evaluate(model, corpus)
    assert all(call.shape[1] == 1 for call in model.calls)
