"""certify_lm and reproduce on a tiny trained transformer, checked against an independent
evaluation of the decoded model."""

from __future__ import annotations

import copy
import hashlib
import json
import math

import numpy as np
import pytest
import torch
from torch import nn

from bounds import occam_bound
from bounds.formulas.corpus import Sampling
from bounds.formulas.sequence import DEFAULT_ALPHA_GRID, bernstein_bound, smoothed_loss_range
from bounds.models.architectures import byte_transformer
from bounds.models.training import train_language_model
from bounds.pipeline.certify import certify_lm, reproduce
from bounds.tasks.language.evaluate import evaluate_lm
from bounds.tasks.language.task import LanguageModelling, all_bounds, plan_evaluation
from bounds.tasks.language.tokens import TokenCorpus
from quantize import Code, CodeError, NoPrior
from quantize.base import FineTuned
from quantize.bitio import delta_bits
from quantize.opaque import OpaqueCode

VOCAB = 12
CONTEXT, STRIDE = 16, 8
TOP_K = (1, 3)
DELTA = 0.05
# Four levels with a float16 or a float32 codebook give code words of nearly the same length
# and slightly different weights (both are evaluated); 64 levels cost so many bits that the
# best conceivable bound is already worse (skipped).
GRID = [
    {"levels": 4, "scheme": "kmeans", "groups": "global", "precision": "float16"},
    {"levels": 4, "scheme": "kmeans", "groups": "global", "precision": "float32"},
    {"levels": 64, "scheme": "kmeans", "groups": "global"},
]


# Tiny models run fastest on one thread; several threads spin against each other.
pytestmark = pytest.mark.usefixtures("one_thread")


def synthetic_corpus(seed: int, documents: int) -> TokenCorpus:
    """Documents that count up modulo VOCAB − 1 with 15 % random tokens, ending in VOCAB − 1."""
    rng = np.random.default_rng(seed)
    parts = []
    for _ in range(documents):
        length = int(rng.integers(4, 40))
        tokens = (int(rng.integers(0, VOCAB - 1)) + np.arange(length)) % (VOCAB - 1)
        noise = rng.random(length) < 0.15
        tokens[noise] = rng.integers(0, VOCAB - 1, int(noise.sum()))
        tokens[-1] = VOCAB - 1
        parts.append(tokens)
    lengths = np.array([len(p) for p in parts], dtype=np.int64)
    ends = np.cumsum(lengths)
    stream = np.concatenate(parts).astype(np.uint16)
    return TokenCorpus(stream, ends - lengths, ends, VOCAB, f"synthetic:{seed}")


@pytest.fixture(scope="module")
def corpora():
    return synthetic_corpus(0, 40), synthetic_corpus(1, 15)


@pytest.fixture(scope="module")
def model(corpora):
    network = byte_transformer(VOCAB, context=CONTEXT, width=16, depth=1, heads=2, seed=0)
    losses = train_language_model(
        network, corpora[0], context=CONTEXT, steps=60, lr=1e-2, batch_size=16
    )
    assert losses[-1] < 0.6 * losses[0]  # it learned the counting pattern
    return network


@pytest.fixture(scope="module")
def certificate(model, corpora):
    train, test = corpora
    return certify_lm(
        model, train, context=CONTEXT, stride=STRIDE, test_corpus=test, top_k=TOP_K, grid=GRID
    )


def summarize(evaluation) -> dict:
    """The token-weighted summary a certificate states, for the default α grid and TOP_K."""
    task = LanguageModelling(context=CONTEXT, stride=STRIDE, alphas=DEFAULT_ALPHA_GRID, top_k=TOP_K)
    return task.summary(evaluation)


def evaluate(network, corpus):
    return evaluate_lm(
        network, corpus, context=CONTEXT, stride=STRIDE, alphas=DEFAULT_ALPHA_GRID, top_k=TOP_K
    )


def decode(word: bytes, skeleton: nn.Module, prior=None) -> nn.Module:
    """The model the project's decoder makes of `word`, loaded into a copy of `skeleton`."""
    prior = NoPrior() if prior is None else prior
    decoded = copy.deepcopy(skeleton)
    state = Code.from_bytes(word, prior).decode(prior)
    if isinstance(decoded, FineTuned):
        decoded.load_coded_state(state)
    else:
        decoded.load_state_dict(state, strict=True)
    return decoded


