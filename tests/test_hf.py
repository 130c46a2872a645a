"""Hugging Face causal LMs: built from a config or read from a local directory, then certified."""

import json

import numpy as np
import pytest
import torch
from conftest import run_cli

from bounds.models.hf import causal_lm, is_model_directory, load_directory
from bounds.tasks.language.evaluate import evaluate_lm
from bounds.tasks.language.tokens import TokenCorpus, save_tokens

TINY_GPT2 = {"vocab_size": 61, "n_positions": 32, "n_embd": 16, "n_layer": 1, "n_head": 2}


def test_config_built_model_is_seeded_and_scored():
    model = causal_lm("gpt2", seed=3, **TINY_GPT2)
    again = causal_lm("gpt2", seed=3, **TINY_GPT2)
    for name, tensor in model.state_dict().items():
        assert torch.equal(again.state_dict()[name], tensor), name
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, 61, size=300)
    corpus = TokenCorpus(tokens, np.array([0, 100, 180]), np.array([100, 180, 300]))
    evaluation = evaluate_lm(model, corpus, context=32, stride=16, alphas=[0.1], top_k=[1])
    assert evaluation.vocab_size == 61
    assert int(evaluation.tokens.sum()) == corpus.scored_tokens
    # An untrained model is close to uniform: about log2(61) bits per token.
    assert abs(evaluation.totals().mean_log_loss_bits - np.log2(61)) < 0.2


def test_bad_config_is_one_clear_error():
    with pytest.raises(ValueError, match="config"):
        causal_lm("no-such-model-type")


def test_local_directory_is_certified_from_the_command_line(tmp_path, capsys):
    model = causal_lm("gpt2", seed=0, **TINY_GPT2)
    directory = tmp_path / "tiny-gpt2"
    model.save_pretrained(directory)
    assert is_model_directory(directory) and not is_model_directory(tmp_path)
    loaded = load_directory(directory)
    for name, tensor in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name
    rng = np.random.default_rng(1)
    documents = [rng.integers(0, 61, size=int(n)) for n in rng.integers(5, 60, size=30)]
    offsets = save_tokens(tmp_path / "tokens.npy", documents)
    status, out, err = run_cli(capsys, "compute", directory, "--task", "lm",
                               "--data", tmp_path / "tokens.npy", "--offsets", offsets,
                               "--context", "32", "--levels", "16", "-q",
                               "--format", "json")  # fmt: skip
    assert status in (0, None), err
    certificate = json.loads(out)
    assert certificate["architecture"] == "hf:gpt2"  # rebuilt from the directory's config
    assert certificate["data"]["scored_tokens"] == sum(len(d) - 1 for d in documents)
    assert certificate["code"]["bits"] > 0


def test_a_directory_without_weights_is_refused(tmp_path):
    directory = tmp_path / "empty"
    directory.mkdir()
    (directory / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    with pytest.raises(ValueError, match="cannot load the model directory"):
        load_directory(directory)