def test_bounds_equal_a_recomputation_from_the_decoded_word(certificate, model, corpora):
    train, _ = corpora
    word = certificate.code.to_bytes()
    assert certificate.code_sha256 == hashlib.sha256(word).hexdigest()
    assert certificate.code_bits == Code.from_bytes(word, NoPrior()).bits
    assert certificate.code_bits == sum(certificate.code_breakdown.values())
    assert len(word) == math.ceil(certificate.code_bits / 8)
    decoded = decode(word, model)
    # The decoded weights are not the trained ones: the bound is about the quantized model.
    assert not torch.equal(decoded.head.weight, model.head.weight)
    evaluation = evaluate(decoded, train)
    sampling = Sampling(train.num_documents, train.scored_tokens)
    expected = all_bounds(
        evaluation.per_document(),
        DEFAULT_ALPHA_GRID,
        TOP_K,
        VOCAB,
        sampling,
        certificate.code_bits,
        DELTA,
    )
    assert set(certificate.bounds) == {"bits", "top1", "top3"}
    assert certificate.bounds == expected  # every Bound field, exactly
    assert certificate.train["decoded"] == summarize(evaluation)
    assert certificate.train["float"] == summarize(evaluate(model, train))
    assert certificate.data["documents"] == 40
    assert certificate.data["scored_tokens"] == train.scored_tokens
    assert certificate.headline == ("bits", "token_bernstein")
    assert certificate.best is certificate.bounds["bits"]["token_bernstein"]


def test_the_chosen_candidate_has_the_smallest_bound(certificate, corpora):
    train, _ = corpora
    evaluated = [c for c in certificate.candidates if c["evaluated"]]
    skipped = [c for c in certificate.candidates if not c["evaluated"]]
    assert len(evaluated) >= 2 and len(skipped) >= 1
    best = min(evaluated, key=lambda c: (c["bound"], c["bits"]))
    assert best["config"] == certificate.code_config
    assert best["bits"] == certificate.code_bits
    assert best["bound"] == certificate.best.value
    assert best["losses"] == certificate.train["decoded"]["losses"]
    # A skipped candidate could not have won: with the least loss on every token and no
    # forecast error at all, its bound is already no better than the best evaluated one.
    m, alphas = train.scored_tokens, DEFAULT_ALPHA_GRID
    for candidate in skipped:
        floor = min(
            bernstein_bound(
                smoothed_loss_range(alpha, VOCAB)[0],
                m,
                candidate["bits"],
                DELTA,
                square_sum=0.0,
                loss_range=smoothed_loss_range(alpha, VOCAB),
                choices=len(alphas),
            ).value
            for alpha in alphas
        )
        assert floor >= best["bound"]


def test_test_corpus_adds_held_out_bounds(certificate, model, corpora):
    _, test = corpora
    decoded = decode(certificate.code.to_bytes(), model)
    per_document = evaluate(decoded, test).per_document()
    alpha = certificate.best.terms["alpha"]
    column = DEFAULT_ALPHA_GRID.index(alpha)
    n = test.num_documents
    losses = {
        "bits": (per_document.smoothed_bits[:, column], smoothed_loss_range(alpha, VOCAB)),
        **{
            f"top{k}": (per_document.topk_errors[:, i].astype(float), (0.0, 1.0))
            for i, k in enumerate(TOP_K)
        },
    }
    held_out = certificate.test["bounds"]
    assert set(held_out) == set(losses)
    for loss, (sums, loss_range) in losses.items():
        risk = math.fsum((sums / per_document.tokens).tolist()) / n
        expected = occam_bound(n, 0, DELTA, risk=risk, method="kl", loss_range=loss_range)
        assert held_out[loss].value == expected.value
        assert held_out[loss].n == n
    summary = certificate.test["summary"]
    assert summary["tokens"] == test.scored_tokens and summary["documents"] == n


def test_subsample_mode_reports_its_sample(model, corpora):
    train, _ = corpora
    sampled = certify_lm(
        model, train, context=CONTEXT, stride=STRIDE, top_k=TOP_K, grid=GRID, subsample=12, seed=3
    )
    # The draws, made by hand: uniform over documents, then in proportion to scored tokens.
    rng = np.random.default_rng(3)
    lengths = train.lengths - 1
    uniform = rng.integers(0, train.num_documents, size=12)
    weighted = rng.choice(train.num_documents, size=12, p=lengths / lengths.sum())
    distinct = np.unique(np.concatenate([uniform, weighted]))
    plan = plan_evaluation(train, 12, 3, candidates=len(GRID))
    assert np.array_equal(plan.corpus.starts, train.starts[distinct])
    assert np.array_equal(distinct[plan.sampling.uniform], uniform)
    assert np.array_equal(distinct[plan.sampling.weighted], weighted)

    decoded = decode(sampled.code.to_bytes(), model)
    evaluation = evaluate(decoded, train.subset(distinct))
    expected = all_bounds(
        evaluation.per_document(),
        DEFAULT_ALPHA_GRID,
        TOP_K,
        VOCAB,
        plan.sampling,
        sampled.code_bits,
        DELTA,
    )
    assert sampled.bounds == expected
    assert sampled.task_settings["subsample"] == 12 and sampled.task_settings["seed"] == 3
    assert sampled.data["scored_tokens"] == train.scored_tokens  # the claim is about all m
    assert sampled.train["decoded"]["documents"] == len(distinct)
    for by_method in sampled.bounds.values():
        for bound in by_method.values():
            assert bound.terms["sample_size"] == 12
            assert bound.terms["sample_candidates"] == len(GRID)
            assert bound.delta_shares["subsample"] == DELTA / 2
            assert math.isclose(bound.delta, DELTA, rel_tol=1e-15)
    assert "drawn twice (seed 3)" in sampled.to_markdown()


def test_renders_json_markdown_and_latex(certificate):
    data = json.loads(certificate.to_json())
    assert data["task"]["name"] == "lm" and data["schema_version"] == 2
    assert data["headline"] == {"loss": "bits", "method": "token_bernstein"}
    assert data["code"]["bits"] == certificate.code_bits
    assert data["bounds"]["bits"]["token_bernstein"]["value"] == certificate.best.value
    assert data["task"]["settings"] == {
        "context": CONTEXT,
        "stride": STRIDE,
        "alphas": list(DEFAULT_ALPHA_GRID),
        "top_k": list(TOP_K),
        "subsample": None,
        "seed": 0,
        "batch_size": 8,
    }
    assert data["test"]["bounds"]["top1"]["value"] == certificate.test["bounds"]["top1"].value
    top3 = certificate.train["decoded"]["top_k_error"]["3"]
    assert data["train"]["decoded"]["top_k_error"]["3"] == top3
    assert data["train"]["decoded"]["losses"]["top3"] == top3
    assert certificate.train_loss("decoded", "top3") == top3
    markdown = certificate.to_markdown()
    assert f"{certificate.best.value:.4f} bits per token" in markdown
    assert "| top-3 error |" in markdown
    latex = certificate.to_latex()
    assert latex.count(r"\begin{tabular}") == 2 and r"token\_bernstein" in latex


def test_opaque_word_is_the_file(model, corpora, tmp_path):
    train, _ = corpora
    path = tmp_path / "model.pt"
    torch.save(model.state_dict(), path)
    opaque = OpaqueCode.from_file(path)
    prior = {"kind": "decoder", "decoder": "torch.load", "fingerprint": "f" * 64}
    result = certify_lm(
        model, train, context=CONTEXT, stride=STRIDE, top_k=TOP_K, opaque=opaque, prior=prior
    )
    compressed = len(opaque.compressed)
    assert result.code_bits == delta_bits(compressed + 1) + 8 * compressed
    assert result.candidates == [] and result.grid == []
    assert result.prior == prior
    assert result.code_config["file_sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    # The model is evaluated as it is: the file is its exact description.
    sampling = Sampling(train.num_documents, train.scored_tokens)
    per_document = evaluate(model, train).per_document()
    expected = all_bounds(
        per_document, DEFAULT_ALPHA_GRID, TOP_K, VOCAB, sampling, result.code_bits, DELTA
    )
    assert result.bounds == expected

    def load(contents: bytes) -> nn.Module:
        copy_path = tmp_path / "decoded.pt"
        copy_path.write_bytes(contents)
        network = byte_transformer(VOCAB, context=CONTEXT, width=16, depth=1, heads=2)
        network.load_state_dict(torch.load(copy_path, weights_only=True))
        return network

    claim = json.loads(result.to_json())
    word = result.code.to_bytes()
    check = reproduce(word, None, train, certificate=claim, prior=prior, load_opaque=load)
    assert check.mismatches == []
    other = reproduce(word, None, train, certificate=claim, prior={}, load_opaque=load)
    assert other.mismatches == [f"prior fingerprint: certificate says {'f' * 64}, recomputed None"]


class LowRankAdapter(nn.Module):
    """A frozen base LM plus a trained rank-2 correction of its logits from the last token."""

    def __init__(self, base: nn.Module, rank: int = 2) -> None:
        super().__init__()
        self.base = base
        self.lora_a = nn.Parameter(torch.zeros(VOCAB, rank))
        self.lora_b = nn.Parameter(torch.zeros(rank, VOCAB))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.base(ids) + self.lora_a[ids] @ self.lora_b


def test_fine_tuned_model_codes_only_the_adapter(corpora):
    train, _ = corpora
    base = byte_transformer(VOCAB, context=CONTEXT, width=16, depth=1, heads=2, seed=1)
    adapted = LowRankAdapter(base)
    for parameter in base.parameters():
        parameter.requires_grad_(False)
    with torch.no_grad():
        adapted.lora_a.normal_(0, 0.5, generator=torch.Generator().manual_seed(0))
    train_language_model(adapted, train, context=CONTEXT, steps=20, lr=3e-2, batch_size=16)
    base_state = {f"base.{k}": v.clone() for k, v in base.state_dict().items()}
    wrapped = FineTuned(adapted, base_state, name="base.pt")

    def architecture():
        return LowRankAdapter(byte_transformer(VOCAB, context=CONTEXT, width=16, depth=1, heads=2))

    result = certify_lm(
        wrapped,
        train,
        context=CONTEXT,
        stride=STRIDE,
        top_k=TOP_K,
        grid=GRID,
        architecture=architecture,
    )
    assert result.prior["kind"] == "base" and result.prior["coded_tensors"] == 2
    assert result.prior["fingerprint"] == wrapped.prior().fingerprint()
    prior = wrapped.prior()
    word = result.code.to_bytes()
    state = Code.from_bytes(word, prior).decode(prior)
    assert sorted(state) == ["model.lora_a", "model.lora_b"]
    # 2 × 12 × 2 adapter numbers coded; the 3 000-odd base weights cost nothing.
    assert result.code_bits < 400
    assert result.model_params == sum(p.numel() for p in adapted.parameters())
    decoded = decode(word, wrapped, prior)
    assert torch.equal(decoded.model.base.head.weight, base.head.weight)
    sampling = Sampling(train.num_documents, train.scored_tokens)
    expected = all_bounds(
        evaluate(decoded, train).per_document(),
        DEFAULT_ALPHA_GRID,
        TOP_K,
        VOCAB,
        sampling,
        result.code_bits,
        DELTA,
    )
    assert result.bounds == expected
    fresh = FineTuned(LowRankAdapter(copy.deepcopy(base)), base_state)
    claim = json.loads(result.to_json())
    check = reproduce(word, fresh, train, certificate=claim, architecture=architecture)
    assert check.mismatches == []


def test_reproduce_confirms_and_lists_mismatches(certificate, model, corpora):
    train, _ = corpora
    claim = json.loads(certificate.to_json())
    word = certificate.code.to_bytes()
    skeleton = byte_transformer(VOCAB, context=CONTEXT, width=16, depth=1, heads=2, seed=5)
    result = reproduce(word, skeleton, train, certificate=claim)
    assert result.mismatches == [] and result.report[-1] == "certificate: verified"
    assert result.code_bits == certificate.code_bits
    assert result.bounds == certificate.bounds

    forged = copy.deepcopy(claim)
    forged["bounds"]["top1"]["token_azuma"]["value"] -= 0.01
    forged["train"]["decoded"]["losses"]["bits"] = 1.0
    forged["train"]["decoded"]["tokens"] += 1
    result = reproduce(word, skeleton, train, certificate=forged)
    assert [line.split(":")[0] for line in result.mismatches] == [
        "decoded tokens",
        "decoded losses.bits",
        "top1 token_azuma bound",
    ]
    assert result.report[-1] == "certificate: MISMATCH"
    # The settings are the certificate's: another stride scores other windows.
    restrided = copy.deepcopy(claim)
    restrided["task"]["settings"]["stride"] = 4
    changed = reproduce(word, skeleton, train, certificate=restrided)
    assert "decoded bits:" in " ".join(changed.mismatches)

    corrupted = bytearray(word)
    corrupted[len(corrupted) // 2] ^= 0x10
    with pytest.raises(CodeError):
        reproduce(bytes(corrupted), skeleton, train, certificate=claim)
    # Given the language-modelling task, a certificate of another task is refused, and so
    # is a schema-1 certificate (its task a bare name, its settings elsewhere).
    task = LanguageModelling(**claim["task"]["settings"])
    classifier = copy.deepcopy(claim)
    classifier["task"]["name"] = "classify"
    with pytest.raises(ValueError, match="the certificate is for the classify task"):
        reproduce(word, skeleton, train, certificate=classifier, task=task)
    with pytest.raises(ValueError, match="lacks a readable task or δ"):
        reproduce(word, skeleton, train, certificate={"task": "lm", "delta": DELTA})
    del forged["task"]["settings"]
    with pytest.raises(ValueError, match="lacks a readable task or δ"):
        reproduce(word, skeleton, train, certificate=forged)
    unreadable = copy.deepcopy(claim)
    unreadable["task"]["settings"]["window"] = CONTEXT
    with pytest.raises(ValueError, match="lm settings are not readable"):
        reproduce(word, skeleton, train, certificate=unreadable)


def test_reproduce_a_subsampled_certificate(model, corpora):
    train, _ = corpora
    sampled = certify_lm(
        model, train, context=CONTEXT, stride=STRIDE, top_k=(1,), grid=GRID[:2], subsample=9
    )
    claim = json.loads(sampled.to_json())
    skeleton = byte_transformer(VOCAB, context=CONTEXT, width=16, depth=1, heads=2)
    result = reproduce(sampled.code.to_bytes(), skeleton, train, certificate=claim)
    assert result.mismatches == []
    claim["task"]["settings"]["seed"] = 1  # other draws, other bounds
    result = reproduce(sampled.code.to_bytes(), skeleton, train, certificate=claim)
    assert any(line.startswith("bits token_bernstein bound") for line in result.mismatches)


def test_bad_settings_are_refused(model, corpora):
    train, _ = corpora
    with pytest.raises(ValueError, match="α grid is empty"):
        certify_lm(model, train, context=CONTEXT, grid=GRID, alphas=())
    with pytest.raises(ValueError, match="search grid is empty"):
        certify_lm(model, train, context=CONTEXT, grid=[])
    with pytest.raises(ValueError, match="subsample size"):
        certify_lm(model, train, context=CONTEXT, grid=GRID, subsample=0)
    with pytest.raises(ValueError, match="stride must not exceed context"):
        certify_lm(model, train, context=CONTEXT, stride=CONTEXT + 1, grid=GRID)
    with pytest.raises(ValueError, match="delta"):
        certify_lm(model, train, context=CONTEXT, grid=GRID, delta=1.0)


class PeeksAhead(nn.Module):
    """A causal transformer plus `leak` × one-hot of the next input token at every position."""

    def __init__(self, leak: float) -> None:
        super().__init__()
        self.base = byte_transformer(VOCAB, context=CONTEXT, width=16, depth=1, heads=2, seed=0)
        self.leak = nn.Parameter(torch.full((VOCAB,), leak))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        following = torch.cat([ids[:, 1:], ids[:, -1:]], dim=1)
        return self.base(ids) + self.leak * nn.functional.one_hot(following, VOCAB)


def test_a_model_that_peeks_at_the_next_token_is_refused(corpora):
    train, _ = corpora
    with pytest.raises(ValueError, match="the model is not causal"):
        certify_lm(PeeksAhead(1.0), train, context=CONTEXT, stride=STRIDE, grid=GRID[:1])


def test_a_model_that_leaks_only_once_quantized_is_refused(corpora):
    # Causal as trained (a leak of exactly 0), not once the leak weights are quantized: the
    # check runs on every search candidate and on the decoded model, not only the float one.
    train, _ = corpora
    model = PeeksAhead(0.0)
    evaluate(model, train)  # the float model passes
    with pytest.raises(ValueError, match="the model is not causal"):
        certify_lm(
            model,
            train,
            context=CONTEXT,
            stride=STRIDE,
            grid=GRID[:1],
            architecture=lambda: PeeksAhead(0.0),
        )
